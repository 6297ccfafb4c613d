package broker

import (
	"html/template"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/freifunkMUC/wgkex/internal/httpjson"
)

// Status is the broker's view of the mesh, served as JSON on
// /api/v1/status and as HTML on /.
type Status struct {
	Service       string         `json:"service"`
	MQTTConnected bool           `json:"mqtt_connected"`
	Selection     string         `json:"selection"` // v2's rule: least_loaded or sticky
	Domains       []DomainStatus `json:"domains"`
	Workers       []WorkerStatus `json:"workers"`
	Brokers       []BrokerStatus `json:"brokers"` // this one included
	Time          time.Time      `json:"time"`
}

// BrokerStatus is one broker as last heard of.
type BrokerStatus struct {
	Name       string    `json:"name"`
	Online     bool      `json:"online"`
	LastSeen   time.Time `json:"last_message,omitzero"` // left out while never heard on the bus
	ThisBroker bool      `json:"this_broker,omitempty"`
}

// DomainStatus names the worker v2 would choose now for a domain (with
// sticky selection: for a node whose own gateway is over its share).
type DomainStatus struct {
	Name   string `json:"name"`
	Chosen string `json:"chosen,omitempty"`
}

// WorkerStatus is one worker as last heard of.
type WorkerStatus struct {
	Name     string                  `json:"name"`
	Online   bool                    `json:"online"`
	Weight   int                     `json:"weight"`
	LastSeen time.Time               `json:"last_message"`
	Domains  map[string]WorkerDomain `json:"domains"`
}

// WorkerDomain is what a worker reported for one domain.
type WorkerDomain struct {
	ConnectedPeers  *int   `json:"connected_peers,omitempty"`
	ExternalAddress string `json:"external_address,omitempty"`
	Port            int    `json:"port,omitempty"`
	PublicKey       string `json:"public_key,omitempty"`
	LinkAddress     string `json:"link_address,omitempty"`
}

// status assembles the current status.
func (b *Broker) status() Status {
	st := Status{Service: "wgkex broker", MQTTConnected: b.connected(), Selection: "least_loaded", Time: b.now().UTC(),
		Brokers: []BrokerStatus{}}
	if b.state.sticky {
		st.Selection = "sticky"
	}
	for _, bs := range b.state.brokerSnapshots() {
		st.Brokers = append(st.Brokers, BrokerStatus{Name: bs.Name, Online: bs.Online, LastSeen: bs.LastSeen.UTC(), ThisBroker: bs.Self})
	}
	for _, d := range b.names {
		chosen, _ := b.state.best(d)
		st.Domains = append(st.Domains, DomainStatus{Name: d, Chosen: chosen})
	}
	for _, w := range b.state.snapshot() {
		ws := WorkerStatus{Name: w.Name, Online: w.Online, Weight: w.Weight, LastSeen: w.LastSeen.UTC(), Domains: map[string]WorkerDomain{}}
		for d, n := range w.Peers {
			wd := ws.Domains[d]
			n := n
			wd.ConnectedPeers = &n
			ws.Domains[d] = wd
		}
		for d, data := range w.Data {
			wd := ws.Domains[d]
			wd.ExternalAddress, wd.Port, wd.PublicKey, wd.LinkAddress = data.ExternalAddress, data.Port, data.PublicKey, data.LinkAddress
			ws.Domains[d] = wd
		}
		st.Workers = append(st.Workers, ws)
	}
	return st
}

func (b *Broker) statusJSON(w http.ResponseWriter, r *http.Request) {
	httpjson.Write(w, http.StatusOK, b.status())
}

func healthz(w http.ResponseWriter, r *http.Request) {
	httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz: the MQTT connection is up and at least one worker is online, so
// v2 can hand out a gateway.
func (b *Broker) readyz(w http.ResponseWriter, r *http.Request) {
	var problems []string
	if !b.connected() {
		problems = append(problems, "MQTT not connected")
	}
	online := 0
	for _, ws := range b.state.snapshot() {
		if ws.Online {
			online++
		}
	}
	if online == 0 {
		problems = append(problems, "no worker online")
	}
	if len(problems) > 0 {
		httpjson.Write(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": strings.Join(problems, "; ")})
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"status": "ready", "workers_online": online})
}

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	},
	"sortedDomains": func(m map[string]WorkerDomain) []string {
		out := make([]string, 0, len(m))
		for d := range m {
			out = append(out, d)
		}
		sort.Strings(out)
		return out
	},
	"index": func(m map[string]WorkerDomain, k string) WorkerDomain { return m[k] },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>wgkex broker</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}
