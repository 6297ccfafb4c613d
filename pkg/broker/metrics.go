package broker

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the broker's Prometheus series.
type metrics struct {
	requests  *prometheus.CounterVec   // endpoint, code
	latency   *prometheus.HistogramVec // endpoint
	published *prometheus.CounterVec   // domain
	pubFailed prometheus.Counter
	choices   *prometheus.CounterVec // worker, domain
	sticky    *prometheus.CounterVec // rule
}

// stickyRule is the counter of sticky-mode choices made by the hashed rule
// or by its least-loaded fallback.
func (m *metrics) stickyRule(hashed bool) prometheus.Counter {
	if hashed {
		return m.sticky.WithLabelValues("hashed")
	}
	return m.sticky.WithLabelValues("least_loaded")
}

func newMetrics(reg prometheus.Registerer, b *Broker) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_broker_requests_total", Help: "HTTP requests by endpoint and status code.",
		}, []string{"endpoint", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wgkex_broker_request_duration_seconds", Help: "HTTP request latency by endpoint.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"endpoint"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_broker_keys_published_total", Help: "Keys published to the workers, by domain.",
		}, []string{"domain"}),
		pubFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wgkex_broker_publish_failures_total", Help: "Keys the MQTT server did not acknowledge (answered 503).",
		}),
		choices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_broker_gateway_choices_total", Help: "Gateways handed out by v2, by worker and domain.",
		}, []string{"worker", "domain"}),
		sticky: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_broker_sticky_choices_total",
			Help: "v2 choices in broker.selection sticky, by rule: hashed (the node's own gateway) or least_loaded (it was over broker.sticky_tolerance).",
		}, []string{"rule"}),
	}
	if b.state.sticky {
		m.sticky.WithLabelValues("hashed")
		m.sticky.WithLabelValues("least_loaded")
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.requests, m.latency, m.published, m.pubFailed, m.choices, m.sticky,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wgkex_mqtt_connected", Help: "1 while the MQTT connection is up and subscribed.",
		}, func() float64 { return boolFloat(b.connected()) }),
		&stateCollector{b: b})
	return m
}

// stateCollector exports what the workers last reported.
type stateCollector struct{ b *Broker }

var (
	descOnline = prometheus.NewDesc("wgkex_broker_workers_online", "Workers whose last status was online.", nil, nil)
	descPeers  = prometheus.NewDesc("wgkex_broker_worker_connected_peers",
		"connected_peers as last reported (plus the broker's own count since), by worker and domain.", []string{"worker", "domain"}, nil)
	descWorkerUp = prometheus.NewDesc("wgkex_broker_worker_online", "1 when the worker's last status was online.", []string{"worker"}, nil)
	descBrokers  = prometheus.NewDesc("wgkex_broker_brokers_online",
		"Brokers online on the bus, this one included: what a v2 choice adds to the chosen gateway's count.", nil, nil)
	descGateways = prometheus.NewDesc("wgkex_broker_domain_gateways",
		"Gateways v2 can hand out for the domain now: online, serving it (connected_peers >= 0) and with its data message (0: v2 answers 400 or 500).",
		[]string{"domain"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descOnline
	ch <- descPeers
	ch <- descWorkerUp
	ch <- descGateways
	ch <- descBrokers
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	online := 0
	gateways := make(map[string]int, len(c.b.domains))
	for _, w := range c.b.state.snapshot() {
		if w.Online {
			online++
		}
		ch <- prometheus.MustNewConstMetric(descWorkerUp, prometheus.GaugeValue, boolFloat(w.Online), w.Name)
		for d, n := range w.Peers {
			ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(n), w.Name, d)
			// The candidates of state.choose.
			if _, ok := w.Data[d]; ok && w.Online && n >= 0 && w.Weight > 0 {
				gateways[d]++
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(descOnline, prometheus.GaugeValue, float64(online))
	ch <- prometheus.MustNewConstMetric(descBrokers, prometheus.GaugeValue, float64(c.b.state.onlineBrokers()))
	// Every configured domain, so that "none" is a 0 an alert can see;
	// once each, as a repeated series would fail the whole scrape.
	for d := range c.b.domains {
		ch <- prometheus.MustNewConstMetric(descGateways, prometheus.GaugeValue, float64(gateways[d]), d)
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// instrument counts and times requests by endpoint.
func (m *metrics) instrument(endpoint string, h http.HandlerFunc) http.HandlerFunc {
	obs := m.latency.WithLabelValues(endpoint)
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(rec, r)
		obs.Observe(time.Since(start).Seconds())
		m.requests.WithLabelValues(endpoint, strconv.Itoa(rec.code)).Inc()
	}
}
