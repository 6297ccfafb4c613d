package cmd_test

import (
	"strings"
	"testing"
)

// TestClientConnectInterval: a --watch interval that is not positive is
// refused before anything touches the kernel (a ticker would panic on it).
func TestClientConnectInterval(t *testing.T) {
	for flag, want := range map[string]string{"0s": "--interval 0s", "-1m": "--interval -1m0s"} {
		code, _, stderr := run(t, nil, "client", "connect", "--domain", "ffmuc_welt", "--watch", "--interval", flag)
		if code == 0 || !strings.Contains(stderr, want+": want a positive duration") {
			t.Errorf("--interval %s: exit %d, stderr %q", flag, code, stderr)
		}
	}
}
