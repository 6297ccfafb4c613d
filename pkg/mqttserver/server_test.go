package mqttserver_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/mqttserver"
)

func TestCredentialsEnforced(t *testing.T) {
	srv, err := mqttserver.Start(mqttserver.Options{Listen: "127.0.0.1:0", Username: "wgkex", Password: "s3cret", Logger: testbus.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	u := &url.URL{Scheme: "mqtt", Host: srv.Addr().String()}

	for _, tc := range []struct{ user, pass string }{{"", ""}, {"wgkex", "wrong"}, {"other", "s3cret"}} {
		c := mqtt.New(mqtt.Options{Server: u, ClientID: "intruder", Username: tc.user, Password: tc.pass, Logger: testbus.Quiet()})
		if err := c.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := c.AwaitConnection(ctx); err == nil {
			t.Errorf("%q/%q admitted", tc.user, tc.pass)
		}
		cancel()
		c.Close(context.Background())
	}
	testbus.Connect(t, mqtt.Options{Server: u, ClientID: "worker", Username: "wgkex", Password: "s3cret"})
}

func TestRetainedAndPersistentSession(t *testing.T) {
	srv := testbus.Embedded(t)
	testbus.Publish(t, srv.URL, "wireguard-worker/gw/status", "1", 1, true)
	sub := testbus.Subscribe(t, srv.URL, "wireguard-worker/+/status")
	m := sub.Wait(t, 5*time.Second, func(mqtt.Message) bool { return true })
	if string(m.Payload) != "1" || !m.Retained {
		t.Errorf("retained status: %q retained=%v", m.Payload, m.Retained)
	}

	// A persistent session gets what was published while it was away.
	got := make(chan string, 10)
	o := mqtt.Options{Server: srv.URL, ClientID: "persistent-worker", Persistent: true, SessionExpiry: 24 * time.Hour,
		Subscriptions: []mqtt.Subscription{{Filter: "wireguard/+/+", QoS: 1}},
		OnMessage:     func(m mqtt.Message) { got <- string(m.Payload) }}
	c := testbus.Connect(t, o)
	c.Close(context.Background())
	testbus.Publish(t, srv.URL, "wireguard/ffmuc_welt/all", "while-away", 1, false)
	testbus.Connect(t, o)
	select {
	case p := <-got:
		if p != "while-away" {
			t.Errorf("got %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("message published while away was not delivered")
	}
}