h1{font-size:1.4rem;margin:0 0 .2rem} .sub{color:#666;margin-bottom:1.5rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;background:#fff;box-shadow:0 1px 2px #0001}
th,td{padding:.35rem .7rem;border-bottom:1px solid #eee;text-align:left;font-size:.9rem;vertical-align:top}
th{background:#f0f0f0} code{font-size:.8rem}
.on{color:#0a7d27;font-weight:600} .off{color:#b00020;font-weight:600} .muted{color:#888}
</style></head>
<body>
<h1>wgkex broker</h1>
<div class="sub">WireGuard key exchange &middot; MQTT {{if .MQTTConnected}}<span class="on">connected</span>{{else}}<span class="off">not connected</span>{{end}} &middot; {{.Time.Format "2006-01-02 15:04:05 MST"}}</div>
<h2>Domains</h2>
<table><tr><th>domain</th><th>v2 would choose now{{if eq .Selection "sticky"}} (sticky selection: for a node whose own gateway is over its share){{end}}</th></tr>
{{range .Domains}}<tr><td>{{.Name}}</td><td>{{if .Chosen}}{{.Chosen}}{{else}}<span class="off">no gateway online</span>{{end}}</td></tr>
{{end}}</table>
<h2>Brokers</h2>
<table><tr><th>broker</th><th>status</th><th>last message</th></tr>
{{range .Brokers}}<tr><td>{{.Name}}{{if .ThisBroker}} <span class="muted">(this broker)</span>{{end}}</td><td>{{if .Online}}<span class="on">online</span>{{else}}<span class="off">offline</span>{{end}}</td><td>{{ago .LastSeen}}</td></tr>
{{else}}<tr><td colspan="3" class="muted">no broker heard of yet</td></tr>{{end}}</table>
<h2>Workers</h2>
<table><tr><th>worker</th><th>status</th><th>weight</th><th>last message</th><th>domain</th><th>connected peers</th><th>endpoint</th><th>public key</th><th>link address</th></tr>
{{range $w := .Workers}}{{$doms := sortedDomains $w.Domains}}{{if $doms}}{{range $i, $d := $doms}}{{$x := index $w.Domains $d}}<tr>
{{if eq $i 0}}<td>{{$w.Name}}</td><td>{{if $w.Online}}<span class="on">online</span>{{else}}<span class="off">offline</span>{{end}}</td><td>{{$w.Weight}}</td><td>{{ago $w.LastSeen}}</td>{{else}}<td></td><td></td><td></td><td></td>{{end}}
<td>{{$d}}</td><td>{{if $x.ConnectedPeers}}{{$x.ConnectedPeers}}{{else}}<span class="muted">-</span>{{end}}</td>
<td>{{if $x.ExternalAddress}}{{$x.ExternalAddress}}:{{$x.Port}}{{else}}<span class="muted">no data</span>{{end}}</td><td><code>{{$x.PublicKey}}</code></td><td><code>{{$x.LinkAddress}}</code></td></tr>
{{end}}{{else}}<tr><td>{{$w.Name}}</td><td>{{if $w.Online}}<span class="on">online</span>{{else}}<span class="off">offline</span>{{end}}</td><td>{{$w.Weight}}</td><td>{{ago $w.LastSeen}}</td><td colspan="5" class="muted">no domain reported</td></tr>
{{end}}{{else}}<tr><td colspan="9" class="muted">no worker heard of yet</td></tr>{{end}}
</table>
<p class="muted">JSON: <a href="/api/v1/status">/api/v1/status</a> &middot; <a href="/metrics">/metrics</a> &middot; <a href="/readyz">/readyz</a></p>
</body></html>
`))

func (b *Broker) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := statusPage.Execute(w, b.status()); err != nil {
		b.log.Debug("render status page", "err", err)
	}
}
