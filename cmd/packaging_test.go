package cmd_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/freifunkMUC/wgkex/internal/testbus"
)

// TestSystemdUnits runs systemd-analyze verify on the units, with ExecStart
// pointing at the test binary and the generated man pages on MANPATH (the
// units' Documentation= names them).
func TestSystemdUnits(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		testbus.Missing(t, "systemd-analyze is not installed (apt-get install systemd)")
	}
	dir := t.TempDir()
	man := filepath.Join(dir, "man", "man8")
	if out, err := exec.Command("go", "run", "../scripts/genman", man).CombinedOutput(); err != nil {
		t.Fatalf("genman: %v\n%s", err, out)
	}
	var units []string
	for _, u := range []string{"wgkex-broker.service", "wgkex-worker.service"} {
		data, err := os.ReadFile(filepath.Join("..", "contrib", "systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "ExecStart=/usr/bin/wgkex ") {
			t.Fatalf("%s: unexpected ExecStart", u)
		}
		p := filepath.Join(dir, u)
		os.WriteFile(p, []byte(strings.ReplaceAll(string(data), "/usr/bin/wgkex", bin)), 0o644)
		units = append(units, p)
	}
	cmd := exec.Command("systemd-analyze", append([]string{"verify"}, units...)...)
	cmd.Env = append(os.Environ(), "MANPATH="+filepath.Join(dir, "man"))
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	worker, _ := os.ReadFile(units[1])
	if !strings.Contains(string(worker), "AmbientCapabilities=CAP_NET_ADMIN") {
		t.Error("worker unit lacks CAP_NET_ADMIN")
	}
	broker, _ := os.ReadFile(units[0])
	if strings.Contains(string(broker), "CAP_NET_ADMIN") {
		t.Error("broker unit must not get CAP_NET_ADMIN")
	}
}

// TestGoreleaserCheck validates goreleaser.yaml.
func TestGoreleaserCheck(t *testing.T) {
	gr, err := exec.LookPath("goreleaser")
	if err != nil {
		home, _ := os.UserHomeDir()
		gr = filepath.Join(home, "go", "bin", "goreleaser")
		if _, err := os.Stat(gr); err != nil {
			testbus.Missing(t, "goreleaser is not installed (scripts/test.sh installs it as root)")
		}
	}
	cmd := exec.Command(gr, "check", "--config", "goreleaser.yaml")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "1 configuration file(s) validated") {
		t.Errorf("goreleaser check: %v\n%s", err, out)
	}
}
