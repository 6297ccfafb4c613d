package parker

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a request, the label of wgkex_broker_parker_requests_total.
const (
	resultOK               = "ok"
	resultBadRequest       = "bad_request"
	resultMethod           = "method_not_allowed"
	resultPoolExhausted    = "pool_exhausted"
	resultStoreUnavailable = "store_unavailable"
	resultNoConcentrator   = "no_concentrator"
	resultPublishFailed    = "publish_failed"
	resultError            = "error"
)

var results = []string{resultOK, resultBadRequest, resultMethod, resultPoolExhausted, resultStoreUnavailable, resultNoConcentrator, resultPublishFailed, resultError}

type metrics struct {
	requests       *prometheus.CounterVec // result
	allocations    prometheus.Counter
	rememberFailed prometheus.Counter
}

func (m *metrics) result(r string) prometheus.Counter { return m.requests.WithLabelValues(r) }

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_broker_parker_requests_total",
			Help: "Parker configuration requests (GET /config) by result: ok, bad_request, method_not_allowed, pool_exhausted, store_unavailable, no_concentrator, publish_failed, error.",
		}, []string{"result"}),
		allocations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wgkex_broker_parker_allocations_total",
			Help: "Prefixes leased to keys that held none (new Parker nodes).",
		}),
		rememberFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wgkex_broker_parker_remember_failures_total",
			Help: "Concentrator choices the address store could not record (the reply was sent; the next poll may count as a new choice).",
		}),
	}
	// Every result is exported from the start, so rate() sees the first one.
	for _, r := range results {
		m.requests.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.allocations, m.rememberFailed} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("parker: register metrics: %w", err)
		}
	}
	return m, nil
}
