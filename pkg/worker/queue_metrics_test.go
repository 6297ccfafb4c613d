package worker

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/freifunkMUC/wgkex/internal/promtest"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

func scrapeWorker(t *testing.T, w *Worker, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	w.handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return promtest.Parse(t, rec.Body.String())
}

// Keys taken from MQTT show as queue depth until the installer has them;
// keys kept for missing interfaces show as pending.
func TestKeyQueueMetrics(t *testing.T) {
	f := newFake()
	reg := prometheus.NewRegistry()
	w := New(Options{Name: "gw1", Domains: map[string]wgkex.Interfaces{"ffmuc_welt": {WireGuard: "wg-welt", VXLAN: "vx-welt"}},
		WireGuard: f, Kernel: f, Registry: reg, QueueSize: 8, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	welt := map[string]string{"domain": "ffmuc_welt"}

	fams := scrapeWorker(t, w, reg)
	for name, want := range map[string]float64{
		"wgkex_worker_key_queue_depth":    0,
		"wgkex_worker_key_queue_capacity": 8,
		// Counters exist before the first key, so that the first
		// failure is an increase over 0.
		"wgkex_worker_keys_failed_total":     0,
		"wgkex_worker_keys_installed_total":  0,
		"wgkex_worker_cleanup_removed_total": 0,
	} {
		if got := promtest.Value(fams, name, nil); got != want {
			t.Errorf("before any key: %s = %v, want %v", name, got, want)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	for i := 1; i <= 3; i++ {
		w.handleMessage(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte(key(i)))
	}
	w.handleMessage(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte("not a key")) // dropped, never queued
	if got := promtest.Value(scrapeWorker(t, w, reg), "wgkex_worker_key_queue_depth", nil); got != 3 {
		t.Errorf("queue depth with three keys received = %v, want 3", got)
	}

	// Run with an ended context installs what is queued and returns.
	cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	fams = scrapeWorker(t, w, reg)
	if got := promtest.Value(fams, "wgkex_worker_key_queue_depth", nil); got != 0 {
		t.Errorf("queue depth after Run drained it = %v, want 0", got)
	}
	if got := promtest.Value(fams, "wgkex_worker_keys_installed_total", welt); got != 3 {
		t.Errorf("installed = %v, want 3", got)
	}

	// Interfaces gone: keys are kept per domain, then installed.
	delete(f.links, "vx-welt")
	w.checkLinks(context.Background())
	w.installNow("ffmuc_welt", key(4), key(5))
	fams = scrapeWorker(t, w, reg)
	if got := promtest.Value(fams, "wgkex_worker_keys_pending", welt); got != 2 {
		t.Errorf("pending with interfaces missing = %v, want 2", got)
	}
	if got := promtest.Value(fams, "wgkex_worker_peers", welt); got != -1 {
		t.Errorf("peers with interfaces missing = %v, want -1", got)
	}
	f.links["vx-welt"] = 12
	w.checkLinks(context.Background())
	fams = scrapeWorker(t, w, reg)
	if got := promtest.Value(fams, "wgkex_worker_keys_pending", welt); got != 0 {
		t.Errorf("pending after the interfaces returned = %v, want 0", got)
	}
	if got := promtest.Value(fams, "wgkex_worker_keys_installed_total", welt); got != 5 {
		t.Errorf("installed after the interfaces returned = %v, want 5", got)
	}
}
