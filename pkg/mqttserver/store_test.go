package mqttserver_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/mqttserver"
)

// childEnv makes the test binary run a server ("addr,store") instead of the
// tests, so that a test can kill it with SIGKILL.
const childEnv = "WGKEX_MQTTSERVER_TEST_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec))
	}
	os.Exit(m.Run())
}

func runChild(spec string) int {
	addr, store, _ := strings.Cut(spec, ",")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := mqttserver.Start(mqttserver.Options{Listen: addr, Store: store, Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	<-ctx.Done()
	srv.Close()
	return 0
}

// child is a server in a process of its own.
type child struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // Wait's result, once exited is closed
}

func startChild(t *testing.T, addr, store string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+addr+","+store)
	ready := &lineSignal{line: "ready", c: make(chan struct{})}
	cmd.Stdout = ready
	cmd.Stderr = logWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, exited: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(c.kill)
	select {
	case <-ready.c:
	case <-c.exited:
		t.Fatalf("server process exited: %v", c.err)
	case <-time.After(20 * time.Second):
		t.Fatal("server process did not get ready")
	}
	return c
}

// kill ends the server as a crash would.
func (c *child) kill() {
	c.cmd.Process.Kill()
	<-c.exited
}

// term stops the server as systemd would.
func (c *child) term(t *testing.T) {
	t.Helper()
	c.cmd.Process.Signal(syscall.SIGTERM)
	<-c.exited
	if c.err != nil {
		t.Fatalf("server process after SIGTERM: %v", c.err)
	}
}

type lineSignal struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	line string
	c    chan struct{}
	done bool
}

func (w *lineSignal) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.done && strings.Contains(w.buf.String(), w.line+"\n") {
		w.done = true
		close(w.c)
	}
	return len(p), nil
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Logf("server: %s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

// collector counts distinct payloads received.
type collector struct {
	mu     sync.Mutex
	seen   map[string]int
	all    []*paho.Publish
	notify chan struct{}
}

func newCollector() *collector {
	return &collector{seen: map[string]int{}, notify: make(chan struct{}, 1)}
}

func (c *collector) add(p *paho.Publish) {
	c.mu.Lock()
	c.seen[string(p.Payload)]++
	c.all = append(c.all, p)
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *collector) addPayload(p []byte) { c.add(&paho.Publish{Payload: p}) }

func (c *collector) received() []*paho.Publish {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*paho.Publish(nil), c.all...)
}

// missing returns the payloads of want not received yet.
func (c *collector) missing(want []string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, w := range want {
		if c.seen[w] == 0 {
			out = append(out, w)
		}
	}
	return out
}

// await waits until every payload of want has arrived and fails the test
// with the count of lost ones when they do not.
func (c *collector) await(t testing.TB, want []string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		miss := c.missing(want)
		if len(miss) == 0 {
			return
		}
		select {
		case <-c.notify:
		case <-deadline:
			t.Fatalf("%d of %d messages lost (first: %q)", len(miss), len(want), miss[0])
		}
	}
}

// peer is a raw paho connection, so that tests decide when it reconnects.
type peer struct {
	*paho.Client
	conn           net.Conn
	sessionPresent bool
}

type peerOptions struct {
	persistent     bool
	manualAck      bool
	receiveMaximum uint16
	got            *collector
}

// ackedKeys are the keys the server acknowledged, in order, with an event
// for each so that a test can wait for a count.
type ackedKeys struct {
	mu       sync.Mutex
	keys     []string
	progress chan struct{} // cap 1
}

func newAckedKeys() *ackedKeys { return &ackedKeys{progress: make(chan struct{}, 1)} }

func (a *ackedKeys) add(key string) {
	a.mu.Lock()
	a.keys = append(a.keys, key)
	a.mu.Unlock()
	select {
	case a.progress <- struct{}{}:
	default:
	}
}

func (a *ackedKeys) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.keys)
}

func (a *ackedKeys) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.keys...)
}

