package broker

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// namedBroker is a broker wired to the bus as cmd/broker.go wires it: it
// announces itself on every connection and leaves its will.
type namedBroker struct {
	name   string
	b      *Broker
	http   *httptest.Server
	client *mqtt.Client
}

func startNamedBroker(t *testing.T, server *url.URL, name string, weights map[string]int, sticky bool) *namedBroker {
	t.Helper()
	nb := &namedBroker{name: name}
	o := mqtt.Options{Server: server, ClientID: "wgkex-broker-" + name, Keepalive: 5 * time.Second, Logger: testbus.Quiet(),
		Will:      &mqtt.Will{Topic: wgkex.BrokerStatusTopic(name), Payload: []byte(wgkex.StatusOffline), QoS: 1, Retain: true},
		OnMessage: func(m mqtt.Message) { nb.b.HandleMessage(m.Topic, m.Payload) },
		OnReady: func(ctx context.Context) {
			if err := nb.b.Announce(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("%s: announce: %v", name, err)
			}
		}}
	for _, f := range Subscriptions() {
		o.Subscriptions = append(o.Subscriptions, mqtt.Subscription{Filter: f, QoS: 1})
	}
	nb.client = mqtt.New(o)
	nb.b = New(Options{Name: name, Domains: []string{"ffmuc_welt"}, Publisher: nb.client, KeyQoS: 1,
		Weight: func(w string) int {
			if n, ok := weights[w]; ok {
				return n
			}
			return 1
		},
		Sticky: sticky, StickyTolerance: 10, PublishTimeout: 2 * time.Second, Logger: testbus.Quiet()})
	testbus.Start(t, nb.client)
	nb.http = httptest.NewServer(nb.b)
	t.Cleanup(nb.http.Close)
	return nb
}

// status is /api/v1/status of the broker, over HTTP.
func (nb *namedBroker) status(t *testing.T) Status {
	t.Helper()
	resp, err := http.Get(nb.http.URL + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// sees reports whether nb's status lists exactly the brokers in want
// (name -> online), this one marked.
func (nb *namedBroker) sees(t *testing.T, want map[string]bool) bool {
	st := nb.status(t)
	if len(st.Brokers) != len(want) {
		return false
	}
	for _, b := range st.Brokers {
		online, ok := want[b.Name]
		if !ok || b.Online != online || b.ThisBroker != (b.Name == nb.name) {
			return false
		}
	}
	return true
}

// nodeKeys are n valid WireGuard public keys, the same on every run.
func nodeKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		sum := sha256.Sum256([]byte(fmt.Sprint("node", i)))
		keys[i] = base64.StdEncoding.EncodeToString(sum[:])
	}
	return keys
}

// fakeWorkers stand for two workers: their retained announcements, and
// connected_peers republished from what the brokers handed out, as a real
// worker reports the peers that connected to it.
type fakeWorkers struct {
	server *url.URL
	pub    *mqtt.Client
	peers  map[string]int
	ports  map[string]string // Endpoint.Port -> worker
}

func newFakeWorkers(t *testing.T, server *url.URL, start map[string]int) *fakeWorkers {
	t.Helper()
	f := &fakeWorkers{server: server, peers: map[string]int{}, ports: map[string]string{},
		pub: testbus.Connect(t, mqtt.Options{Server: server, ClientID: "fake-workers", Keepalive: 5 * time.Second})}
	port := 40001
	for w, n := range start {
		announce(t, server, w, "ffmuc_welt", port, n)
		f.peers[w] = n
		f.ports[fmt.Sprint(port)] = w
		port++
	}
	return f
}

// report publishes every worker's count and waits until the brokers hold it.
func (f *fakeWorkers) report(t *testing.T, brokers ...*namedBroker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for w, n := range f.peers {
		if err := f.pub.Publish(ctx, wgkex.ConnectedPeersTopic("ffmuc_welt", w), []byte(fmt.Sprint(n)), 1, true); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the brokers to hold the reported counts", func() bool {
		for _, nb := range brokers {
			for _, w := range nb.b.state.snapshot() {
				if w.Peers["ffmuc_welt"] != f.peers[w.Name] {
					return false
				}
			}
		}
		return true
	})
}

