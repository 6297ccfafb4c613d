package worker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/internal/netns"
	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// BenchmarkBurst10k publishes 10,000 distinct keys on one domain to a real
// Mosquitto and times them until every peer, route and FDB entry is in the
// kernel (userspace WireGuard in another process); then measures
// single-key latency, and a metrics and a cleanup pass over the 10,000
// peers. Run it with bench/worker.sh, or: go test ./pkg/worker -run '^$'
// -bench Burst10k. WGKEX_BENCH_BURST sets another burst size, and
// WGKEX_BENCH_MOSQUITTO_CONF adds lines to Mosquitto's configuration (say
// "max_queued_messages 1000\nmax_inflight_messages 20" for its defaults),
// WGKEX_BENCH_RECEIVE_MAXIMUM the worker's receive maximum.
func BenchmarkBurst10k(b *testing.B) {
	if !netns.Run(b) {
		return
	}
	burst := 10000
	if n, err := strconv.Atoi(os.Getenv("WGKEX_BENCH_BURST")); err == nil && n > 0 {
		burst = n
	}
	h := newExternalHost(b)
	clk := &clock{}
	rw := h.startWorker(b, "gw-bench", clk, func(o *Options) {
		if n, err := strconv.Atoi(os.Getenv("WGKEX_BENCH_RECEIVE_MAXIMUM")); err == nil {
			o.ReceiveMaximum = uint16(n)
		}
	})
	defer rw.stop()

	keys := make([]string, burst)
	for i := range keys {
		keys[i] = benchKey(i)
	}
	pub := testbus.Connect(b, mqtt.Options{Server: h.bus.URL, ClientID: "bench-publisher", Keepalive: 30 * time.Second})
	ctx := context.Background()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(burst); i = next.Add(1) - 1 {
				if err := pub.Publish(ctx, wgkex.KeyTopic(liveDomain), []byte(keys[i]), 1, false); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	published := time.Since(start)
	// A key the MQTT server dropped never comes: say how many did.
	for deadline := time.Now().Add(120 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if n, _, _, _ := rw.w.counts(); n >= int64(burst) {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("after 120 s, %d of %d keys installed", n, burst)
		}
	}
	elapsed := time.Since(start)
	s := h.state(b)
	if len(s.peers) != burst || len(s.routes) != burst || len(s.fdb) != burst {
		b.Fatalf("kernel has %d peers, %d routes, %d fdb entries; want %d each", len(s.peers), len(s.routes), len(s.fdb), burst)
	}
	b.ReportMetric(float64(burst)/elapsed.Seconds(), "keys/s")
	b.ReportMetric(elapsed.Seconds(), "burst_s")
	b.ReportMetric(published.Seconds(), "publish_s")
	rw.w.latencies() // forget the burst's queueing latencies

	// Single keys, one at a time: MQTT delivery to all three entries.
	const singles = 200
	for i := 0; i < singles; i++ {
		before, _, _, _ := rw.w.counts()
		if err := pub.Publish(ctx, wgkex.KeyTopic(liveDomain), []byte(benchKey(burst+i)), 1, false); err != nil {
			b.Fatal(err)
		}
		eventually(b, "single key", 5*time.Second, func() bool { n, _, _, _ := rw.w.counts(); return n > before })
	}
	lat := rw.w.latencies()
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "single_p50_ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "single_p99_ms")

	// A metrics pass and a cleanup scan (nothing stale) over 10,200 peers,
	// then a cleanup that removes them all.
	t0 := time.Now()
	rw.w.connectedPeersOf(liveDomain)
	b.ReportMetric(float64(time.Since(t0).Microseconds())/1000, "metrics_pass_ms")
	t0 = time.Now()
	if n := rw.w.cleanup(); n != 0 {
		b.Fatalf("cleanup removed %d fresh peers", n)
	}
	b.ReportMetric(float64(time.Since(t0).Microseconds())/1000, "cleanup_scan_ms")
	clk.Set(4 * time.Hour)
	t0 = time.Now()
	if n := rw.w.cleanup(); n != burst+singles {
		b.Fatalf("cleanup removed %d, want %d", n, burst+singles)
	}
	b.ReportMetric(time.Since(t0).Seconds(), "cleanup_remove_all_s")
	b.ReportMetric(float64(peakRSSKiB())/1024, "peak_rss_MiB")
}

// newExternalHost builds the gateway interfaces with the wgkex binary in
// another process, so that the userspace WireGuard device (which holds
// tens of KiB per peer) does not count in this process's peak RSS.
func newExternalHost(b *testing.B) *host {
	dir := b.TempDir()
	bin := filepath.Join(dir, "wgkex")
	if out, err := exec.Command("go", "build", "-o", bin, "../..").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "dummy-iface", "--config", "../../testdata/minimal.yaml", "--listen-port", "51820", "--log-level", "warn")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	k, wg := netns.Handles(b)
	eventually(b, "interfaces from dummy-iface", 10*time.Second, func() bool {
		_, err1 := wg.Device(ifs.WireGuard)
		_, err2 := k.LinkIndex(ifs.VXLAN)
		return err1 == nil && err2 == nil
	})
	return &host{k: k, wg: wg, bus: testbus.MosquittoWith(b, os.Getenv("WGKEX_BENCH_MOSQUITTO_CONF"))}
}

// benchKey is the i-th of a family of valid, distinct public keys.
func benchKey(i int) string {
	var k [32]byte
	copy(k[:], fmt.Sprintf("wgkex-bench-%020d", i))
	return wgtypes.Key(k).String()
}

// peakRSSKiB is this process's VmHWM: the worker and the publisher (the
// WireGuard device runs in the dummy-iface process).
func peakRSSKiB() int {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var n int
			fmt.Sscanf(strings.TrimPrefix(line, "VmHWM:"), "%d", &n)
			return n
		}
	}
	return 0
}
