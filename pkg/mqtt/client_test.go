package mqtt_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
)

func receive(t *testing.T, got <-chan mqtt.Message) mqtt.Message {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
		return mqtt.Message{}
	}
}

func await(t *testing.T, c *mqtt.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}
}

// After the server restarts, the client reconnects and renews its
// subscriptions without help.
func TestReconnectRenewsSubscriptions(t *testing.T) {
	for _, kind := range testbus.Kinds {
		t.Run(kind.Name, func(t *testing.T) {
			srv := kind.Start(t)
			got := make(chan mqtt.Message, 10)
			ready := make(chan struct{}, 10)
			c := testbus.Connect(t, mqtt.Options{Server: srv.URL, ClientID: "reconnector", Keepalive: 2 * time.Second,
				Subscriptions: []mqtt.Subscription{{Filter: "test/#", QoS: 1}},
				OnMessage:     func(m mqtt.Message) { got <- m },
				OnReady:       func(context.Context) { ready <- struct{}{} }})
			<-ready

			srv.Stop()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.AwaitDown(ctx); err != nil {
				t.Fatal(err)
			}
			if c.Connected() {
				t.Error("client reports a connection to a stopped server")
			}
			if err := c.Publish(ctx, "test/x", []byte("x"), 1, false); !errors.Is(err, mqtt.ErrNotConnected) {
				t.Errorf("publish while down: %v", err)
			}

			srv.Start()
			select {
			case <-ready:
			case <-time.After(15 * time.Second):
				t.Fatal("no reconnection")
			}
			testbus.Publish(t, srv.URL, "test/after", "hello", 1, false)
			if m := receive(t, got); m.Topic != "test/after" || string(m.Payload) != "hello" {
				t.Errorf("got %s %q", m.Topic, m.Payload)
			}
			if n := c.Connects(); n < 2 {
				t.Errorf("connects = %d", n)
			}
		})
	}
}

// OnReady's context belongs to its connection: it ends when that
// connection is lost, and the next connection gets a fresh one.
func TestOnReadyContextEndsWithConnection(t *testing.T) {
	srv := testbus.Mosquitto(t)
	ready := make(chan context.Context, 10)
	c := testbus.Connect(t, mqtt.Options{Server: srv.URL, ClientID: "ready", Keepalive: time.Minute,
		OnReady: func(ctx context.Context) { ready <- ctx }})
	first := <-ready
	if first.Err() != nil {
		t.Fatal("OnReady got an ended context")
	}
	c.Kill()
	select {
	case <-first.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("OnReady's context outlived its connection")
	}
	select {
	case second := <-ready:
		if second.Err() != nil && c.Connected() {
			t.Error("the new connection's OnReady got an ended context")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no reconnection")
	}
}

func TestPublishBeforeStart(t *testing.T) {
	c := mqtt.New(mqtt.Options{})
	if err := c.Publish(context.Background(), "a", nil, 1, false); !errors.Is(err, mqtt.ErrNotConnected) {
		t.Fatalf("err = %v", err)
	}
	if err := c.Start(context.Background()); err == nil {
		t.Fatal("Start without server succeeded")
	}
}

// proxy forwards TCP connections to a server. After hold it swallows what
// clients send, so a publish leaves the client but is never acknowledged.
type proxy struct {
	ln      net.Listener
	holding atomic.Bool
	held    chan struct{} // closed when something was swallowed
	once    sync.Once

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, held: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() {
				defer p.wg.Done()
				io.Copy(c, up)
				c.Close()
				up.Close()
			}()
			go func() {
				defer p.wg.Done()
				defer up.Close()
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if p.holding.Load() {
						p.once.Do(func() { close(p.held) })
						continue
					}
					if _, err := up.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) url() *url.URL { return &url.URL{Scheme: "mqtt", Host: p.ln.Addr().String()} }

// A QoS 1 publish waiting for its acknowledgement fails as soon as the
// connection drops, not when its own timeout runs out; so do new ones.
func TestPublishFailsFastWhenConnectionDrops(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(*testbus.Server, *proxy, *mqtt.Client)
	}{
		{"server killed", func(s *testbus.Server, _ *proxy, _ *mqtt.Client) { s.Stop() }},
		{"connection cut", func(_ *testbus.Server, p *proxy, c *mqtt.Client) {
			p.ln.Close() // no reconnection
			c.Kill()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testbus.Mosquitto(t)
			p := startProxy(t, srv.URL.Host)
			c := testbus.Connect(t, mqtt.Options{Server: p.url(), ClientID: "fail-fast", Keepalive: time.Minute})

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p.holding.Store(true)
			published := make(chan error, 1)
			go func() { published <- c.Publish(ctx, "test/inflight", []byte("x"), 1, false) }()
			<-p.held // the PUBLISH is out and will never be acknowledged
			tc.cut(srv, p, c)

			if err := <-published; !errors.Is(err, mqtt.ErrNotConnected) {
				t.Fatalf("publish in flight: %v, want %v", err, mqtt.ErrNotConnected)
			}
			if err := c.Publish(ctx, "test/after", []byte("x"), 1, false); !errors.Is(err, mqtt.ErrNotConnected) {
				t.Fatalf("publish after the drop: %v, want %v", err, mqtt.ErrNotConnected)
			}
		})
	}
}

// With ManualAck, a message the receiver has not acknowledged comes again
// after an abrupt disconnection (persistent session); an acknowledged one
// does not. Acknowledgements go out in the order the messages came.
//
// Mosquitto only: mochi 2.7.9 keeps the client's packet identifiers and its
// own in one table (mochi-mqtt/server#519), so after a reconnection it
// refuses a SUBSCRIBE whose identifier matches a message it sends again, and
// a client's QoS 1 publish cancels the delivery with the same identifier.
func TestManualAck(t *testing.T) {
	srv := testbus.Mosquitto(t)
	got := make(chan mqtt.Message, 100)
	c := testbus.Connect(t, mqtt.Options{Server: srv.URL, ClientID: "acker", Keepalive: time.Minute,
		Persistent: true, SessionExpiry: time.Hour, ManualAck: true,
		Subscriptions: []mqtt.Subscription{{Filter: "keys/#", QoS: 1}},
		OnMessage:     func(m mqtt.Message) { got <- m }})
	next := func(want string) mqtt.Message {
		t.Helper()
		m := receive(t, got)
		if string(m.Payload) != want {
			t.Fatalf("got %s %q, want %q", m.Topic, m.Payload, want)
		}
		return m
	}
	ack := func(ms ...mqtt.Message) {
		t.Helper()
		for _, m := range ms {
			if err := m.Ack(); err != nil {
				t.Fatal(err)
			}
		}
		// The server handles a connection's packets in order: once
		// it acknowledges this publish, it has our acknowledgements.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Publish(ctx, "sync", nil, 1, false); err != nil {
			t.Fatal(err)
		}
	}
	reconnect := func() {
		t.Helper()
		c.Kill()
		await(t, c)
	}

	testbus.Publish(t, srv.URL, "keys/a", "a", 1, false)
	testbus.Publish(t, srv.URL, "keys/b", "b", 1, false)
	a := next("a")
	b := next("b")
	ack(b) // held back until a is acknowledged
	reconnect()
	if err := a.Ack(); err == nil {
		t.Error("acknowledging a message of a lost connection succeeded")
	}
	a, b = next("a"), next("b") // neither was acknowledged
	ack(a, b)
	reconnect()
	testbus.Publish(t, srv.URL, "keys/c", "c", 1, false)
	next("c") // a and b do not come again
}

