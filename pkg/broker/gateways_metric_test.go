package broker

import (
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex/internal/promtest"
)

// wgkex_broker_domain_gateways counts exactly the gateways v2 could hand
// out: it is 0 when, and only when, v2 finds none.
func TestDomainGatewaysMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := New(Options{Domains: []string{"ffmuc_welt", "ffmuc_nord"}, Publisher: &fakePublisher{}, Registry: reg, Gatherer: reg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	data := func(worker string) {
		b.HandleMessage("wireguard-worker/"+worker+"/ffmuc_welt/data",
			[]byte(`{"ExternalAddress":"`+worker+`.example.net","Port":51820,"PublicKey":"`+testKey+`","LinkAddress":"fe80::1"}`))
	}
	for _, step := range []struct {
		what       string
		do         func()
		welt, nord float64
	}{
		{"nothing heard", func() {}, 0, 0},
		{"gw1 online without data", func() {
			b.HandleMessage("wireguard-worker/gw1/status", []byte("1"))
			b.HandleMessage("wireguard-metrics/ffmuc_welt/gw1/connected_peers", []byte("3"))
		}, 0, 0},
		{"gw1 data", func() { data("gw1") }, 1, 0},
		{"gw2 online with data", func() {
			b.HandleMessage("wireguard-worker/gw2/status", []byte("1"))
			b.HandleMessage("wireguard-metrics/ffmuc_welt/gw2/connected_peers", []byte("0"))
			data("gw2")
		}, 2, 0},
		{"gw2 interfaces missing", func() {
			b.HandleMessage("wireguard-metrics/ffmuc_welt/gw2/connected_peers", []byte("-1"))
		}, 1, 0},
		{"gw1 offline", func() { b.HandleMessage("wireguard-worker/gw1/status", []byte("0")) }, 0, 0},
	} {
		step.do()
		fams := scrape(t, b)
		for domain, want := range map[string]float64{"ffmuc_welt": step.welt, "ffmuc_nord": step.nord} {
			got := promtest.Value(fams, "wgkex_broker_domain_gateways", map[string]string{"domain": domain})
			if got != want {
				t.Errorf("%s: gateways of %s = %v, want %v", step.what, domain, got, want)
			}
			if _, ok := b.state.best(domain); ok != (got > 0) {
				t.Errorf("%s: %s: v2 finds a gateway: %v, metric says %v", step.what, domain, ok, got)
			}
		}
	}
}
