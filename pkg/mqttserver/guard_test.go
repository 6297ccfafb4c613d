package mqttserver_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

func eachMode(t *testing.T, test func(t *testing.T, store string)) {
	for _, mode := range []string{"memory", "store"} {
		t.Run(mode, func(t *testing.T) {
			store := ""
			if mode == "store" {
				store = filepath.Join(t.TempDir(), "mqtt.db")
			}
			test(t, store)
		})
	}
}

// A worker whose connection drops again and again while keys are published
// at full speed gets every key the server acknowledged. It publishes its
// own QoS 1 messages after each reconnect, as a worker announces itself, so
// that its packet ids meet those of the messages the server resends. (mochi
// alone loses keys here: those routed while a reconnect takes the session
// over, see guard.go.)
func TestReconnectUnderLoadLosesNothing(t *testing.T) {
	eachMode(t, func(t *testing.T, store string) {
		addr := freeAddr(t)
		srv := startInProcess(t, addr, store)
		defer srv.Close()
		got := newCollector()
		worker := dial(t, addr, "worker-gw1", peerOptions{persistent: true, got: got})
		worker.subscribe(t, "wireguard/+/all")
		broker := dial(t, addr, "broker", peerOptions{})

		const step, reconnects = 1500, 8
		var (
			acked = newAckedKeys()
			next  atomic.Int64
			stop  = make(chan struct{})
			wg    sync.WaitGroup
		)
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					key := fmt.Sprintf("key-%07d", next.Add(1))
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					resp, err := broker.Publish(ctx, &paho.Publish{Topic: keyTopic, QoS: 1, Payload: []byte(key)})
					cancel()
					if err != nil || resp.ReasonCode >= 0x80 {
						t.Errorf("publish %s: %v %v", key, err, resp)
						return
					}
					acked.add(key)
				}
			}()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for i := 1; i <= reconnects; i++ {
			if !acked.reach(ctx, i*step) {
				t.Fatalf("publishing stalled at %d", acked.count())
			}
			worker.abort()
			worker = dial(t, addr, "worker-gw1", peerOptions{persistent: true, got: got})
			if !worker.sessionPresent {
				t.Fatal("session lost on reconnect")
			}
			w := worker
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 20 {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					w.Publish(ctx, &paho.Publish{Topic: "wireguard-worker/gw1/status", QoS: 1, Payload: fmt.Appendf(nil, "%d", j)})
					cancel()
				}
			}()
		}
		close(stop)
		wg.Wait()
		got.await(t, acked.all(), 30*time.Second)
	})
}

// A client with a small receive maximum gets everything, and what it has
// not acknowledged is sent again after a reconnect. (mochi alone stops
// delivering after twice the receive maximum, see guard.go.)
func TestSmallReceiveMaximum(t *testing.T) {
	eachMode(t, func(t *testing.T, store string) {
		addr := freeAddr(t)
		srv := startInProcess(t, addr, store)
		defer srv.Close()
		first := newCollector()
		worker := dial(t, addr, "worker-gw1", peerOptions{persistent: true, manualAck: true, receiveMaximum: 10, got: first})
		worker.subscribe(t, "wireguard/+/all")
		broker := dial(t, addr, "broker", peerOptions{})
		want := payloads("held", 40)
		publishAll(t, broker, keyTopic, want, false)
		first.await(t, want, 10*time.Second)
		acked := map[string]bool{}
		for _, p := range first.received()[:5] {
			if err := worker.Ack(p); err != nil {
				t.Fatal(err)
			}
			acked[string(p.Payload)] = true
		}
		worker.abort()

		again := newCollector()
		dial(t, addr, "worker-gw1", peerOptions{persistent: true, receiveMaximum: 10, got: again})
		var rest []string
		for _, w := range want {
			if !acked[w] {
				rest = append(rest, w)
			}
		}
		again.await(t, rest, 10*time.Second) // the acknowledged ones may come again: paho sends acknowledgements late

		more := payloads("stream", 500)
		publishAll(t, broker, keyTopic, more, false)
		again.await(t, more, 10*time.Second)
	})
}

// A client's own packet ids do not clash with those of the messages the
// server has in flight to it: its QoS 1 publishes do not cost it those
// messages (they are sent again after a reconnect), and its SUBSCRIBE is
// not refused. (mochi alone deletes the messages and refuses the
// subscription, see guard.go.)
func TestClientPacketIDsDoNotClash(t *testing.T) {
	eachMode(t, func(t *testing.T, store string) {
		addr := freeAddr(t)
		srv := startInProcess(t, addr, store)
		defer srv.Close()
		first := newCollector()
		worker := dial(t, addr, "worker-gw1", peerOptions{persistent: true, manualAck: true, got: first})
		worker.subscribe(t, "wireguard/+/all")
		broker := dial(t, addr, "broker", peerOptions{})
		want := payloads("unacked", 10)
		publishAll(t, broker, keyTopic, want, false)
		first.await(t, want, 10*time.Second) // and never acknowledged

		// The worker subscribes once more and announces itself; its packet
		// ids start at 1 too.
		worker.subscribe(t, "wireguard/ffmuc_welt/+")
		publishAll(t, worker, "wireguard-worker/gw1/status", payloads("status", 10), true)
		worker.abort()

		again := newCollector()
		dial(t, addr, "worker-gw1", peerOptions{persistent: true, got: again})
		again.await(t, want, 10*time.Second)
	})
}
