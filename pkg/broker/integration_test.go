package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

const nodeKey = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="

// startBroker runs a Broker on a real MQTT connection behind a real HTTP server.
func startBroker(t testing.TB, server *url.URL, weights map[string]int) (*Broker, *httptest.Server) {
	t.Helper()
	return startBrokerWith(t, server, weights, nil)
}

// startBrokerWith is startBroker with more options set by more.
func startBrokerWith(t testing.TB, server *url.URL, weights map[string]int, more func(*Options)) (*Broker, *httptest.Server) {
	t.Helper()
	var b *Broker
	o := mqtt.Options{Server: server, ClientID: fmt.Sprintf("broker-%d", time.Now().UnixNano()), Keepalive: 5 * time.Second, Logger: testbus.Quiet(),
		OnMessage: func(m mqtt.Message) { b.HandleMessage(m.Topic, m.Payload) }}
	for _, f := range Subscriptions() {
		o.Subscriptions = append(o.Subscriptions, mqtt.Subscription{Filter: f, QoS: 1})
	}
	client := mqtt.New(o)
	bo := Options{
		Domains: []string{"ffmuc_welt", "ffmuc_nord"},
		Weight: func(w string) int {
			if n, ok := weights[w]; ok {
				return n
			}
			return 1
		},
		Publisher:      client,
		KeyQoS:         1,
		PublishTimeout: 2 * time.Second,
		Logger:         testbus.Quiet(),
	}
	if more != nil {
		more(&bo)
	}
	b = New(bo)
	testbus.Start(t, client)
	hs := httptest.NewServer(b)
	t.Cleanup(hs.Close)
	return b, hs
}

