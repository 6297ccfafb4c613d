package cmd_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/freifunkMUC/wgkex/internal/eventually"
	"github.com/freifunkMUC/wgkex/internal/netns"
	"github.com/freifunkMUC/wgkex/internal/promtest"
	"github.com/freifunkMUC/wgkex/internal/testbus"
)

// contribQueries are the PromQL expressions of the alerting rules and the
// Grafana dashboard (panel queries and variable definitions), by where
// they come from.
func contribQueries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	b, err := os.ReadFile(filepath.Join("..", "contrib", "prometheus", "wgkex-alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct{ Alert, Record, Expr string }
		}
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("wgkex-alerts.yml: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out["alert "+r.Alert+r.Record] = r.Expr
		}
	}
	b, err = os.ReadFile(filepath.Join("..", "contrib", "grafana", "wgkex.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct{ Name, Definition string }
		}
		Panels []struct {
			Title   string
			Targets []struct{ RefID, Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("wgkex.json: %v", err)
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			out["dashboard variable "+v.Name] = v.Definition
		}
	}
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			out[fmt.Sprintf("dashboard panel %q %s", p.Title, q.RefID)] = q.Expr
		}
	}
	if len(out) < 10 {
		t.Fatalf("only %d queries found in contrib/", len(out))
	}
	return out
}

var (
	// Metric names are those of wgkex, the Go runtime and the process;
	// up is Prometheus's own.
	queriedMetric = regexp.MustCompile(`\b(?:wgkex|go|process)_[a-zA-Z0-9_]+\b`)
	// A selector with label matchers, and the label names in it.
	selector     = regexp.MustCompile(`\b((?:wgkex|go|process)_[a-zA-Z0-9_]+)\{([^}]*)\}`)
	matcherLabel = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	// Labels an aggregation groups by or a binary operation matches on.
	grouping = regexp.MustCompile(`\b(?:by|on)\s*\(([^)]*)\)`)
)

// family finds the family a queried name belongs to: itself, or the
// histogram or summary whose _bucket, _sum or _count series it is.
func family(fams map[string]*dto.MetricFamily, name string) (*dto.MetricFamily, bool) {
	if f, ok := fams[name]; ok {
		return f, false
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		f := fams[base]
		if f != nil && (f.GetType() == dto.MetricType_HISTOGRAM || (f.GetType() == dto.MetricType_SUMMARY && suffix != "_bucket")) {
			return f, suffix == "_bucket"
		}
	}
	return nil, false
}

// checkQueries reports every metric a query names that fams lacks, and
// every label matched on that no series of the metric has.
func checkQueries(queries map[string]string, fams map[string]*dto.MetricFamily) []string {
	var problems []string
	// labels of a queried name; job and instance come from the scrape.
	labels := func(f *dto.MetricFamily, bucket bool) map[string]bool {
		have := map[string]bool{"job": true, "instance": true, "le": bucket}
		for _, s := range f.Metric {
			for _, l := range s.Label {
				have[l.GetName()] = true
			}
		}
		return have
	}
	for where, expr := range queries {
		// Grouping labels must be on some metric of the query.
		anywhere := map[string]bool{}
		for _, name := range queriedMetric.FindAllString(expr, -1) {
			f, bucket := family(fams, name)
			if f == nil {
				problems = append(problems, fmt.Sprintf("%s: %s is not exported", where, name))
				continue
			}
			for l, ok := range labels(f, bucket) {
				anywhere[l] = anywhere[l] || ok
			}
		}
		for _, m := range selector.FindAllStringSubmatch(expr, -1) {
			f, bucket := family(fams, m[1])
			if f == nil {
				continue
			}
			have := labels(f, bucket)
			for _, l := range matcherLabel.FindAllStringSubmatch(m[2], -1) {
				if !have[l[1]] {
					problems = append(problems, fmt.Sprintf("%s: %s has no label %q", where, m[1], l[1]))
				}
			}
		}
		for _, g := range grouping.FindAllStringSubmatch(expr, -1) {
			for _, l := range strings.Split(g[1], ",") {
				if l = strings.TrimSpace(l); l != "" && !anywhere[l] {
					problems = append(problems, fmt.Sprintf("%s: no metric of the query has label %q", where, l))
				}
			}
		}
	}
	sort.Strings(problems)
	return problems
}

// getMetrics returns the /metrics body at url, or "" while it cannot.
func getMetrics(url string) string {
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return ""
	}
	return string(body)
}

func scrapeMetrics(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	body := getMetrics(url)
	if body == "" {
		t.Fatalf("GET %s failed", url)
	}
	return promtest.Parse(t, body)
}

