// Package await is how tests wait for events (a log line, a function
// returning) instead of sleeping: each wait has a guard against hanging,
// never a timing assertion.
package await

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// Log is a slog handler that hands every message to the channel; make it
// with a buffer (make(await.Log, 100)). Messages nobody waits for are
// dropped when the buffer is full.
type Log chan string

func (c Log) Enabled(context.Context, slog.Level) bool { return true }
func (c Log) Handle(_ context.Context, r slog.Record) error {
	select {
	case c <- r.Message:
	default: // nobody waits for this one
	}
	return nil
}
func (c Log) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c Log) WithGroup(string) slog.Handler      { return c }

// Await waits for a log message starting with prefix.
func (c Log) Await(t testing.TB, prefix string) {
	t.Helper()
	timeout := time.After(10 * time.Second) // a guard against hanging, not a timing assertion
	for {
		select {
		case m := <-c:
			if strings.HasPrefix(m, prefix) {
				return
			}
		case <-timeout:
			t.Fatalf("no log message %q", prefix)
		}
	}
}

// Returned waits for a function running in a goroutine to send its
// result on done; what names it in the failure.
func Returned(t testing.TB, done <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second): // a guard against hanging, not a timing assertion
		t.Fatalf("%s did not return", what)
		return nil
	}
}
