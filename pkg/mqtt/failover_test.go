package mqtt_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/config"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
)

// A client with fallbacks moves to the next server when its server goes
// away, renews its subscriptions there, stays there while that connection
// lasts, and tries its first server again on the next connection.
func TestFailover(t *testing.T) {
	for _, kind := range testbus.Kinds {
		t.Run(kind.Name, func(t *testing.T) {
			first, second := kind.Start(t), kind.Start(t)
			got := make(chan mqtt.Message, 10)
			ready := make(chan struct{}, 10)
			c := testbus.Connect(t, mqtt.Options{Server: first.URL, Fallbacks: []*url.URL{second.URL},
				ClientID: "failover", Keepalive: 2 * time.Second, Persistent: true, SessionExpiry: time.Hour,
				Subscriptions: []mqtt.Subscription{{Filter: "test/#", QoS: 1}},
				OnMessage:     func(m mqtt.Message) { got <- m },
				OnReady:       func(context.Context) { ready <- struct{}{} }})
			awaitReady(t, ready)
			onServer(t, c, first)
			testbus.Publish(t, first.URL, "test/first", "1", 1, false)
			if m := receive(t, got); m.Topic != "test/first" {
				t.Fatalf("got %s", m.Topic)
			}

			first.Stop()
			awaitReady(t, ready) // OnReady again: the worker announces itself on the new server
			onServer(t, c, second)
			testbus.Publish(t, second.URL, "test/second", "2", 1, false)
			if m := receive(t, got); m.Topic != "test/second" {
				t.Fatalf("got %s", m.Topic)
			}

			// Back again, the first server is used from the next connection on.
			first.Start()
			onServer(t, c, second)
			c.Kill()
			awaitReady(t, ready)
			onServer(t, c, first)
			testbus.Publish(t, first.URL, "test/back", "3", 1, false)
			if m := receive(t, got); m.Topic != "test/back" {
				t.Fatalf("got %s", m.Topic)
			}
		})
	}
}

// A server that refuses connections is skipped at start-up too.
func TestFailoverAtStart(t *testing.T) {
	live := testbus.Mosquitto(t)
	dead := &url.URL{Scheme: "mqtt", Host: fmt.Sprintf("127.0.0.1:%d", testbus.FreePort(t))}
	c := testbus.Connect(t, mqtt.Options{Server: dead, Fallbacks: []*url.URL{live.URL}, ClientID: "skip-dead", Keepalive: 5 * time.Second})
	onServer(t, c, live)
}

// TLS settings need at least one TLS server; plain fallbacks may sit
// beside it (config check warns about that).
func TestFallbackTLSCheck(t *testing.T) {
	plain := &url.URL{Scheme: "mqtt", Host: "127.0.0.1:1"}
	secure := &url.URL{Scheme: "tls", Host: "127.0.0.1:2"}
	c := mqtt.New(mqtt.Options{Server: plain, Fallbacks: []*url.URL{plain}, TLS: &tls.Config{}})
	if err := c.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "no server URL uses TLS") {
		t.Errorf("TLS with plain servers only: %v", err)
	}
	c = mqtt.New(mqtt.Options{Server: plain, Fallbacks: []*url.URL{secure}, TLS: &tls.Config{}, Logger: testbus.Quiet()})
	if err := c.Start(context.Background()); err != nil {
		t.Errorf("TLS with a TLS fallback: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Close(ctx)
}

// OptionsFromConfig: the first broker_url is the server, the rest are the
// fallbacks in order, and TLS settings come with any TLS server.
func TestOptionsFromConfigList(t *testing.T) {
	cfg := &config.Config{MQTT: config.MQTT{BrokerURLs: []string{"m1.example.net", "tls://m2.example.net:8883", "ws://m3.example.net/mqtt"}, Port: 1883, Keepalive: 5}}
	o, err := mqtt.OptionsFromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var fallbacks []string
	for _, u := range o.Fallbacks {
		fallbacks = append(fallbacks, u.String())
	}
	if o.Server.String() != "mqtt://m1.example.net:1883" || strings.Join(fallbacks, " ") != "tls://m2.example.net:8883 ws://m3.example.net:1883/mqtt" || o.TLS == nil {
		t.Errorf("server %s, fallbacks %v, TLS %v", o.Server, fallbacks, o.TLS)
	}
	cfg.MQTT.BrokerURLs = []string{"m1.example.net"}
	if o, err := mqtt.OptionsFromConfig(cfg); err != nil || len(o.Fallbacks) != 0 || o.TLS != nil {
		t.Errorf("one server: %+v, %v", o, err)
	}
}

func awaitReady(t *testing.T, ready <-chan struct{}) {
	t.Helper()
	select {
	case <-ready:
	case <-time.After(15 * time.Second):
		t.Fatal("no (re)connection within 15 s")
	}
}

func onServer(t *testing.T, c *mqtt.Client, want *testbus.Server) {
	t.Helper()
	if got := c.ConnectedServer(); got == nil || got.String() != want.URL.String() {
		t.Fatalf("connected to %v, want %s", got, want.URL)
	}
}
