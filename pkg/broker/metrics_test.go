package broker

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/freifunkMUC/wgkex/internal/promtest"
)

func scrape(t *testing.T, b *Broker) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	b.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return promtest.Parse(t, rec.Body.String())
}

func TestMetricsScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	pub := &fakePublisher{}
	up := true
	b := New(Options{Domains: []string{"ffmuc_welt"}, Publisher: pub, KeyQoS: 1, Registry: reg, Gatherer: reg,
		Connected: func() bool { return up }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	b.HandleMessage("wireguard-worker/gw1/status", []byte("1"))
	b.HandleMessage("wireguard-metrics/ffmuc_welt/gw1/connected_peers", []byte("7"))
	b.HandleMessage("wireguard-worker/gw1/ffmuc_welt/data", []byte(`{"ExternalAddress":"gw1.example.net","Port":51820,"PublicKey":"`+testKey+`","LinkAddress":"fe80::1"}`))
	do(t, b, "POST", "/api/v2/wg/key/exchange", "", body("ffmuc_welt", testKey))
	do(t, b, "POST", "/api/v1/wg/key/exchange", "", body("ffmuc_welt", "bad"))
	pub.err = errors.New("down")
	do(t, b, "POST", "/api/v1/wg/key/exchange", "", body("ffmuc_welt", testKey))

	fams := scrape(t, b)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"wgkex_broker_requests_total", map[string]string{"endpoint": "v2", "code": "200"}, 1},
		{"wgkex_broker_requests_total", map[string]string{"endpoint": "v1", "code": "400"}, 1},
		{"wgkex_broker_requests_total", map[string]string{"endpoint": "v1", "code": "503"}, 1},
		{"wgkex_broker_request_duration_seconds", map[string]string{"endpoint": "v1"}, 2},
		{"wgkex_broker_keys_published_total", map[string]string{"domain": "ffmuc_welt"}, 1},
		{"wgkex_broker_publish_failures_total", nil, 1},
		{"wgkex_broker_gateway_choices_total", map[string]string{"worker": "gw1", "domain": "ffmuc_welt"}, 1},
		{"wgkex_broker_worker_connected_peers", map[string]string{"worker": "gw1", "domain": "ffmuc_welt"}, 8},
		{"wgkex_broker_workers_online", nil, 1},
		{"wgkex_mqtt_connected", nil, 1},
	} {
		if got := promtest.Value(fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	up = false
	if got := promtest.Value(scrape(t, b), "wgkex_mqtt_connected", nil); got != 0 {
		t.Errorf("mqtt_connected after disconnect = %v", got)
	}
}

func TestStatusAndHealth(t *testing.T) {
	up := false
	b := New(Options{Domains: []string{"ffmuc_welt", "ffmuc_nord"}, Publisher: &fakePublisher{}, Weight: weights(map[string]int{"gw1": 5}),
		Connected: func() bool { return up }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if resp, m := do(t, b, "GET", "/healthz", "", ""); resp.StatusCode != 200 || m["status"] != "ok" {
		t.Errorf("healthz %d %v", resp.StatusCode, m)
	}
	if resp, m := do(t, b, "GET", "/readyz", "", ""); resp.StatusCode != 503 || !strings.Contains(m["reason"].(string), "MQTT not connected; no worker online") {
		t.Errorf("readyz %d %v", resp.StatusCode, m)
	}
	up = true
	b.HandleMessage("wireguard-worker/gw1/status", []byte("1"))
	b.HandleMessage("wireguard-metrics/ffmuc_welt/gw1/connected_peers", []byte("3"))
	b.HandleMessage("wireguard-worker/gw1/ffmuc_welt/data", []byte(`{"ExternalAddress":"gw1.example.net","Port":51820,"PublicKey":"`+testKey+`","LinkAddress":"fe80::1"}`))
	if resp, _ := do(t, b, "GET", "/readyz", "", ""); resp.StatusCode != 200 {
		t.Errorf("readyz when ready: %d", resp.StatusCode)
	}

	rec := httptest.NewRecorder()
	b.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/status", nil))
	var st Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if !st.MQTTConnected || len(st.Domains) != 2 || st.Domains[0].Chosen != "gw1" || st.Domains[1].Chosen != "" || len(st.Workers) != 1 {
		t.Fatalf("status %+v", st)
	}
	w := st.Workers[0]
	d := w.Domains["ffmuc_welt"]
	if !w.Online || w.Weight != 5 || d.ConnectedPeers == nil || *d.ConnectedPeers != 3 || d.ExternalAddress != "gw1.example.net" || d.Port != 51820 || d.PublicKey != testKey {
		t.Errorf("worker %+v %+v", w, d)
	}

	rec = httptest.NewRecorder()
	b.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	page := rec.Body.String()
	for _, want := range []string{"gw1.example.net:51820", strings.ReplaceAll(testKey, "+", "&#43;"), "ffmuc_nord", "no gateway online", "online", ">3<"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
}