// reach waits until n keys are acknowledged; false when ctx ends first.
func (a *ackedKeys) reach(ctx context.Context, n int) bool {
	for a.count() < n {
		select {
		case <-a.progress:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// keySubscriber is worker-gw1 with a persistent session subscribed to
// every key topic, collecting what it receives.
func keySubscriber(t testing.TB, addr string) (*peer, *collector) {
	t.Helper()
	got := newCollector()
	sub := dial(t, addr, "worker-gw1", peerOptions{persistent: true, got: got})
	sub.subscribe(t, "wireguard/+/all")
	return sub, got
}

func dial(t testing.TB, addr, id string, o peerOptions) *peer {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg := paho.ClientConfig{
		ClientID:                   id,
		Conn:                       conn,
		EnableManualAcknowledgment: o.manualAck,
		SendAcksInterval:           5 * time.Millisecond,
		OnClientError:              func(error) {},
	}
	if o.got != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) { o.got.add(pr.Packet); return true, nil },
		}
	}
	c := paho.NewClient(cfg)
	cp := &paho.Connect{ClientID: id, CleanStart: !o.persistent, KeepAlive: 30, Properties: &paho.ConnectProperties{}}
	if o.persistent {
		week := uint32(7 * 24 * 3600)
		cp.Properties.SessionExpiryInterval = &week
	}
	if o.receiveMaximum > 0 {
		cp.Properties.ReceiveMaximum = &o.receiveMaximum
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return &peer{Client: c, conn: conn, sessionPresent: ack.SessionPresent}
}

// abort drops the connection without DISCONNECT, as a crash would.
func (p *peer) abort() { p.conn.Close() }

func (p *peer) subscribe(t testing.TB, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := p.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if ack.Reasons[0] != 1 {
		t.Fatalf("subscribe %s: reason %#x", filter, ack.Reasons[0])
	}
}

// waitGone waits until the server has dropped the connection.
func (p *peer) waitGone(t testing.TB) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection survived the server")
	}
}

// publishAll publishes each payload at QoS 1 from 32 goroutines at once
// and fails unless the server acknowledges every one.
func publishAll(t testing.TB, p *peer, topic string, payloads []string, retain bool) {
	t.Helper()
	var wg sync.WaitGroup
	var failed atomic.Value
	next := make(chan string)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pl := range next {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := p.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: retain, Payload: []byte(pl)})
				cancel()
				if err == nil && resp.ReasonCode >= 0x80 {
					err = fmt.Errorf("reason %#x", resp.ReasonCode)
				}
				if err != nil {
					failed.Store(fmt.Errorf("publish %q: %w", pl, err))
				}
			}
		}()
	}
	for _, pl := range payloads {
		next <- pl
	}
	close(next)
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
}

func payloads(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%05d", prefix, i)
	}
	return out
}

func freeAddr(t testing.TB) string { return fmt.Sprintf("127.0.0.1:%d", testbus.FreePort(t)) }

