// Package eventually is the one helper tests use to wait for a condition
// they cannot be told about directly (a kernel table, another process's
// output, a remote server's state): it checks the condition until it holds,
// backing off between checks, and fails the test with what it waited for.
// Where an event can be received (a channel, a message), tests wait on that
// instead.
package eventually

import (
	"testing"
	"time"
)

// True waits until cond returns true, failing t after timeout.
func True(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Within(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Within reports whether cond became true before timeout passed.
func Within(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, 100*time.Millisecond)
	}
	return true
}
