package mqtt_test

import (
	"context"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
)

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
				OnReady:       func(context.Context, *mqtt.Client) { ready <- struct{}{} }})
			<-ready

			srv.Stop()
			deadline := time.Now().Add(5 * time.Second)
			for c.Connected() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if c.Connected() {
				t.Fatal("client still reports a connection to a stopped server")
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if err := c.Publish(ctx, "test/x", []byte("x"), 1, false); err == nil {
				t.Error("publish while down succeeded")
			}
			cancel()

			srv.Start()
			select {
			case <-ready:
			case <-time.After(15 * time.Second):
				t.Fatal("no reconnection")
			}
			testbus.Publish(t, srv.URL, "test/after", "hello", 1, false)
			select {
			case m := <-got:
				if m.Topic != "test/after" || string(m.Payload) != "hello" {
					t.Errorf("got %s %q", m.Topic, m.Payload)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("subscription not renewed after reconnect")
			}
			if c.Connects() < 2 {
				t.Errorf("connects = %d", c.Connects())
			}
		})
	}
}

func TestPublishBeforeStart(t *testing.T) {
	c := mqtt.New(mqtt.Options{})
	if err := c.Publish(context.Background(), "a", nil, 1, false); err != mqtt.ErrNotConnected {
		t.Fatalf("err = %v", err)
	}
	if err := c.Start(context.Background()); err == nil {
		t.Fatal("Start without server succeeded")
	}
}
