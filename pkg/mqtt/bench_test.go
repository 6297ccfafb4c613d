package mqtt_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
)

// BenchmarkManualAckBurst sends a burst of 5,000 QoS 1 messages (as fast as
// the server takes them) to a subscriber that acknowledges them in batches
// of up to 512, the way a worker acknowledges keys once it has installed a
// batch (install: a pause per batch, standing in for the kernel work). It
// reports how many arrived (Mosquitto drops what exceeds its queue), how
// fast, and the most messages the subscriber held unacknowledged at once,
// for Mosquitto's defaults and wider in-flight limits.
func BenchmarkManualAckBurst(b *testing.B) {
	const burst, batch, publishers = 5000, 512, 64
	type config struct {
		name    string
		conf    string        // mosquitto.conf lines
		rm      uint16        // the subscriber's receive maximum (0: not sent)
		install time.Duration // per batch
	}
	var cases []config
	for _, install := range []time.Duration{0, 10 * time.Millisecond} {
		for _, c := range []config{
			{"defaults", "max_inflight_messages 20\nmax_queued_messages 1000", 0, 0},
			{"inflight_1000", "max_inflight_messages 1000\nmax_queued_messages 1000", 0, 0},
			{"inflight_0", "max_inflight_messages 0\nmax_queued_messages 1000", 0, 0},
			{"defaults_receive_max_5000", "max_inflight_messages 20\nmax_queued_messages 1000", 5000, 0},
		} {
			c.install = install
			c.name += "/install_" + install.String()
			cases = append(cases, c)
		}
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			srv := testbus.MosquittoWith(b, bc.conf)
			got := make(chan mqtt.Message, 65536)
			testbus.Connect(b, mqtt.Options{Server: srv.URL, ClientID: "bench-sub", Keepalive: time.Minute,
				ManualAck: true, ReceiveMaximum: bc.rm,
				Subscriptions: []mqtt.Subscription{{Filter: "burst/#", QoS: 1}},
				OnMessage:     func(m mqtt.Message) { got <- m }})
			pub := testbus.Connect(b, mqtt.Options{Server: srv.URL, ClientID: "bench-pub", Keepalive: time.Minute})
			ctx := context.Background()
			payload := []byte("TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=")

			var delivered, maxUnacked int
			var elapsed time.Duration
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				var next atomic.Int64
				var wg sync.WaitGroup
				for range publishers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= burst {
							if err := pub.Publish(ctx, "burst/ffmuc_welt", payload, 1, false); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				// Acknowledge in batches until all arrived, or nothing
				// more comes: the server dropped the rest.
				n := 0
				for n < burst {
					var ms []mqtt.Message
					select {
					case m := <-got:
						ms = append(ms, m)
					case <-time.After(2 * time.Second):
					}
					if len(ms) == 0 {
						break
					}
				drain:
					for len(ms) < batch {
						select {
						case m := <-got:
							ms = append(ms, m)
						default:
							break drain
						}
					}
					maxUnacked = max(maxUnacked, len(ms))
					time.Sleep(bc.install)
					for _, m := range ms {
						if err := m.Ack(); err != nil {
							b.Fatal(err)
						}
					}
					n += len(ms)
				}
				wg.Wait()
				if n == burst {
					elapsed += time.Since(start)
				} else {
					elapsed += time.Since(start) - 2*time.Second
				}
				delivered += n
			}
			b.StopTimer()
			b.ReportMetric(float64(delivered)/float64(b.N), "delivered/burst")
			b.ReportMetric(float64(delivered)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(float64(maxUnacked), "max_unacked")
		})
	}
}
