package ratelimit

import "github.com/prometheus/client_golang/prometheus"

var (
	descClients = prometheus.NewDesc("wgkex_broker_rate_limit_clients",
		"Client buckets the rate limiter keeps now.", nil, nil)
	descRefused = prometheus.NewDesc("wgkex_broker_rate_limited_total",
		"Requests refused with 429, by the bucket that refused them.", []string{"limit"}, nil)
	descEvicted = prometheus.NewDesc("wgkex_broker_rate_limit_evictions_total",
		"Client buckets forgotten before they had refilled, because max_clients was reached.", nil, nil)
)

// Collector exports the limiter's stats as Prometheus metrics.
func (l *Limiter) Collector() prometheus.Collector { return collector{l} }

type collector struct{ l *Limiter }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descClients
	ch <- descRefused
	ch <- descEvicted
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.l.stats()
	ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(s.Clients))
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(s.RefusedClient), "client")
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(s.RefusedGlobal), "global")
	ch <- prometheus.MustNewConstMetric(descEvicted, prometheus.CounterValue, float64(s.Evicted))
}
