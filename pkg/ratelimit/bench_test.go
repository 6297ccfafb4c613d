package ratelimit

import (
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

var noContent = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusNoContent)
})

// remoteAddrs are n distinct clients as RemoteAddr strings, half IPv6 /64s.
func remoteAddrs(n int) []string {
	out := make([]string, n)
	for i := range out {
		if i%2 == 0 {
			out[i] = "[" + v6(i).String() + "]:40000"
		} else {
			out[i] = v4(i).String() + ":40000"
		}
	}
	return out
}

// BenchmarkMiddleware is requests per second through Wrap around a handler
// that does nothing, with the limiter off and on; "passing" limits are high
// enough that every request is served, so the cost is the bookkeeping.
func BenchmarkMiddleware(b *testing.B) {
	passing := Config{PerClient: 1e9, PerClientBurst: 1e9, Global: 1e12, GlobalBurst: 1e9}
	distinct := remoteAddrs(1 << 20) // over 10× the default MaxClients
	for _, bc := range []struct {
		name  string
		cfg   Config
		addrs []string
	}{
		{"off", Config{PerClient: -1, Global: -1}, distinct},
		{"on/shared_address", passing, []string{"198.51.100.1:40000"}},
		{"on/distinct_addresses", passing, distinct},
		{"on/distinct_addresses_defaults", Config{Global: 1e12, GlobalBurst: 1e9}, distinct},
		{"on/shared_address_refused", Config{}, []string{"198.51.100.1:40000"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l := mustNew(b, bc.cfg)
			h := l.Wrap(noContent)
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				r, _ := http.NewRequest(http.MethodPost, "/api/v2/wg/key/exchange", http.NoBody)
				w := &discardWriter{h: http.Header{}}
				// Goroutines start far apart, so that on distinct addresses
				// one never meets a client another has just added.
				i := int(next.Add(1)) * 300_007
				for pb.Next() {
					r.RemoteAddr = bc.addrs[i%len(bc.addrs)]
					i++
					h.ServeHTTP(w, r)
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			if st := l.stats(); bc.name != "off" {
				b.ReportMetric(float64(st.Clients), "clients")
			}
		})
	}
}

// BenchmarkMemory reports the heap the limiter holds with the default
// MaxClients after 100,000, 1,000,000 and 8,000,000 distinct clients (half
// IPv4 addresses, half IPv6 /64s). Run with -benchtime=1x.
func BenchmarkMemory(b *testing.B) {
	for range b.N {
		c := newClock()
		base := heapInuse()
		l := mustNew(b, Config{Global: -1, Now: c.Now})
		for i := range 8_000_000 {
			addr := v6(i)
			if i%2 == 1 {
				addr = v4(i)
			}
			l.admit(addr, c.Now())
			c.Advance(time.Microsecond) // no bucket refills: nothing expires, the bound does the work
			switch i + 1 {
			case 100_000:
				b.ReportMetric((heapInuse()-base)/1e6, "MB@100k")
			case 1_000_000:
				after := heapInuse() - base
				b.ReportMetric(after/1e6, "MB@1M")
				b.ReportMetric(after/float64(l.stats().Clients), "B/client@1M")
			case 8_000_000:
				b.ReportMetric((heapInuse()-base)/1e6, "MB@8M")
			}
		}
		b.ReportMetric(float64(l.stats().Clients), "clients")
		runtime.KeepAlive(l)
	}
}
