package broker

import "github.com/prometheus/client_golang/prometheus"

// limitMetrics show how close the broker is to its bounds: the worker table
// and the HTTP connections.
type limitMetrics struct {
	protocolErrors *prometheus.CounterVec // code
}

var (
	descIgnored = prometheus.NewDesc("wgkex_broker_worker_messages_ignored_total",
		"MQTT messages from workers the table does not take: reason=unlisted (known_workers_only), table_full (no place for another unlisted worker).",
		[]string{"reason"}, nil)
	descEvicted = prometheus.NewDesc("wgkex_broker_workers_evicted_total",
		"Unlisted workers forgotten after being offline or without data for broker.worker_expiry.", nil, nil)
	descTable = prometheus.NewDesc("wgkex_broker_worker_table_entries",
		"Workers the broker keeps state for, by whether they are listed under workers.", []string{"listed"}, nil)
)

func registerLimitMetrics(reg prometheus.Registerer, b *Broker) {
	b.limits.protocolErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wgkex_broker_http_protocol_errors_total",
		Help: "Requests refused before reaching an endpoint (431 header too large, 400 malformed, 501, 505), by status code.",
	}, []string{"code"})
	if reg == nil {
		return
	}
	reg.MustRegister(b.limits.protocolErrors, tableCollector{b.state},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wgkex_broker_http_connections_open", Help: "HTTP connections open now.",
		}, func() float64 { return float64(b.open.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wgkex_broker_http_connections_max", Help: "broker_listen.max_connections (0: unbounded); further connections wait to be accepted.",
		}, func() float64 { return float64(max(b.maxConn, 0)) }))
}

type tableCollector struct{ s *state }

func (c tableCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descIgnored
	ch <- descEvicted
	ch <- descTable
}

func (c tableCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.stats()
	ch <- prometheus.MustNewConstMetric(descIgnored, prometheus.CounterValue, float64(st.ignoredUnlisted), "unlisted")
	ch <- prometheus.MustNewConstMetric(descIgnored, prometheus.CounterValue, float64(st.ignoredFull), "table_full")
	ch <- prometheus.MustNewConstMetric(descEvicted, prometheus.CounterValue, float64(st.evicted))
	ch <- prometheus.MustNewConstMetric(descTable, prometheus.GaugeValue, float64(st.entries-st.unlisted), "true")
	ch <- prometheus.MustNewConstMetric(descTable, prometheus.GaugeValue, float64(st.unlisted), "false")
}
