package cmd_test

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/eventually"
	"github.com/freifunkMUC/wgkex/internal/testbus"
)

var bin string

// TestMain builds the binary once: these tests run wgkex as users do.
func TestMain(m *testing.M) {
	// A test re-run in a network namespace (internal/netns) reuses the
	// binary its parent built.
	if b := os.Getenv("WGKEX_TEST_BIN"); b != "" {
		bin = b
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "wgkex-cmd")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "wgkex")
	out, err := exec.Command("go", "build", "-race", "-o", bin, "..").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	os.Setenv("WGKEX_TEST_BIN", bin)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func run(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

// cleanEnv is the test's environment without wgkex settings. A binary
// built with -race waits a second at exit for its report unless told not to.
func cleanEnv() []string {
	env := []string{"GORACE=atexit_sleep_ms=0"}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "WGKEX_") && !strings.HasPrefix(e, "MQTT_") && !strings.HasPrefix(e, "GORACE=") {
			env = append(env, e)
		}
	}
	return env
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"bogus"}, {"--bogus"}, {"broker", "extra"}, {"--log-format", "xml", "broker"}} {
		code, _, stderr := run(t, nil, args...)
		if code == 0 || stderr == "" {
			t.Errorf("wgkex %v: exit %d, stderr %q", args, code, stderr)
		}
	}
	// VXLAN id flags are checked before anything touches the kernel.
	cfg := filepath.Join("..", "wgkex.example.yaml")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dummy-iface", "--config", cfg, "--vxlan-id", "0"}, "--vxlan-id 0: want 1 to 16777215"},
		{[]string{"dummy-iface", "--config", cfg, "--vxlan-id", "16777216"}, "--vxlan-id 16777216: want 1 to 16777215"},
		{[]string{"dummy-iface", "--config", cfg, "--domain-seed", "xyz"}, `--domain-seed: domain seed "xyz": want hexadecimal digits`},
		{[]string{"dummy-iface", "--config", cfg, "--vxlan-id", "5", "--domain-seed", "00"}, "[domain-seed vxlan-id] were all set"},
		{[]string{"client", "connect", "--domain", "ffmuc_welt", "--domain-seed", "0g"}, "--domain-seed: domain seed"},
	} {
		code, _, stderr := run(t, nil, tc.args...)
		if code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("wgkex %v: exit %d, stderr %q, want %q", tc.args, code, stderr, tc.want)
		}
	}
	code, out, _ := run(t, nil, "version")
	if code != 0 || !strings.Contains(out, "wgkex ") || !strings.Contains(out, "go1.") {
		t.Errorf("version: %d %q", code, out)
	}
	code, out, _ = run(t, nil, "completion", "bash")
	if code != 0 || !strings.Contains(out, "bash completion") {
		t.Errorf("completion: %d", code)
	}
}

func TestBrokerConfigErrorsExitBeforeStarting(t *testing.T) {
	code, _, stderr := run(t, nil, "broker", "--config", filepath.Join("..", "testdata", "invalid.yaml"))
	if code == 0 {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"broker_listen.port", "workers.gw01.weight", "mqtt.broker_port", "ffxyz_nord"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q: %s", want, stderr)
		}
	}
	if n := strings.Count(strings.TrimSpace(stderr), "\n"); n != 0 {
		t.Errorf("want one line, got %d:\n%s", n+1, stderr)
	}
	code, _, stderr = run(t, nil, "broker", "--config", "/nonexistent/wgkex.yaml")
	if code == 0 || !strings.Contains(stderr, "/nonexistent/wgkex.yaml") {
		t.Errorf("missing file: %d %s", code, stderr)
	}
}

func TestBrokerPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	code, _, stderr := run(t, []string{
		"WGKEX_BROKER_LISTEN_PORT=" + fmt.Sprint(port),
		fmt.Sprintf("WGKEX_MQTT_LISTEN=127.0.0.1:%d", testbus.FreePort(t)),
	}, "broker", "--config", filepath.Join("..", "testdata", "minimal.yaml"))
	if code == 0 || !strings.Contains(stderr, "address already in use") {
		t.Errorf("port taken: exit %d, %s", code, stderr)
	}
}

// The broker on its embedded bus answers, then exits 0 on SIGTERM/SIGINT.
func TestBrokerServesAndStopsCleanly(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			httpPort := testbus.FreePort(t)
			cmd := exec.Command(bin, "broker", "--config", filepath.Join("..", "wgkex.example.yaml"))
			cmd.Env = append(cleanEnv(), fmt.Sprintf("WGKEX_BROKER_LISTEN_PORT=%d", httpPort),
				fmt.Sprintf("WGKEX_MQTT_LISTEN=127.0.0.1:%d", testbus.FreePort(t)))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			url := fmt.Sprintf("http://127.0.0.1:%d/api/v1/wg/key/exchange", httpPort)
			var resp *http.Response
			var err error
			eventually.Within(waitTimeout, func() bool {
				resp, err = http.Post(url, "application/x-www-form-urlencoded",
					strings.NewReader(`{"domain":"ffmuc_welt","public_key":"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="}`))
				return err == nil
			})
			if err != nil {
				t.Fatalf("broker never answered: %v\n%s", err, stderr.String())
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("POST: %d", resp.StatusCode)
			}
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("exit after %v: %v\n%s", sig, err, stderr.String())
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("broker did not stop on %v", sig)
			}
			if !strings.Contains(stderr.String(), "shutting down") {
				t.Errorf("no shutdown line:\n%s", stderr.String())
			}
		})
	}
}

func TestConfigCheck(t *testing.T) {
	code, out, _ := run(t, []string{"MQTT_PASSWORD=hunter2"}, "config", "check", "--config", filepath.Join("..", "testdata", "python-example.yaml"))
	if code != 0 || !strings.Contains(out, "# configuration OK") || strings.Contains(out, "hunter2") || strings.Contains(out, "SECRET") ||
		!strings.Contains(out, `password: "********"`) || !strings.Contains(out, "ffwert_city: wg-city, vx-city") {
		t.Errorf("config check: %d\n%s", code, out)
	}
	code, _, stderr := run(t, nil, "config", "check", "--config", filepath.Join("..", "testdata", "invalid.yaml"))
	if code == 0 || !strings.Contains(stderr, "9 problem(s)") || !strings.Contains(stderr, "workers.gw01.weight") {
		t.Errorf("invalid config: %d %s", code, stderr)
	}
}