func startInProcess(t testing.TB, addr, store string) *mqttserver.Server {
	t.Helper()
	srv, err := mqttserver.Start(mqttserver.Options{Listen: addr, Store: store, Logger: testbus.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

const keyTopic = "wireguard/ffmuc_welt/all"

// (a) A persistent session, its subscription and what was queued for it
// before a clean stop survive it, and it keeps collecting after the start.
func TestStoreKeepsSessionsAcrossStop(t *testing.T) {
	addr, store := freeAddr(t), filepath.Join(t.TempDir(), "mqtt.db")
	srv := startInProcess(t, addr, store)
	sub, got := keySubscriber(t, addr)
	sub.Disconnect(&paho.Disconnect{})

	pub := dial(t, addr, "broker", peerOptions{})
	before := payloads("before-stop", 300)
	publishAll(t, pub, keyTopic, before, false)
	srv.Close()

	srv = startInProcess(t, addr, store)
	defer srv.Close()
	pub = dial(t, addr, "broker", peerOptions{})
	after := payloads("after-start", 300)
	publishAll(t, pub, keyTopic, after, false)

	sub = dial(t, addr, "worker-gw1", peerOptions{persistent: true, got: got}) // no new SUBSCRIBE
	if !sub.sessionPresent {
		t.Error("session not present after the restart")
	}
	got.await(t, append(before, after...), 20*time.Second)
}

// (b) The server is killed while the subscriber is connected; after the
// restart a publisher sends while the subscriber is still away, and the
// subscriber gets every message when it comes back.
func TestStoreSessionSurvivesKill(t *testing.T) {
	addr, store := freeAddr(t), filepath.Join(t.TempDir(), "mqtt.db")
	server := startChild(t, addr, store)
	sub, got := keySubscriber(t, addr)
	server.kill()
	sub.waitGone(t)

	server = startChild(t, addr, store)
	pub := dial(t, addr, "broker", peerOptions{})
	want := payloads("while-away", 1000)
	publishAll(t, pub, keyTopic, want, false)

	sub = dial(t, addr, "worker-gw1", peerOptions{persistent: true, got: got})
	if !sub.sessionPresent {
		t.Error("session not present after the kill")
	}
	got.await(t, want, 20*time.Second)
	server.term(t)
}

// (c) Messages queued for an away subscriber survive a SIGKILL that comes
// right after the last PUBACK.
func TestStoreQueuedMessagesSurviveKill(t *testing.T) {
	addr, store := freeAddr(t), filepath.Join(t.TempDir(), "mqtt.db")
	server := startChild(t, addr, store)
	sub, got := keySubscriber(t, addr)
	sub.Disconnect(&paho.Disconnect{})

	pub := dial(t, addr, "broker", peerOptions{})
	want := payloads("queued", 2000)
	publishAll(t, pub, keyTopic, want, false)
	server.kill()

	startChild(t, addr, store)
	dial(t, addr, "worker-gw1", peerOptions{persistent: true, got: got})
	got.await(t, want, 20*time.Second)
}

// (d) Retained messages, and the clearing of one, survive a SIGKILL.
func TestStoreRetainedSurviveKill(t *testing.T) {
	addr, store := freeAddr(t), filepath.Join(t.TempDir(), "mqtt.db")
	server := startChild(t, addr, store)
	pub := dial(t, addr, "gw1", peerOptions{})
	publishAll(t, pub, "wireguard-worker/gw1/status", []string{"1"}, true)
	publishAll(t, pub, "wireguard-worker/gw1/ffmuc_welt/data", []string{`{"Port":51820}`}, true)
	publishAll(t, pub, "wireguard-worker/gw2/status", []string{"1"}, true)
	publishAll(t, pub, "wireguard-worker/gw2/status", []string{""}, true) // clears it
	server.kill()

	startChild(t, addr, store)
	got := newCollector()
	sub := dial(t, addr, "broker", peerOptions{got: got})
	sub.subscribe(t, "wireguard-worker/#")
	got.await(t, []string{"1", `{"Port":51820}`}, 10*time.Second)
	// The clear must have survived too: mark the end with a fresh message
	// and look at everything before it.
	publishAll(t, dial(t, addr, "other", peerOptions{}), "wireguard-worker/end", []string{"end"}, false)
	got.await(t, []string{"end"}, 10*time.Second)
	topics := map[string]bool{}
	for _, p := range got.received() {
		if !p.Retain && string(p.Payload) != "end" {
			t.Errorf("retained message without retain flag: %s", p.Topic)
		}
		topics[p.Topic] = true
	}
	if topics["wireguard-worker/gw2/status"] {
		t.Error("cleared retained message came back")
	}
	if !topics["wireguard-worker/gw1/status"] || !topics["wireguard-worker/gw1/ffmuc_welt/data"] {
		t.Errorf("retained messages missing: %v", topics)
	}
}

// (e) Messages in flight to a subscriber (sent, not acknowledged) when the
// server is killed are resent after the restart with valid, distinct packet
// ids and the DUP flag, and the session goes on working: this is where
// mochi's own bbolt hook failed ("resend inflight: protocol violation:
// missing packet id") and the session could never connect again.
func TestStoreResendsInflightAfterKill(t *testing.T) {
	addr, store := freeAddr(t), filepath.Join(t.TempDir(), "mqtt.db")
	server := startChild(t, addr, store)
	first := newCollector()
	sub := dial(t, addr, "worker-gw1", peerOptions{persistent: true, manualAck: true, got: first})
	sub.subscribe(t, "wireguard/+/all")
	pub := dial(t, addr, "broker", peerOptions{})
	want := payloads("inflight", 50)
	publishAll(t, pub, keyTopic, want, false)
	first.await(t, want, 10*time.Second) // received, never acknowledged
	server.kill()
	sub.waitGone(t)

	server = startChild(t, addr, store)
	again := newCollector()
	// Acknowledged automatically this time: paho's manual acknowledgement
	// loses track of messages that arrive right after the CONNACK.
	sub = dial(t, addr, "worker-gw1", peerOptions{persistent: true, got: again})
	again.await(t, want, 10*time.Second)
	ids := map[uint16]bool{}
	for _, p := range again.received() {
		if p.PacketID == 0 || ids[p.PacketID] {
			t.Errorf("resent %q with packet id %d (used before: %v)", p.Payload, p.PacketID, ids[p.PacketID])
		}
		ids[p.PacketID] = true
		if !p.Duplicate() {
			t.Errorf("resent %q without DUP", p.Payload)
		}
	}

	// The session works on: new messages arrive, and it connects again.
	pub = dial(t, addr, "broker", peerOptions{})
	publishAll(t, pub, keyTopic, []string{"next"}, false)
	again.await(t, []string{"next"}, 10*time.Second)
	sub.Disconnect(&paho.Disconnect{})
	sub = dial(t, addr, "worker-gw1", peerOptions{persistent: true, got: again})
	if !sub.sessionPresent {
		t.Error("session not present on the second reconnect")
	}
	publishAll(t, pub, keyTopic, []string{"last"}, false)
	again.await(t, []string{"last"}, 10*time.Second)
	server.term(t)
}

// The scenario of the issue: keys published at full speed while the server
// is killed and restarted. Every key the server acknowledged reaches the
// worker's persistent session. Bounded: 6000 acknowledged keys.
func TestStoreKillUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("kill under load takes a few seconds")
	}
	addr, store := freeAddr(t), filepath.Join(t.TempDir(), "mqtt.db")
	u := &url.URL{Scheme: "mqtt", Host: addr}
	server := startChild(t, addr, store)

	got := newCollector()
	worker := mqtt.New(mqtt.Options{Server: u, ClientID: "worker-gw1", Persistent: true, SessionExpiry: 7 * 24 * time.Hour,
		Keepalive: 5 * time.Second, Logger: testbus.Quiet(),
		Subscriptions: []mqtt.Subscription{{Filter: "wireguard/+/all", QoS: 1}},
		OnMessage:     func(m mqtt.Message) { got.addPayload(m.Payload) }})
	testbus.Start(t, worker)
	broker := mqtt.New(mqtt.Options{Server: u, ClientID: "broker", Keepalive: 5 * time.Second, Logger: testbus.Quiet()})
	testbus.Start(t, broker)

	const total, killAt = 6000, 2500
	var (
		acked  = newAckedKeys()
		next   atomic.Int64
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && acked.count() < total {
				key := fmt.Sprintf("key-%06d", next.Add(1))
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				err := broker.Publish(pctx, keyTopic, []byte(key), 1, false)
				pcancel()
				if err != nil {
					// Not acknowledged: the broker answers the node with an
					// error. Wait for the connection to come back.
					failed.Add(1)
					broker.AwaitConnection(ctx)
					continue
				}
				acked.add(key)
			}
		}()
	}
	if !acked.reach(ctx, killAt) {
		t.Fatal("publishing stalled before the kill")
	}
	server.kill()
	server = startChild(t, addr, store)
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("publishing did not finish: %d acknowledged", acked.count())
	}
	want := acked.all()
	got.await(t, want, 30*time.Second)
	t.Logf("%d keys acknowledged, all delivered; %d publishes failed during the restart", len(want), failed.Load())
	server.term(t)
}

