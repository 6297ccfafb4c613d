package broker

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/testbus"
)

// BenchmarkV2Mosquitto is one v2 request through the handler, its key
// published with QoS 1 to a real Mosquitto (no HTTP stack: see bench/ for
// that). Run with -cpu and -cpuprofile to see where a request's time goes.
func BenchmarkV2Mosquitto(b *testing.B) {
	srv := testbus.Mosquitto(b)
	for w, port := range map[string]int{"gw1": 40001, "gw2": 40002} {
		announce(b, srv.URL, w, "ffmuc_welt", port, 10)
	}
	br, hs := startBroker(b, srv.URL, nil)
	hs.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(br.state.snapshot()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	body := `{"domain":"ffmuc_welt","public_key":"` + nodeKey + `"}`
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("POST", "/api/v2/wg/key/exchange", strings.NewReader(body))
			rec := httptest.NewRecorder()
			br.ServeHTTP(rec, req)
			if rec.Code != 200 {
				b.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
		}
	})
}
