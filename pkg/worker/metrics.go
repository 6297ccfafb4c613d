package worker

import (
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/freifunkMUC/wgkex/internal/httpjson"
)

// metrics are the worker's Prometheus series.
type metrics struct {
	installed *prometheus.CounterVec // domain
	failed    *prometheus.CounterVec // domain
	removed   *prometheus.CounterVec // domain
	latency   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, w *Worker) *metrics {
	m := &metrics{
		installed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_worker_keys_installed_total", Help: "Keys installed (peer, route and FDB entry), by domain.",
		}, []string{"domain"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_worker_keys_failed_total", Help: "Install attempts the kernel refused (each retry counts) and keys given up, by domain.",
		}, []string{"domain"}),
		removed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_worker_cleanup_removed_total", Help: "Stale peers removed by cleanup, by domain.",
		}, []string{"domain"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "wgkex_worker_install_latency_seconds", Help: "Time from MQTT delivery until a key's entries are all installed.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	// Every domain's counters exist from the start: rate() and increase()
	// in alerts see the first failure only against an earlier zero.
	for _, name := range w.names {
		m.installed.WithLabelValues(name)
		m.failed.WithLabelValues(name)
		m.removed.WithLabelValues(name)
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.installed, m.failed, m.removed, m.latency, &peerCollector{w: w},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wgkex_mqtt_connected", Help: "1 while the MQTT connection is up and subscribed.",
		}, func() float64 {
			if w.connected() {
				return 1
			}
			return 0
		}),
		// The queue is read without the worker's lock, so it shows even
		// while a batch is being installed.
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wgkex_worker_key_queue_depth",
			Help: "Keys received from MQTT and waiting for the installer (all domains).",
		}, func() float64 { return float64(len(w.queue)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wgkex_worker_key_queue_capacity",
			Help: "Keys the queue holds; when it is full, MQTT delivery waits.",
		}, func() float64 { return float64(cap(w.queue)) }))
	return m
}

var (
	descPeers     = prometheus.NewDesc("wgkex_worker_peers", "WireGuard peers on the domain's interface (-1: interfaces missing).", []string{"domain"}, nil)
	descConnected = prometheus.NewDesc("wgkex_worker_connected_peers",
		"Peers with a handshake within the last 3 minutes (-1: interfaces missing).", []string{"domain"}, nil)
	descPending = prometheus.NewDesc("wgkex_worker_keys_pending",
		"Keys taken from the queue but not installed, kept for later: the domain's interfaces are missing, or the kernel refused them.", []string{"domain"}, nil)
)

// peerCollector reads the devices at scrape time.
type peerCollector struct{ w *Worker }

func (c *peerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPeers
	ch <- descConnected
	ch <- descPending
}

func (c *peerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, name := range c.w.names {
		total, connected, pending := c.w.peerCounts(name)
		ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(total), name)
		ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, float64(connected), name)
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(pending), name)
	}
}

// peerCounts is (peers, connected peers, keys pending) of a domain; the
// peer counts are -1 while its interfaces are missing.
func (w *Worker) peerCounts(domainName string) (total, connected, pending int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.domains[domainName]
	if d == nil {
		return -1, -1, 0
	}
	total, connected = w.countPeers(d)
	return total, connected, len(d.pending) + len(d.held)
}

func (w *Worker) connected() bool { return w.o.Connected == nil || w.o.Connected() }

// handler serves /metrics (from gatherer, when set), /healthz and /readyz
// (MQTT connected and at least one domain's interfaces usable).
func (w *Worker) handler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	if gatherer != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, r *http.Request) {
		httpjson.Write(rw, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("/readyz", func(rw http.ResponseWriter, r *http.Request) {
		var problems []string
		if !w.connected() {
			problems = append(problems, "MQTT not connected")
		}
		w.mu.Lock()
		usable := 0
		for _, d := range w.domains {
			if d.wgIndex != 0 {
				usable++
			} else {
				problems = append(problems, d.name+": "+d.missing)
			}
		}
		w.mu.Unlock()
		if !w.connected() || usable == 0 {
			httpjson.Write(rw, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": strings.Join(problems, "; ")})
			return
		}
		httpjson.Write(rw, http.StatusOK, map[string]any{"status": "ready", "domains_usable": usable, "problems": problems})
	})
	return mux
}

func (m *metrics) observeInstall(domain string, d time.Duration) {
	m.installed.WithLabelValues(domain).Inc()
	m.latency.Observe(d.Seconds())
}
