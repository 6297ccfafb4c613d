// Package testbus starts real MQTT servers for tests: Mosquitto (from
// Debian) and the embedded mochi server, each on a free loopback port.
package testbus

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/mqttserver"
)

// requireEnv, when set (CI sets it), turns a missing test dependency into a
// failure instead of a skip.
const requireEnv = "WGKEX_TEST_REQUIRE_ALL"

// Missing skips t for a missing dependency, or fails it when WGKEX_TEST_REQUIRE_ALL is set.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(requireEnv) != "" {
		t.Fatalf("%s (and %s is set)", msg, requireEnv)
	}
	t.Skip(msg)
}

// Server is an MQTT server a test can use.
type Server struct {
	Name string
	URL  *url.URL
	// Stop ends the server (and Start brings it back on the same port).
	Stop  func()
	Start func()
}

// Kinds lists the server kinds tests run against.
var Kinds = []struct {
	Name  string
	Start func(t testing.TB) *Server
}{
	{"mosquitto", Mosquitto},
	{"embedded", Embedded},
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Mosquitto starts a mosquitto process on a free port.
func Mosquitto(t testing.TB) *Server { return MosquittoWith(t, "") }

// MosquittoWith starts mosquitto with extra configuration lines: settings
// for its listener (TLS, say) or global ones that override the defaults
// here. The URL's scheme is tls when they name a certfile.
func MosquittoWith(t testing.TB, listenerConf string) *Server {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
			if _, err2 := os.Stat(p); err2 == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		Missing(t, "mosquitto is not installed (apt-get install mosquitto)")
	}
	port := FreePort(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	// Generous queues: tests publish bursts to persistent sessions. The
	// extra lines come last, so they may override these. Information
	// includes the line that says mosquitto is running.
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`listener %d 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 200000
max_inflight_messages 0
log_dest stderr
log_type error
log_type warning
log_type information
%s
`, port, listenerConf)), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var cmd *exec.Cmd
	var logged chan struct{} // closed when mosquitto's log ends (it exited)
	scheme := "mqtt"
	if strings.Contains(listenerConf, "certfile") {
		scheme = "tls"
	}
	s := &Server{Name: "mosquitto", URL: &url.URL{Scheme: scheme, Host: addr}}
	s.Start = func() {
		cmd = exec.Command(bin, "-c", conf)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start mosquitto: %v", err)
		}
		running := make(chan struct{})
		logged = make(chan struct{})
		go func() {
			defer close(logged)
			said := false
			lines := bufio.NewScanner(stderr)
			for lines.Scan() {
				t.Logf("mosquitto: %s", lines.Text())
				if !said && strings.Contains(lines.Text(), " running") {
					close(running)
					said = true
				}
			}
		}()
		select {
		case <-running: // it listens before it says so
		case <-logged:
			cmd.Wait()
			cmd = nil
			t.Fatalf("mosquitto exited: %s", conf)
		case <-time.After(10 * time.Second):
			t.Fatalf("mosquitto not running after 10 s")
		}
	}
	s.Stop = func() {
		if cmd != nil && cmd.Process != nil {
			cmd.Process.Kill()
			<-logged
			cmd.Wait()
			cmd = nil
		}
	}
	t.Cleanup(s.Stop)
	s.Start()
	return s
}

// Embedded starts wgkex's in-process MQTT server on a free port.
func Embedded(t testing.TB) *Server {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	var srv *mqttserver.Server
	s := &Server{Name: "embedded", URL: &url.URL{Scheme: "mqtt", Host: addr}}
	s.Start = func() {
		var err error
		srv, err = mqttserver.Start(mqttserver.Options{Listen: addr, Logger: Quiet()})
		if err != nil {
			t.Fatal(err)
		}
	}
	s.Stop = func() {
		if srv != nil {
			srv.Close()
			srv = nil
		}
	}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Quiet is a logger for tests that only shows warnings and errors.
func Quiet() *slog.Logger {
	if os.Getenv("WGKEX_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Subscriber collects what arrives on filter.
type Subscriber struct {
	C      chan mqtt.Message
	Client *mqtt.Client
}

// Subscribe connects a separate client that subscribes to filters.
func Subscribe(t testing.TB, server *url.URL, filters ...string) *Subscriber {
	t.Helper()
	s := &Subscriber{C: make(chan mqtt.Message, 100000)}
	o := mqtt.Options{Server: server, ClientID: fmt.Sprintf("test-sub-%d", time.Now().UnixNano()), Keepalive: 5 * time.Second, Logger: Quiet(),
		OnMessage: func(m mqtt.Message) { s.C <- m }}
	for _, f := range filters {
		o.Subscriptions = append(o.Subscriptions, mqtt.Subscription{Filter: f, QoS: 1})
	}
	s.Client = Connect(t, o)
	return s
}

// Connect connects o and waits until it is up; the test closes it.
func Connect(t testing.TB, o mqtt.Options) *mqtt.Client {
	t.Helper()
	if o.Logger == nil {
		o.Logger = Quiet()
	}
	c := mqtt.New(o)
	Start(t, c)
	return c
}

// Start starts c, waits until it is up, and closes it when the test ends.
func Start(t testing.TB, c *mqtt.Client) {
	t.Helper()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}
}

// Publish sends one message with a fresh client, as another program would.
func Publish(t testing.TB, server *url.URL, topic, payload string, qos byte, retain bool) {
	t.Helper()
	c := Connect(t, mqtt.Options{Server: server, ClientID: fmt.Sprintf("test-pub-%d", time.Now().UnixNano()), Keepalive: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Publish(ctx, topic, []byte(payload), qos, retain); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx) // a QoS 0 message leaves before the DISCONNECT that follows it
}

// Wait receives from s until match returns true or the timeout passes.
func (s *Subscriber) Wait(t testing.TB, timeout time.Duration, match func(mqtt.Message) bool) mqtt.Message {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-s.C:
			if match(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("no matching message within %v", timeout)
			return mqtt.Message{}
		}
	}
}
