package cmd_test

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/internal/eventually"
	"github.com/freifunkMUC/wgkex/internal/netns"
	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// syncBuffer is a bytes.Buffer the process's output copier and the test
// can use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// proc is a wgkex process started by a test.
type proc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), stderr: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Env = append(cleanEnv(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	return p
}

func (p *proc) signal(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	return p.signalWithin(t, sig, 15*time.Second)
}

// signalWithin signals p and waits up to timeout (a guard against
// hanging) for it to exit.
func (p *proc) signalWithin(t *testing.T, sig syscall.Signal, timeout time.Duration) error {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case err := <-p.done:
		p.done <- err // for Cleanup
		return err
	case <-time.After(timeout):
		t.Fatalf("no exit within %v after %v:\n%s", timeout, sig, p.stderr)
		return nil
	}
}

// waitTimeout bounds waits on another process or the kernel.
const waitTimeout = 10 * time.Second

// TestWorkerBinary runs wgkex dummy-iface and wgkex worker as an operator
// would, in a network namespace, against a real Mosquitto.
func TestWorkerBinary(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	bus := testbus.Mosquitto(t)
	cfg := filepath.Join("..", "testdata", "minimal.yaml")
	env := []string{"WGKEX_MQTT_BROKER_URL=" + bus.URL.Hostname(), "WGKEX_MQTT_BROKER_PORT=" + bus.URL.Port()}

	dummy := start(t, nil, "dummy-iface", "--config", cfg, "--listen-port", "51999")
	eventually.True(t, waitTimeout, "wg-welt and vx-welt", func() bool {
		_, e1 := net.InterfaceByName("wg-welt")
		_, e2 := net.InterfaceByName("vx-welt")
		return e1 == nil && e2 == nil && strings.Contains(dummy.stderr.String(), "vx-welt vxlan id 99")
	})

	// A second dummy-iface is harmless: it reports what is there.
	code, out, _ := run(t, nil, "dummy-iface", "--config", cfg, "--listen-port", "51999")
	if code != 0 || !strings.Contains(out, "already there, left as it is") {
		t.Errorf("second dummy-iface: %d %s", code, out)
	}

	sub := testbus.Subscribe(t, bus.URL, "wireguard-worker/#", "wireguard-metrics/#")
	w := start(t, env, "worker", "--config", cfg, "--name", "gw-test")
	m := sub.Wait(t, 10*time.Second, func(m mqtt.Message) bool { return m.Topic == wgkex.DataTopic("gw-test", "ffmuc_welt") })
	if d, err := wgkex.ParseWorkerData(m.Payload); err != nil || d.Port != 51999 || d.ExternalAddress != "gw-test" {
		t.Errorf("data %s: %v", m.Payload, err)
	}
	sub.Wait(t, 10*time.Second, func(m mqtt.Message) bool { return m.Topic == wgkex.StatusTopic("gw-test") && string(m.Payload) == "1" })

	priv, _ := wgtypes.GeneratePrivateKey()
	key := priv.PublicKey().String()
	testbus.Publish(t, bus.URL, wgkex.KeyTopic("ffmuc_welt"), key, 1, false)
	eventually.True(t, waitTimeout, "peer on wg-welt", func() bool {
		out, _ := exec.Command("wg", "show", "wg-welt", "allowed-ips").CombinedOutput()
		return strings.Contains(string(out), key+"\t"+wgkex.LinkLocal(key).String()+"/128")
	})

	// SIGKILL: no goodbye, so the server publishes the will.
	w.signal(t, syscall.SIGKILL)
	sub.Wait(t, 15*time.Second, func(m mqtt.Message) bool { return m.Topic == wgkex.StatusTopic("gw-test") && string(m.Payload) == "0" })

	// A key published while the worker is dead arrives after the restart.
	priv2, _ := wgtypes.GeneratePrivateKey()
	key2 := priv2.PublicKey().String()
	testbus.Publish(t, bus.URL, wgkex.KeyTopic("ffmuc_welt"), key2, 1, false)
	w = start(t, env, "worker", "--config", cfg, "--name", "gw-test")
	eventually.True(t, waitTimeout, "key published while down", func() bool {
		out, _ := exec.Command("wg", "show", "wg-welt", "peers").CombinedOutput()
		return strings.Contains(string(out), key2)
	})

	// SIGTERM: -1, status 0, exit 0.
	if err := w.signal(t, syscall.SIGTERM); err != nil {
		t.Errorf("worker exit: %v\n%s", err, w.stderr)
	}
	sub.Wait(t, 5*time.Second, func(m mqtt.Message) bool {
		return m.Topic == wgkex.ConnectedPeersTopic("ffmuc_welt", "gw-test") && string(m.Payload) == "-1"
	})
	sub.Wait(t, 5*time.Second, func(m mqtt.Message) bool { return m.Topic == wgkex.StatusTopic("gw-test") && string(m.Payload) == "0" })

	// dummy-iface removes its userspace interfaces on SIGTERM.
	if err := dummy.signal(t, syscall.SIGTERM); err != nil {
		t.Errorf("dummy-iface exit: %v\n%s", err, dummy.stderr)
	}
	if _, err := net.InterfaceByName("wg-welt"); err == nil {
		t.Error("wg-welt still there")
	}
	if _, err := net.InterfaceByName("vx-welt"); err == nil {
		t.Error("vx-welt still there")
	}
}