func post(t *testing.T, base, path, domain, key string) (int, map[string]any) {
	t.Helper()
	body := fmt.Sprintf(`{"domain":%q,"public_key":%q}`, domain, key)
	resp, err := http.Post(base+path, "application/x-www-form-urlencoded", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, m
}

// port is Endpoint.Port of a v2 reply, "" when there is none.
func port(m map[string]any) string {
	ep, _ := m["Endpoint"].(map[string]any)
	p, _ := ep["Port"].(string)
	return p
}

func workerData(port int) string {
	return fmt.Sprintf(`{"ExternalAddress":"gw%d.ext.example.net","Port":%d,"PublicKey":"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=","LinkAddress":"fe80::%x"}`, port, port, port)
}

// announce publishes what a worker publishes, retained.
func announce(t testing.TB, server *url.URL, worker, domain string, port, peers int) {
	testbus.Publish(t, server, wgkex.DataTopic(worker, domain), workerData(port), 1, true)
	testbus.Publish(t, server, wgkex.ConnectedPeersTopic(domain, worker), fmt.Sprint(peers), 1, true)
	testbus.Publish(t, server, wgkex.StatusTopic(worker), "1", 1, true)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBrokerOnRealBus(t *testing.T) {
	for _, kind := range testbus.Kinds {
		t.Run(kind.Name, func(t *testing.T) {
			srv := kind.Start(t)
			// Retained worker state exists before the broker starts.
			announce(t, srv.URL, "gw1", "ffmuc_welt", 40001, 20)
			announce(t, srv.URL, "gw2", "ffmuc_welt", 40002, 19)

			sub := testbus.Subscribe(t, srv.URL, "wireguard/+/+")
			// A Python worker subscribes with QoS 0.
			py := make(chan mqtt.Message, 10)
			testbus.Connect(t, mqtt.Options{Server: srv.URL, ClientID: "python-worker", Keepalive: 5 * time.Second,
				Subscriptions: []mqtt.Subscription{{Filter: "wireguard/ffmuc_welt/+", QoS: 0}},
				OnMessage:     func(m mqtt.Message) { py <- m }})

			b, hs := startBroker(t, srv.URL, nil)

			t.Run("v1 publishes the key", func(t *testing.T) {
				code, m := post(t, hs.URL, "/api/v1/wg/key/exchange", "ffmuc_welt", nodeKey)
				if code != 200 || m["Message"] != "OK" {
					t.Fatalf("v1: %d %v", code, m)
				}
				got := sub.Wait(t, 5*time.Second, func(m mqtt.Message) bool { return m.Topic == "wireguard/ffmuc_welt/all" })
				if string(got.Payload) != nodeKey || got.QoS != 1 {
					t.Errorf("subscriber got %q qos %d", got.Payload, got.QoS)
				}
				select {
				case m := <-py:
					if string(m.Payload) != nodeKey {
						t.Errorf("QoS 0 subscriber got %q", m.Payload)
					}
				case <-time.After(5 * time.Second):
					t.Error("QoS 0 subscriber got nothing")
				}
			})

			t.Run("v2 returns the retained worker", func(t *testing.T) {
				eventually(t, "retained state of both workers", func() bool {
					snap := b.state.snapshot()
					return len(snap) == 2 && snap[0].Online && snap[1].Online && len(snap[0].Data) == 1 && len(snap[1].Data) == 1 &&
						snap[0].Peers["ffmuc_welt"] == 20 && snap[1].Peers["ffmuc_welt"] == 19
				})
				code, m := post(t, hs.URL, "/api/v2/wg/key/exchange", "ffmuc_welt", nodeKey)
				if code != 200 {
					t.Fatalf("v2: %d %v", code, m)
				}
				ep := m["Endpoint"].(map[string]any)
				if ep["Address"] != "gw40002.ext.example.net" || ep["Port"] != "40002" || ep["LinkAddress"] != "fe80::9c42" {
					t.Errorf("v2 endpoint %v, want gw2 (fewer peers)", ep)
				}
				// Both now have 20; the tie goes to gw1, then alternates.
				_, m = post(t, hs.URL, "/api/v2/wg/key/exchange", "ffmuc_welt", nodeKey)
				if port(m) != "40001" {
					t.Errorf("second choice %v, want gw1", m)
				}
			})

			t.Run("status 0 takes a worker out", func(t *testing.T) {
				testbus.Publish(t, srv.URL, wgkex.StatusTopic("gw2"), "0", 1, true)
				eventually(t, "gw2 offline", func() bool {
					for _, w := range b.state.snapshot() {
						if w.Name == "gw2" {
							return !w.Online
						}
					}
					return false
				})
				for i := 0; i < 5; i++ {
					_, m := post(t, hs.URL, "/api/v2/wg/key/exchange", "ffmuc_welt", nodeKey)
					if port(m) != "40001" {
						t.Fatalf("offline gw2 chosen: %v", m)
					}
				}
			})

			t.Run("will message takes a worker out", func(t *testing.T) {
				testbus.Publish(t, srv.URL, wgkex.ConnectedPeersTopic("ffmuc_nord", "gw3"), "0", 1, true)
				testbus.Publish(t, srv.URL, wgkex.DataTopic("gw3", "ffmuc_nord"), workerData(40003), 1, true)
				w := testbus.Connect(t, mqtt.Options{Server: srv.URL, ClientID: "gw3", Keepalive: 5 * time.Second,
					Will: &mqtt.Will{Topic: wgkex.StatusTopic("gw3"), Payload: []byte("0"), QoS: 1, Retain: true}})
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := w.Publish(ctx, wgkex.StatusTopic("gw3"), []byte("1"), 1, true); err != nil {
					t.Fatal(err)
				}
				eventually(t, "gw3 chosen", func() bool { n, ok := b.state.best("ffmuc_nord"); return ok && n == "gw3" })
				w.Kill()
				eventually(t, "gw3 gone after its will", func() bool { _, ok := b.state.best("ffmuc_nord"); return !ok })
				code, m := post(t, hs.URL, "/api/v2/wg/key/exchange", "ffmuc_nord", nodeKey)
				if code != 400 || !strings.Contains(fmt.Sprint(m), "no gateway online") {
					t.Errorf("v2 without gateway: %d %v", code, m)
				}
			})

			t.Run("bus down answers 503", func(t *testing.T) {
				srv.Stop()
				eventually(t, "503", func() bool {
					code, _ := post(t, hs.URL, "/api/v1/wg/key/exchange", "ffmuc_welt", nodeKey)
					return code == 503
				})
				code, m := post(t, hs.URL, "/api/v2/wg/key/exchange", "ffmuc_welt", nodeKey)
				if code != 503 || !strings.Contains(fmt.Sprint(m), "MQTT") {
					t.Errorf("v2 with bus down: %d %v", code, m)
				}
			})
		})
	}
}

// Made-up worker names retained on the bus come back whenever the broker
// (re)starts: they must neither displace a listed gateway nor make v2 fail,
// and the broker's table stays bounded.
func TestRetainedJunkAtStart(t *testing.T) {
	const junk = 5000
	for _, kind := range testbus.Kinds {
		t.Run(kind.Name, func(t *testing.T) {
			srv := kind.Start(t)
			pub := testbus.Connect(t, mqtt.Options{Server: srv.URL, ClientID: "junk", Keepalive: 5 * time.Second})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i := range junk {
				name := fmt.Sprintf("junk%04d", i)
				pub.Publish(ctx, wgkex.StatusTopic(name), []byte("1"), 0, true)
				pub.Publish(ctx, wgkex.ConnectedPeersTopic("ffmuc_welt", name), []byte("0"), 0, true)
			}
			// In order after the junk, and acknowledged: all of it is retained.
			announce(t, srv.URL, "gw1", "ffmuc_welt", 40001, 50)

			for _, knownOnly := range []bool{false, true} {
				t.Run(fmt.Sprintf("known_workers_only=%v", knownOnly), func(t *testing.T) {
					reg := prometheus.NewRegistry()
					b, hs := startBrokerWith(t, srv.URL, nil, func(o *Options) {
						o.KnownWorkers, o.KnownWorkersOnly, o.Registry, o.Gatherer = []string{"GW1"}, knownOnly, reg, reg
					})
					ignored := func() float64 {
						fams, err := reg.Gather()
						if err != nil {
							t.Fatal(err)
						}
						n := 0.0
						for _, f := range fams {
							if f.GetName() == "wgkex_broker_worker_messages_ignored_total" {
								for _, m := range f.GetMetric() {
									n += m.GetCounter().GetValue()
								}
							}
						}
						return n
					}
					// Every junk message taken or counted, and gw1 ready.
					want := 2.0 * (junk - 4096)
					if knownOnly {
						want = 2 * junk
					}
					eventually(t, "the retained state", func() bool {
						w, ok := b.state.best("ffmuc_welt")
						return ok && w == "gw1" && ignored() == want
					})
					if n := len(b.state.snapshot()); knownOnly && n != 1 || n > 1+4096 {
						t.Errorf("%d workers in the table", n)
					}
					for range 3 {
						if code, m := post(t, hs.URL, "/api/v2/wg/key/exchange", "ffmuc_welt", nodeKey); code != 200 || port(m) != "40001" {
							t.Fatalf("v2 with junk on the bus: %d %v", code, m)
						}
					}
				})
			}
		})
	}
}