// Two brokers and two workers on one Mosquitto: the brokers count each
// other, requests answered by both in turn keep the weighted split, and a
// broker that is cut off or stops is counted out.
func TestTwoBrokersOnMosquitto(t *testing.T) {
	srv := testbus.Mosquitto(t)
	weights := map[string]int{"gw1": 1, "gw2": 2}
	workers := newFakeWorkers(t, srv.URL, map[string]int{"gw1": 40, "gw2": 0}) // gw2 starts empty
	a := startNamedBroker(t, srv.URL, "broker-a", weights, false)
	link, viaLink := newTCPLink(t, srv.URL)
	b := startNamedBroker(t, viaLink, "broker-b", weights, false)

	both := map[string]bool{"broker-a": true, "broker-b": true}
	eventually(t, "the brokers to see each other", func() bool { return a.sees(t, both) && b.sees(t, both) })
	eventually(t, "the workers", func() bool {
		_, okA := a.b.state.best("ffmuc_welt")
		_, okB := b.b.state.best("ffmuc_welt")
		return okA && okB
	})

	t.Run("alternate requests keep the weighted split", func(t *testing.T) {
		const requests, reportEvery = 300, 20
		for i, key := range nodeKeys(requests) {
			nb := []*namedBroker{a, b}[i%2]
			code, m := post(t, nb.http.URL, "/api/v2/wg/key/exchange", "ffmuc_welt", key)
			w, ok := workers.ports[port(m)]
			if code != 200 || !ok {
				t.Fatalf("request %d to %s: %d %v", i, nb.name, code, m)
			}
			workers.peers[w]++
			if i == 0 { // each broker counts a choice once per broker online
				for _, s := range a.b.state.snapshot() {
					if s.Name == w && s.Peers["ffmuc_welt"] != workers.peers[w]+1 {
						t.Fatalf("%s counted %d after one choice, want %d", a.name, s.Peers["ffmuc_welt"], workers.peers[w]+1)
					}
				}
			}
			if i%reportEvery == reportEvery-1 {
				workers.report(t, a, b)
			}
		}
		total := workers.peers["gw1"] + workers.peers["gw2"]
		share := float64(workers.peers["gw1"]) / float64(total)
		t.Logf("after %d requests alternating between two brokers: %v (gw1 %.2f%% of the peers, target 33.33%%)", requests, workers.peers, 100*share)
		if dev := math.Abs(share-1.0/3) / (1.0 / 3); dev > 0.05 {
			t.Errorf("gw1 has %.2f%% of the peers, %.1f%% off its weighted share of 1/3", 100*share, 100*dev)
		}
	})

	t.Run("a broker cut off is counted out by its will", func(t *testing.T) {
		link.cut() // and it cannot reconnect, as after a crash
		eventually(t, "broker-a to see broker-b offline", func() bool {
			return a.sees(t, map[string]bool{"broker-a": true, "broker-b": false})
		})
	})

	t.Run("a stopped broker withdraws", func(t *testing.T) {
		c := startNamedBroker(t, srv.URL, "broker-c", weights, false)
		eventually(t, "broker-a to see broker-c", func() bool {
			return a.sees(t, map[string]bool{"broker-a": true, "broker-b": false, "broker-c": true})
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.b.Withdraw(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.client.Close(ctx); err != nil {
			t.Fatal(err)
		}
		gone := map[string]bool{"broker-a": true, "broker-b": false, "broker-c": false}
		eventually(t, "broker-c offline", func() bool { return a.sees(t, gone) })
		// A broker started now learns of the others from the retained status.
		d := startNamedBroker(t, srv.URL, "broker-d", weights, false)
		gone["broker-d"] = true
		eventually(t, "broker-d to see the others", func() bool { return d.sees(t, gone) })
	})
}

// tcpLink forwards connections to an MQTT server until cut, which drops
// them and refuses new ones, as a crash or a network failure would.
type tcpLink struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	isCut bool
}

func newTCPLink(t *testing.T, to *url.URL) (*tcpLink, *url.URL) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &tcpLink{ln: ln}
	t.Cleanup(l.cut)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", to.Host)
			l.mu.Lock()
			if err != nil || l.isCut {
				l.mu.Unlock()
				c.Close()
				if s != nil {
					s.Close()
				}
				continue
			}
			l.conns = append(l.conns, c, s)
			l.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
	return l, &url.URL{Scheme: to.Scheme, Host: ln.Addr().String()}
}

func (l *tcpLink) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.isCut = true
	l.ln.Close()
	for _, c := range l.conns {
		c.Close()
	}
}

// Two sticky brokers hand each node the same gateway, whichever it asks.
func TestTwoStickyBrokersOnMosquitto(t *testing.T) {
	srv := testbus.Mosquitto(t)
	weights := map[string]int{"gw1": 1, "gw2": 2}
	workers := newFakeWorkers(t, srv.URL, map[string]int{"gw1": 100, "gw2": 200})
	a := startNamedBroker(t, srv.URL, "broker-a", weights, true)
	b := startNamedBroker(t, srv.URL, "broker-b", weights, true)
	both := map[string]bool{"broker-a": true, "broker-b": true}
	eventually(t, "the brokers to see each other", func() bool { return a.sees(t, both) && b.sees(t, both) })
	workers.report(t, a, b)
	if st := a.status(t); st.Selection != "sticky" {
		t.Errorf("selection %q", st.Selection)
	}

	got := map[string]int{}
	for i, key := range nodeKeys(40) {
		first, second := []*namedBroker{a, b}[i%2], []*namedBroker{b, a}[i%2]
		code1, m1 := post(t, first.http.URL, "/api/v2/wg/key/exchange", "ffmuc_welt", key)
		code2, m2 := post(t, second.http.URL, "/api/v2/wg/key/exchange", "ffmuc_welt", key)
		if code1 != 200 || code2 != 200 || port(m1) != port(m2) {
			t.Fatalf("node %d: %s answers %d %s, %s answers %d %s", i, first.name, code1, port(m1), second.name, code2, port(m2))
		}
		w := workers.ports[port(m1)]
		got[w]++
		workers.peers[w]++ // one node, one peer, however often it asks
		if i%5 == 4 {
			workers.report(t, a, b)
		}
	}
	t.Logf("40 nodes, each asking both sticky brokers: %v", got)
	if got["gw1"] == 0 || got["gw2"] == 0 {
		t.Errorf("one gateway got every node: %v", got)
	}
}
