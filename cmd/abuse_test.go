package cmd_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/freifunkMUC/wgkex/internal/eventually"
	"github.com/freifunkMUC/wgkex/internal/testbus"
)

const (
	keyA = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
	keyB = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
)

// exchange posts a v1 key exchange and returns the status and the error
// message, if any.
func exchange(t *testing.T, port int, key string, header ...string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/api/v1/wg/key/exchange", port),
		strings.NewReader(`{"domain":"ffmuc_welt","public_key":"`+key+`"}`))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error(), nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var e struct {
		Error struct{ Message string } `json:"error"`
	}
	json.Unmarshal(raw, &e)
	return resp.StatusCode, e.Error.Message, resp.Header
}

// startBroker runs the broker binary on its embedded bus, on free ports,
// with env and waits until it answers.
func startBroker(t *testing.T, env ...string) (*proc, int) {
	t.Helper()
	port := testbus.FreePort(t)
	env = append(env, fmt.Sprintf("WGKEX_MQTT_LISTEN=127.0.0.1:%d", testbus.FreePort(t)))
	return startBrokerOn(t, port, env...), port
}

// startBrokerOn runs the broker binary with its HTTP API on port and env,
// and waits until it answers.
func startBrokerOn(t *testing.T, port int, env ...string) *proc {
	t.Helper()
	env = append(env, fmt.Sprintf("WGKEX_BROKER_LISTEN_PORT=%d", port))
	p := start(t, env, "broker", "--config", filepath.Join("..", "testdata", "minimal.yaml"))
	eventually.True(t, waitTimeout, "broker answering", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return p
}

// The block list refuses keys with 403 and follows the file: by a change
// of the file, and by SIGHUP; a broken file keeps the last good list.
func TestBrokerBlocklist(t *testing.T) {
	list := filepath.Join(t.TempDir(), "blocked.yaml")
	write := func(s string) {
		if err := os.WriteFile(list+".tmp", []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(list+".tmp", list); err != nil { // as editors save
			t.Fatal(err)
		}
	}
	write("keys:\n  - key: " + keyA + "\n    reason: stolen router\n")
	p, port := startBroker(t, "WGKEX_BROKER_BLOCKLIST_FILE="+list, "WGKEX_BROKER_RATE_LIMIT_PER_CLIENT=0")

	if code, msg, _ := exchange(t, port, keyA); code != 403 || msg != "key is blocked" {
		t.Errorf("blocked key: %d %q", code, msg)
	}
	if code, msg, _ := exchange(t, port, keyB); code != 200 {
		t.Errorf("other key: %d %q", code, msg)
	}
	// A change of the file is picked up without a restart.
	write("- " + keyB + "\n")
	eventually.True(t, waitTimeout, "the new list in force", func() bool {
		a, _, _ := exchange(t, port, keyA)
		b, _, _ := exchange(t, port, keyB)
		return a == 200 && b == 403
	})
	// A broken file keeps the last good list, and says why.
	write("- not-a-key\n")
	eventually.True(t, waitTimeout, "the broken file reported", func() bool {
		return strings.Contains(p.stderr.String(), "not-a-key")
	})
	if code, _, _ := exchange(t, port, keyB); code != 403 {
		t.Errorf("after a broken file: key B %d, want the last good list (403)", code)
	}
	// SIGHUP reloads too.
	if err := os.WriteFile(list, []byte("- "+keyA+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	eventually.True(t, waitTimeout, "SIGHUP reload", func() bool {
		a, _, _ := exchange(t, port, keyA)
		return a == 403 && strings.Contains(p.stderr.String(), "SIGHUP: reloading key lists")
	})
	if err := p.signal(t, syscall.SIGTERM); err != nil {
		t.Errorf("broker exit after SIGTERM: %v\n%s", err, p.stderr)
	}
}

// A burst from one address meets 429 with Retry-After while another client
// (behind a trusted proxy) is still served.
func TestBrokerRateLimit(t *testing.T) {
	_, port := startBroker(t, "WGKEX_BROKER_RATE_LIMIT_PER_CLIENT=0.01", "WGKEX_BROKER_RATE_LIMIT_PER_CLIENT_BURST=3",
		"WGKEX_BROKER_LISTEN_TRUSTED_PROXIES=127.0.0.1")
	codes := map[int]int{}
	var hdr http.Header
	for range 5 {
		code, _, h := exchange(t, port, keyA, "X-Forwarded-For", "192.0.2.7")
		codes[code]++
		if code == 429 {
			hdr = h
		}
	}
	if codes[200] != 3 || codes[429] != 2 {
		t.Errorf("burst of 5 with burst 3: %v", codes)
	}
	if hdr.Get("Retry-After") == "" || hdr.Get("Content-Type") != "application/json" {
		t.Errorf("429 headers %v", hdr)
	}
	if code, msg, _ := exchange(t, port, keyA, "X-Forwarded-For", "192.0.2.8"); code != 200 {
		t.Errorf("another client: %d %s", code, msg)
	}
}

func TestBrokerBadKeyListRefusesToStart(t *testing.T) {
	list := filepath.Join(t.TempDir(), "blocked.yaml")
	os.WriteFile(list, []byte("- nope\n"), 0o644)
	code, _, stderr := run(t, []string{"WGKEX_BROKER_BLOCKLIST_FILE=" + list,
		fmt.Sprintf("WGKEX_BROKER_LISTEN_PORT=%d", testbus.FreePort(t)), fmt.Sprintf("WGKEX_MQTT_LISTEN=127.0.0.1:%d", testbus.FreePort(t))},
		"broker", "--config", filepath.Join("..", "testdata", "minimal.yaml"))
	if code == 0 || !strings.Contains(stderr, "broker.blocklist_file") || !strings.Contains(stderr, "nope") {
		t.Errorf("exit %d: %s", code, stderr)
	}
}