// A store held by a running server is not opened twice.
func TestStoreLockedByOtherServer(t *testing.T) {
	store := filepath.Join(t.TempDir(), "mqtt.db")
	srv := startInProcess(t, freeAddr(t), store)
	defer srv.Close()
	_, err := mqttserver.Start(mqttserver.Options{Listen: freeAddr(t), Store: store, Logger: testbus.Quiet()})
	if err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second server on the same store: %v", err)
	}
}

// BenchmarkPublishQoS1 measures the QoS 1 publish rate, from publish to
// delivery into a persistent session, in memory and with the store, for one
// publisher that waits for each PUBACK and for 64 at once (as the broker's
// concurrent requests do).
func BenchmarkPublishQoS1(b *testing.B) {
	for _, c := range []struct {
		mode       string
		publishers int
	}{{"memory", 1}, {"store", 1}, {"memory", 64}, {"store", 64}} {
		mode := c.mode
		b.Run(fmt.Sprintf("%s/publishers=%d", c.mode, c.publishers), func(b *testing.B) {
			addr := freeAddr(b)
			store := ""
			if mode == "store" {
				store = filepath.Join(b.TempDir(), "mqtt.db")
			}
			srv := startInProcess(b, addr, store)
			defer srv.Close()
			var received atomic.Int64
			all := make(chan struct{})
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			sub := paho.NewClient(paho.ClientConfig{ClientID: "worker", Conn: conn, OnClientError: func(error) {},
				OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(paho.PublishReceived) (bool, error) {
					if received.Add(1) == int64(b.N) {
						close(all)
					}
					return true, nil
				}}})
			week := uint32(7 * 24 * 3600)
			if _, err := sub.Connect(context.Background(), &paho.Connect{ClientID: "worker", KeepAlive: 30,
				Properties: &paho.ConnectProperties{SessionExpiryInterval: &week}}); err != nil {
				b.Fatal(err)
			}
			defer sub.Disconnect(&paho.Disconnect{})
			if _, err := sub.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "wireguard/+/all", QoS: 1}}}); err != nil {
				b.Fatal(err)
			}
			pub := dial(b, addr, "broker", peerOptions{})
			key := []byte("2bMLBSlJPXX5HKfIjLMJlnVKUiSgWRNKSiS7fIWpXiI=")
			b.ResetTimer()
			var wg sync.WaitGroup
			var next atomic.Int64
			var failed atomic.Value
			for range c.publishers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: keyTopic, QoS: 1, Payload: key}); err != nil {
							failed.Store(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			select {
			case <-all:
			case <-time.After(time.Minute):
				b.Fatalf("%d of %d delivered", received.Load(), b.N)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