// Every metric and label the alerting rules and the dashboard in contrib/
// query exists in a live scrape of a broker and a worker, run as
// operators run them (in a network namespace, userspace WireGuard) with
// some key exchanges done.
func TestContribQueriesMatchMetrics(t *testing.T) {
	queries := contribQueries(t) // outside the namespace too: the files parse
	if !netns.Run(t) {
		return
	}
	cfg := filepath.Join("..", "testdata", "minimal.yaml")
	dummy := start(t, nil, "dummy-iface", "--config", cfg, "--listen-port", "51998")
	eventually.True(t, waitTimeout, "wg-welt and vx-welt", func() bool {
		_, e1 := net.InterfaceByName("wg-welt")
		_, e2 := net.InterfaceByName("vx-welt")
		return e1 == nil && e2 == nil && strings.Contains(dummy.stderr.String(), "vx-welt")
	})

	mqttPort, httpPort, workerPort := testbus.FreePort(t), testbus.FreePort(t), testbus.FreePort(t)
	b := start(t, []string{fmt.Sprintf("WGKEX_MQTT_LISTEN=127.0.0.1:%d", mqttPort), fmt.Sprintf("WGKEX_BROKER_LISTEN_PORT=%d", httpPort)},
		"broker", "--config", cfg)
	brokerURL := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	eventually.True(t, waitTimeout, "broker answering", func() bool {
		resp, err := http.Get(brokerURL + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
	w := start(t, []string{"WGKEX_MQTT_BROKER_URL=127.0.0.1", fmt.Sprintf("WGKEX_MQTT_BROKER_PORT=%d", mqttPort),
		fmt.Sprintf("WGKEX_WORKER_METRICS_LISTEN=127.0.0.1:%d", workerPort)}, "worker", "--config", cfg, "--name", "gw-test")

	// Key exchanges: v2 until the worker is chosen (400 before), and a bad one.
	post := func(key string) int {
		resp, err := http.Post(brokerURL+"/api/v2/wg/key/exchange", "application/json",
			strings.NewReader(`{"domain":"ffmuc_welt","public_key":"`+key+`"}`))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const key = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
	if !eventually.Within(waitTimeout, func() bool { return post(key) == 200 }) {
		t.Fatalf("v2 never chose the worker\nbroker:\n%s\nworker:\n%s", b.stderr, w.stderr)
	}
	if code := post("not a key"); code != 400 {
		t.Errorf("bad key: %d, want 400", code)
	}
	workerURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", workerPort)
	eventually.True(t, waitTimeout, "key installed by the worker", func() bool {
		body := getMetrics(workerURL)
		return body != "" && promtest.Value(promtest.Parse(t, body), "wgkex_worker_keys_installed_total", map[string]string{"domain": "ffmuc_welt"}) >= 1
	})

	fams := scrapeMetrics(t, brokerURL+"/metrics")
	for name, f := range scrapeMetrics(t, workerURL) {
		if _, both := fams[name]; !both {
			fams[name] = f
		}
	}
	for _, p := range checkQueries(queries, fams) {
		t.Error(p)
	}
}

// checkQueries finds renamed metrics and labels, and takes histogram
// series names.
func TestCheckQueries(t *testing.T) {
	fams := promtest.Parse(t, `# TYPE wgkex_a_total counter
wgkex_a_total{domain="x"} 1
# TYPE wgkex_h_seconds histogram
wgkex_h_seconds_bucket{le="1"} 1
wgkex_h_seconds_bucket{le="+Inf"} 1
wgkex_h_seconds_sum 0.5
wgkex_h_seconds_count 1
# TYPE go_goroutines gauge
go_goroutines 7
`)
	got := checkQueries(map[string]string{
		"ok":      `sum by (domain) (rate(wgkex_a_total{domain=~"$domain", job="x"}[5m])) and on (instance) go_goroutines and up == 1`,
		"hist":    `histogram_quantile(0.9, rate(wgkex_h_seconds_bucket{le!=""}[5m])) / wgkex_h_seconds_count`,
		"renamed": `rate(wgkex_b_total[5m])`,
		"label":   `wgkex_a_total{worker="gw1"}`,
		"suffix":  `wgkex_a_total_bucket`,
		"by":      `sum by (worker, le) (wgkex_a_total)`,
	}, fams)
	want := []string{
		`by: no metric of the query has label "le"`,
		`by: no metric of the query has label "worker"`,
		`label: wgkex_a_total has no label "worker"`,
		`renamed: wgkex_b_total is not exported`,
		`suffix: wgkex_a_total_bucket is not exported`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
