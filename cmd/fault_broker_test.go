package cmd_test

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/eventually"
	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
)

// TestBrokerRestartEmbeddedBusLosesNoKey restarts the broker, and with it
// its embedded bus (mqtt.store set), killed or stopped, while keys are
// posted as fast as it answers. A worker-like subscriber with a persistent
// session must receive every key that was answered 200.
func TestBrokerRestartEmbeddedBusLosesNoKey(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test: not run with -short")
	}
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			httpPort, mqttPort := testbus.FreePort(t), testbus.FreePort(t)
			env := []string{
				fmt.Sprintf("WGKEX_MQTT_LISTEN=127.0.0.1:%d", mqttPort),
				"WGKEX_MQTT_STORE=" + filepath.Join(dir, "mqtt.db"),
				"WGKEX_BROKER_RATE_LIMIT_PER_CLIENT=0", "WGKEX_BROKER_RATE_LIMIT_GLOBAL=0",
			}
			b := startBrokerOn(t, httpPort, env...)

			var mu sync.Mutex
			got := map[string]bool{}
			srv := &url.URL{Scheme: "mqtt", Host: fmt.Sprintf("127.0.0.1:%d", mqttPort)}
			sub := mqtt.New(mqtt.Options{Server: srv, ClientID: "wgkex-worker-fault", Keepalive: 5 * time.Second,
				Persistent: true, SessionExpiry: time.Hour, Logger: testbus.Quiet(),
				Subscriptions: []mqtt.Subscription{{Filter: "wireguard/ffmuc_welt/+", QoS: 1}},
				OnMessage: func(m mqtt.Message) {
					mu.Lock()
					got[string(m.Payload)] = true
					mu.Unlock()
				}})
			testbus.Start(t, sub)

			// Post keys from 8 clients until told to stop; record the 200s.
			var okMu sync.Mutex
			var ok []string
			answered := make(chan struct{}, 1<<16)
			ctx, stop := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil {
						key := randomKey()
						resp, err := haClient.Post(fmt.Sprintf("http://127.0.0.1:%d/api/v1/wg/key/exchange", httpPort), "application/json",
							strings.NewReader(`{"domain":"ffmuc_welt","public_key":"`+key+`"}`))
						if err != nil {
							continue // the broker is down: the node tries again later
						}
						resp.Body.Close()
						if resp.StatusCode == 200 {
							okMu.Lock()
							ok = append(ok, key)
							okMu.Unlock()
							select {
							case answered <- struct{}{}:
							default:
							}
						}
					}
				}()
			}
			count := func() int { okMu.Lock(); defer okMu.Unlock(); return len(ok) }
			eventually.True(t, waitTimeout, "500 keys answered before the restart", func() bool { return count() >= 500 })
			before := count()
			b.cmd.Process.Signal(sig)
			<-b.done
			b.done <- nil
			startBrokerOn(t, httpPort, env...)
			eventually.True(t, waitTimeout, "500 more keys answered after the restart", func() bool { return count() >= before+500 })
			stop()
			wg.Wait()

			okMu.Lock()
			want := append([]string(nil), ok...)
			okMu.Unlock()
			var missing []string
			eventually.Within(20*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				missing = missing[:0]
				for _, k := range want {
					if !got[k] {
						missing = append(missing, k)
					}
				}
				return len(missing) == 0
			})
			t.Logf("%s: %d keys answered 200 (%d before the restart), %d not delivered", sig, len(want), before, len(missing))
			if len(missing) > 0 {
				t.Errorf("%d of %d keys answered 200 never reached the subscriber, e.g. %v", len(missing), len(want), missing[:min(3, len(missing))])
			}
		})
	}
}
