// Package contrib_test checks the operator files in contrib/: the Prometheus
// alerting rules (with promtool and their unit tests) and the Grafana
// dashboard. cmd's TestContribQueriesMatchMetrics checks that what they
// query exists in a live scrape.
package contrib_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/freifunkMUC/wgkex/internal/testbus"
)

func promtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		testbus.Missing(t, "promtool is not installed (apt-get install prometheus)")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

type rulesFile struct {
	Groups []struct {
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type rulesTests struct {
	Tests []struct {
		AlertRuleTest []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// The rules are valid, their unit tests pass, the example configuration
// loads them, and every alert tells the operator how bad it is and what
// to check, and has a test that fires it.
func TestAlertRules(t *testing.T) {
	dir := "prometheus"
	promtool(t, dir, "check", "rules", "wgkex-alerts.yml")
	promtool(t, dir, "test", "rules", "wgkex-alerts.test.yml")
	promtool(t, dir, "check", "config", "prometheus.example.yml")

	var rules rulesFile
	readYAML(t, filepath.Join(dir, "wgkex-alerts.yml"), &rules)
	var tests rulesTests
	readYAML(t, filepath.Join(dir, "wgkex-alerts.test.yml"), &tests)
	fired := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			}
		}
	}
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 80 {
				t.Errorf("%s: want a summary and a description that says what to check", r.Alert)
			}
			if !fired[r.Alert] {
				t.Errorf("%s: no test in wgkex-alerts.test.yml fires it", r.Alert)
			}
		}
	}
	if alerts == 0 {
		t.Error("no alerts found")
	}
}

type dashboard struct {
	Title      string
	UID        string
	Templating struct {
		List []struct {
			Name  string
			Type  string
			Query any
		}
	}
	Panels []panel
}

type panel struct {
	ID         int
	Type       string
	Title      string
	Datasource *struct{ Type, UID string }
	GridPos    struct{ H, W, X, Y int }
	Targets    []struct {
		RefID string
		Expr  string
	}
}

// The dashboard is well-formed JSON Grafana can import: unique panel ids,
// panels that do not overlap, every query on the data source variable,
// and every query valid PromQL (promtool checks them as recording rules).
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("grafana", "wgkex.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("wgkex.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("want a title, a uid and panels: %q %q %d", d.Title, d.UID, len(d.Panels))
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	if !vars["datasource"] {
		t.Error("no datasource variable: the dashboard would be bound to one Grafana's data source")
	}

	ids := map[int]string{}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, p := range d.Panels {
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panel id %d used by %q and %q", p.ID, other, p.Title)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("%q: gridPos %+v", p.Title, p.GridPos)
		}
		for _, q := range d.Panels[:i] {
			if overlap(p, q) {
				t.Errorf("panels %q and %q overlap", p.Title, q.Title)
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("%q: want queries on ${datasource}", p.Title)
		}
		for _, q := range p.Targets {
			if q.RefID == "" || strings.TrimSpace(q.Expr) == "" {
				t.Errorf("%q: query %q without refId or expr", p.Title, q.RefID)
				continue
			}
			fmt.Fprintf(&rules, "      - record: dashboard:panel_%d_%s\n        expr: %q\n", p.ID, q.RefID, grafanaToPromQL(q.Expr))
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.rules.yml"), []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, dir, "check", "rules", "dashboard.rules.yml")
}

// grafanaToPromQL replaces Grafana's variables with values Prometheus takes.
func grafanaToPromQL(expr string) string {
	return strings.NewReplacer("$__rate_interval", "5m", "$domain", ".*").Replace(expr)
}

func overlap(a, b panel) bool {
	ga, gb := a.GridPos, b.GridPos
	return ga.X < gb.X+gb.W && gb.X < ga.X+ga.W && ga.Y < gb.Y+gb.H && gb.Y < ga.Y+ga.H
}
