// Package netns runs a test in fresh network and mount namespaces, with
// loopback up and a private tmpfs on /var/run/wireguard (which is shared
// between network namespaces otherwise), so it can create interfaces,
// routes and userspace WireGuard sockets without touching the machine.
package netns

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/kernel"
)

const childEnv = "WGKEX_NETNS_TEST"

var setupOnce sync.Once

// Run re-executes the test binary for the calling top-level test in new
// namespaces. It returns true in that child, where the test goes on, and
// false in the parent, where the child's outcome has been reported.
//
// For a benchmark (a *testing.B), the child runs the benchmark once
// (-test.benchtime=1x) and its output, with the figures it reports, is
// copied to standard output.
func Run(t testing.TB) bool {
	t.Helper()
	if strings.Contains(t.Name(), "/") {
		t.Fatal("netns.Run must be called from a top-level test")
	}
	if os.Getenv(childEnv) == t.Name() {
		var err error
		setupOnce.Do(func() { err = setup() })
		if err != nil {
			t.Fatalf("namespace setup: %v", err)
		}
		return true
	}
	if testing.Short() {
		t.Skip("namespace test: not run with -short")
	}
	if os.Geteuid() != 0 {
		testbus.Missing(t, "needs root for network namespaces (run scripts/test.sh as root)")
	}
	_, bench := t.(*testing.B)
	args := []string{"-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.v", "-test.count=1"}
	if bench {
		args = []string{"-test.run=^$", "-test.bench=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.benchtime=1x", "-test.count=1"}
	}
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.timeout") {
			args = append(args, a)
		}
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"="+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil && cmd.ProcessState == nil {
		testbus.Missing(t, "cannot create network namespaces: %v", err)
	}
	text := string(out)
	if err != nil {
		t.Fatalf("in namespace:\n%s", text)
	}
	if bench {
		os.Stdout.WriteString(text)
		return false
	}
	if strings.Contains(text, "--- SKIP: "+t.Name()) {
		t.Skipf("in namespace:\n%s", text)
	}
	if !strings.Contains(text, "--- PASS: "+t.Name()) {
		t.Fatalf("in namespace: no PASS line:\n%s", text)
	}
	t.Logf("in namespace:\n%s", text)
	return false
}

func setup() error {
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := os.MkdirAll("/var/run/wireguard", 0o700); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", "/var/run/wireguard", "tmpfs", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount tmpfs on /var/run/wireguard: %w", err)
	}
	k, err := kernel.Dial()
	if err != nil {
		return err
	}
	defer k.Close()
	lo, err := k.LinkIndex("lo")
	if err != nil {
		return err
	}
	return k.SetUp(lo)
}

// Handles opens rtnetlink and wgctrl in the test's namespace and closes
// them when the test ends.
func Handles(t testing.TB) (*kernel.Conn, *wgctrl.Client) {
	t.Helper()
	k, err := kernel.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wg.Close() })
	return k, wg
}
