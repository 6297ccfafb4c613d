package broker

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// Refusal reasons, as the metric's label has them.
const (
	refusedBlocked    = "blocked"
	refusedNotAllowed = "not_allowed"
)

// refusal is the operator's verdict on a valid request: "" to go on, else
// the message of the 403. Blocked and not allowed keys are not published,
// so no gateway installs them (workers check the block list too, for keys
// that other brokers publish).
func (b *Broker) refusal(req wgkex.ExchangeRequest) string {
	switch {
	case b.blocked != nil && b.blocked(req.PublicKey):
		b.refused.WithLabelValues(refusedBlocked).Inc()
		return "key is blocked"
	case b.allowed != nil && !b.allowed(req.Domain, req.PublicKey):
		b.refused.WithLabelValues(refusedNotAllowed).Inc()
		return fmt.Sprintf("key is not allowed in domain %q", req.Domain)
	}
	return ""
}

func newRefusedCounter(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wgkex_broker_keys_refused_total",
		Help: "Key exchanges refused with 403 by the block or allow list, by reason.",
	}, []string{"reason"})
	for _, r := range []string{refusedBlocked, refusedNotAllowed} {
		c.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(c)
	}
	return c
}