// ReceiveMaximum caps the unacknowledged messages the server sends.
func TestReceiveMaximum(t *testing.T) {
	srv := testbus.Mosquitto(t)
	got := make(chan mqtt.Message, 100)
	testbus.Connect(t, mqtt.Options{Server: srv.URL, ClientID: "narrow", Keepalive: time.Minute,
		ManualAck: true, ReceiveMaximum: 2,
		Subscriptions: []mqtt.Subscription{{Filter: "rm/#", QoS: 1}},
		OnMessage:     func(m mqtt.Message) { got <- m }})
	const n = 5
	for i := range n {
		testbus.Publish(t, srv.URL, "rm/key", strconv.Itoa(i), 1, false)
	}
	// QoS 0 is not subject to the receive maximum: it overtakes the rest.
	testbus.Publish(t, srv.URL, "rm/marker", "", 0, false)
	var held []mqtt.Message
	for m := receive(t, got); m.Topic != "rm/marker"; m = receive(t, got) {
		held = append(held, m)
	}
	if len(held) != 2 {
		t.Fatalf("%d messages before the marker, want 2", len(held))
	}
	for i := range n {
		if i == len(held) {
			held = append(held, receive(t, got))
		}
		if p := string(held[i].Payload); p != strconv.Itoa(i) {
			t.Fatalf("message %d: %q", i, p)
		}
		if err := held[i].Ack(); err != nil {
			t.Fatal(err)
		}
	}
}

// allowAll lets every client in (mochi's own allow hook pulls in a YAML
// library for its ledger).
type allowAll struct{ mochi.HookBase }

func (allowAll) ID() string { return "allow-all" }
func (allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}
func (allowAll) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }
func (allowAll) OnACLCheck(*mochi.Client, string, bool) bool              { return true }

// ws:// carries MQTT in websocket messages, packets larger than one write
// included, and Kill works on it as on TCP.
func TestWebsocket(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", testbus.FreePort(t))
	srv := mochi.New(&mochi.Options{Logger: testbus.Quiet()})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewWebsocket(listeners.Config{ID: "ws", Address: addr})); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	got := make(chan mqtt.Message, 10)
	c := testbus.Connect(t, mqtt.Options{Server: &url.URL{Scheme: "ws", Host: addr, Path: "/mqtt"}, ClientID: "ws", Keepalive: time.Minute,
		Subscriptions: []mqtt.Subscription{{Filter: "ws/#", QoS: 1}},
		OnMessage:     func(m mqtt.Message) { got <- m }})
	big := bytes.Repeat([]byte("0123456789abcdef"), 20000)
	for round := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.Publish(ctx, "ws/big", big, 1, false)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if m := receive(t, got); !bytes.Equal(m.Payload, big) {
			t.Fatalf("round %d: payload of %d bytes garbled", round, len(m.Payload))
		}
		c.Kill()
		await(t, c)
	}
}
