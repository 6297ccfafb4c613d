// Package broker is the HTTP side of wgkex: it takes a node's key, publishes
// it to the workers over MQTT and picks the gateway the node should use.
package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/freifunkMUC/wgkex/internal/httpjson"
	"github.com/freifunkMUC/wgkex/internal/text"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// maxBodyBytes bounds a request body; a key exchange needs about 100.
const maxBodyBytes = 4 << 10

// Publisher sends one message and returns once the bus has acknowledged it.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
}

// Options configure a Broker.
type Options struct {
	// Name is this broker's name on the bus: Announce and Withdraw publish
	// its status on wireguard-broker/<Name>/status. "" announces nothing
	// (the broker still counts the others).
	Name    string
	Domains []string
	// Weight gives a worker's configured weight (1 when unlisted).
	Weight    func(worker string) int
	Publisher Publisher
	// KeyQoS is the QoS of published keys: 1, so that an acknowledged
	// request means the server has the key.
	KeyQoS         byte
	PublishTimeout time.Duration
	Logger         *slog.Logger
	Now            func() time.Time
	// Registry receives the Prometheus metrics (nil: none are exported).
	Registry prometheus.Registerer
	// Gatherer, when set, is served on /metrics.
	Gatherer prometheus.Gatherer
	// Connected reports whether the MQTT connection is up (for /readyz and
	// the status page); nil means always.
	Connected func() bool

	// KnownWorkers are the workers listed in the configuration (workers:),
	// compared case-insensitively: their state is always kept, however many
	// other names appear on the bus.
	KnownWorkers []string
	// KnownWorkersOnly ignores (and counts) messages from workers not in
	// KnownWorkers, so made-up names on the bus change nothing.
	KnownWorkersOnly bool
	// WorkerExpiry: an unlisted worker that cannot be chosen (offline, or
	// without a data message) is forgotten this long after its last message
	// (0: 10 minutes). It announces itself again when it returns.
	WorkerExpiry time.Duration
	// MaxConnections bounds the HTTP connections Serve keeps open at once
	// (0: 4096; negative: no bound).
	MaxConnections int

	// Blocked reports a key the operator has blocked: it is refused with
	// 403 and not published. Nil blocks nothing.
	Blocked func(key string) bool
	// Allowed reports whether key may register on domain (a per-domain
	// allow list); a refused key gets 403 and is not published. Nil allows
	// every key.
	Allowed func(domain, key string) bool
	// Limit wraps the two key exchange handlers, e.g. with rate limits.
	// Nil: no limit.
	Limit func(http.Handler) http.Handler

	// Sticky selects gateways by weighted rendezvous hashing of the node's
	// key (docs/protocol.md §4): the same gateway on every request while it
	// is a candidate and at most StickyTolerance percent above its weighted
	// share; else, and without Sticky, the least loaded one.
	Sticky          bool
	StickyTolerance float64
}

// Broker serves the key exchange API. Create it with New.
type Broker struct {
	name    string
	domains map[string]bool
	names   []string
	pub     Publisher
	qos     byte
	timeout time.Duration
	log     *slog.Logger
	state   *state
	mux     *http.ServeMux
	metrics *metrics
	limits  limitMetrics
	isUp    func() bool
	now     func() time.Time
	maxConn int
	open    atomic.Int64 // HTTP connections open now (Serve)
	blocked func(key string) bool
	allowed func(domain, key string) bool
	refused *prometheus.CounterVec // reason

	// Messages from workers the table does not take are logged at most
	// once per ignoredLogGap, with the count since.
	ignoredMu     sync.Mutex
	ignoredLogged time.Time
	ignoredSince  int
}

// New makes a Broker.
func New(o Options) *Broker {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Weight == nil {
		o.Weight = func(string) int { return 1 }
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = defaultMaxConnections
	}
	b := &Broker{
		name:    o.Name,
		domains: make(map[string]bool, len(o.Domains)),
		names:   append([]string(nil), o.Domains...),
		pub:     o.Publisher,
		qos:     o.KeyQoS,
		timeout: o.PublishTimeout,
		log:     o.Logger,
		state: newState(stateConfig{weight: o.Weight, now: o.Now, listed: o.KnownWorkers,
			knownOnly: o.KnownWorkersOnly, expiry: o.WorkerExpiry,
			sticky: o.Sticky, tolerance: o.StickyTolerance, self: o.Name}),
		mux:     http.NewServeMux(),
		isUp:    o.Connected,
		blocked: o.Blocked,
		allowed: o.Allowed,
		now:     o.Now,
		maxConn: o.MaxConnections,
	}
	b.metrics = newMetrics(o.Registry, b)
	b.refused = newRefusedCounter(o.Registry)
	registerLimitMetrics(o.Registry, b)
	switch {
	case o.KnownWorkersOnly && len(o.KnownWorkers) == 0:
		b.log.Warn("known_workers_only is set but no workers are listed: every worker is ignored")
	case o.KnownWorkersOnly:
		b.log.Info("only the workers listed under workers are used (known_workers_only)", "workers", o.KnownWorkers)
	}
	for _, d := range o.Domains {
		b.domains[d] = true
	}
	m := b.metrics
	limit := o.Limit
	if limit == nil {
		limit = func(h http.Handler) http.Handler { return h }
	}
	b.mux.HandleFunc("/api/v1/wg/key/exchange", m.instrument("v1", limit(b.keyExchange(false)).ServeHTTP))
	b.mux.HandleFunc("/api/v2/wg/key/exchange", m.instrument("v2", limit(b.keyExchange(true)).ServeHTTP))
	b.mux.HandleFunc("/api/v1/status", m.instrument("status", b.statusJSON))
	b.mux.HandleFunc("/healthz", m.instrument("healthz", healthz))
	b.mux.HandleFunc("/readyz", m.instrument("readyz", b.readyz))
	if o.Gatherer != nil {
		b.mux.Handle("/metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	}
	b.mux.HandleFunc("/{$}", m.instrument("index", b.index))
	b.mux.HandleFunc("/", m.instrument("other", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Error(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	}))
	return b
}

func (b *Broker) connected() bool { return b.isUp == nil || b.isUp() }

// ServeHTTP implements http.Handler.
func (b *Broker) ServeHTTP(w http.ResponseWriter, r *http.Request) { b.mux.ServeHTTP(w, r) }

// Subscriptions are the topic filters the broker needs (docs/protocol.md §3).
func Subscriptions() []string {
	return []string{wgkex.FilterMetrics, wgkex.FilterWorkerStatus, wgkex.FilterWorkerData, wgkex.FilterBrokerStatus}
}

// Announce publishes this broker's status 1, retained, so that the other
// brokers count it. Call it on every connection, once the subscriptions
// are in (the connection's will, status 0, covers a crash). Without a name
// it does nothing.
func (b *Broker) Announce(ctx context.Context) error {
	return b.publishStatus(ctx, wgkex.StatusOnline)
}

// Withdraw publishes this broker's status 0, retained: call it before a
// clean disconnect, which does not send the will.
func (b *Broker) Withdraw(ctx context.Context) error {
	return b.publishStatus(ctx, wgkex.StatusOffline)
}

func (b *Broker) publishStatus(ctx context.Context, status string) error {
	if b.name == "" {
		return nil
	}
	if err := b.pub.Publish(ctx, wgkex.BrokerStatusTopic(b.name), []byte(status), 1, true); err != nil {
		return fmt.Errorf("publish broker status %s: %w", status, err)
	}
	return nil
}

// decodeRequest parses a key exchange body, whatever its Content-Type
// (Gluon posts JSON as application/x-www-form-urlencoded), and validates it.
func decodeRequest(body []byte, known func(string) bool) (wgkex.ExchangeRequest, error) {
	var req wgkex.ExchangeRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return req, fmt.Errorf("invalid JSON body: %v", err)
	}
	if req.Domain == "" {
		return req, errors.New(`missing "domain"`)
	}
	if !known(req.Domain) {
		return req, fmt.Errorf("unknown domain %q", text.Truncate(req.Domain, 64))
	}
	if req.PublicKey == "" {
		return req, errors.New(`missing "public_key"`)
	}
	if !wgkex.ValidKey(req.PublicKey) {
		return req, fmt.Errorf("invalid public key %q: want 44 characters of base64 (a WireGuard public key)", text.Truncate(req.PublicKey, 64))
	}
	return req, nil
}

func (b *Broker) keyExchange(v2 bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost && r.Method != http.MethodGet {
			w.Header().Set("Allow", "POST, GET")
			httpjson.Error(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed, use POST")
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				httpjson.Error(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", maxBodyBytes))
				return
			}
			httpjson.Error(w, http.StatusBadRequest, "could not read request body")
			return
		}
		req, err := decodeRequest(body, func(d string) bool { return b.domains[d] })
		if err != nil {
			b.log.Debug("rejected key exchange", "remote", r.RemoteAddr, "err", err)
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		if msg := b.refusal(req); msg != "" {
			b.log.Info("key refused", "domain", req.Domain, "key", req.PublicKey, "remote", r.RemoteAddr, "why", msg)
			httpjson.Error(w, http.StatusForbidden, msg)
			return
		}

		ctx, cancel := context.WithTimeout(r.Context(), b.timeout)
		err = b.pub.Publish(ctx, wgkex.KeyTopic(req.Domain), []byte(req.PublicKey), b.qos, false)
		cancel()
		if err != nil {
			b.metrics.pubFailed.Inc()
			b.log.Error("could not publish key", "domain", req.Domain, "key", req.PublicKey, "err", err)
			httpjson.Error(w, http.StatusServiceUnavailable, "the key could not be handed to the gateways (MQTT server unreachable); please try again later")
			return
		}
		b.metrics.published.WithLabelValues(req.Domain).Inc()
		b.log.Info("key published", "domain", req.Domain, "key", req.PublicKey, "remote", r.RemoteAddr)

		if !v2 {
			httpjson.Write(w, http.StatusOK, wgkex.ReplyV1{Message: "OK"})
			return
		}
		choice, err := b.state.choose(req.Domain, req.PublicKey)
		switch {
		case errors.Is(err, errNoGateway):
			b.log.Warn("no gateway online", "domain", req.Domain)
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		case err != nil:
			b.log.Error("gateways online but none has sent its data message", "domain", req.Domain)
			httpjson.Error(w, http.StatusInternalServerError, err.Error())
			return
		}
		b.metrics.choices.WithLabelValues(choice.Worker, req.Domain).Inc()
		if b.state.sticky {
			b.metrics.stickyRule(choice.Hashed).Inc()
		}
		b.log.Debug("gateway chosen", "domain", req.Domain, "worker", choice.Worker, "hashed", choice.Hashed)
		d := choice.Data
		// A Python worker may publish its link address with a prefix
		// length; nodes append /128 to AllowedIPs[0] and use it as the
		// VXLAN remote, so it must be a bare address.
		ll := d.LinkAddress
		if p, err := netip.ParsePrefix(ll); err == nil {
			ll = p.Addr().String()
		}
		// Nothing beside Endpoint: a "Message" makes Gluon nodes read the
		// reply as v1 (docs/protocol.md §2).
		httpjson.Write(w, http.StatusOK, wgkex.ReplyV2{Endpoint: wgkex.Endpoint{
			Address:     d.ExternalAddress,
			Port:        strconv.Itoa(d.Port),
			AllowedIPs:  []string{ll},
			PublicKey:   d.PublicKey,
			LinkAddress: ll,
		}})
	}
}

// HandleMessage takes one message from the bus. Everything in it is
// untrusted input: bad messages are logged and dropped.
func (b *Broker) HandleMessage(topic string, payload []byte) {
	t, err := wgkex.ParseTopic(topic)
	if err != nil {
		b.log.Warn("dropping MQTT message", "topic", topic, "err", err)
		return
	}
	if t.Kind != wgkex.TopicStatus && t.Kind != wgkex.TopicBrokerStatus && !b.domains[t.Domain] {
		b.log.Debug("dropping MQTT message for a domain not configured here", "topic", topic)
		return
	}
	switch t.Kind {
	case wgkex.TopicBrokerStatus:
		online, err := parseOnline(payload)
		if err != nil {
			b.log.Warn("dropping MQTT message", "topic", topic, "err", err)
			return
		}
		if b.keep(topic, b.state.setBrokerOnline(t.Broker, online)) {
			b.log.Info("broker status", "broker", t.Broker, "online", online, "brokers_online", b.state.onlineBrokers())
		}
	case wgkex.TopicStatus:
		online, err := parseOnline(payload)
		if err != nil {
			b.log.Warn("dropping MQTT message", "topic", topic, "err", err)
			return
		}
		if b.keep(topic, b.state.setOnline(t.Worker, online)) {
			b.log.Info("worker status", "worker", t.Worker, "online", online)
		}
	case wgkex.TopicData:
		if len(payload) == 0 {
			b.keep(topic, b.state.setData(t.Worker, t.Domain, nil))
			return
		}
		d, err := wgkex.ParseWorkerData(payload)
		if err != nil {
			b.log.Warn("dropping MQTT message", "topic", topic, "err", err)
			return
		}
		if b.keep(topic, b.state.setData(t.Worker, t.Domain, &d)) {
			b.log.Info("worker data", "worker", t.Worker, "domain", t.Domain, "address", d.ExternalAddress, "port", d.Port)
		}
	case wgkex.TopicMetric:
		if t.Metric != wgkex.MetricConnectedPeers {
			return
		}
		n := -1
		if len(payload) > 0 {
			if n, err = wgkex.ParseConnectedPeers(payload); err != nil {
				b.log.Warn("dropping MQTT message", "topic", topic, "err", err)
				return
			}
		}
		if b.keep(topic, b.state.setConnectedPeers(t.Worker, t.Domain, n)) {
			b.log.Debug("worker metric", "worker", t.Worker, "domain", t.Domain, "connected_peers", n)
		}
	default:
		b.log.Debug("ignoring MQTT message", "topic", topic)
	}
}

// ignoredLogGap spaces out the log lines about ignored workers: a flood of
// made-up names must not become a flood of log lines.
const ignoredLogGap = time.Minute

// keep logs a state update the state refused; it reports whether it took.
func (b *Broker) keep(topic string, err error) bool {
	switch {
	case err == nil:
		return true
	case errors.Is(err, errUnlistedWorker), errors.Is(err, errTooManyWorkers), errors.Is(err, errTooManyBrokers):
		b.log.Debug("dropping MQTT message", "topic", topic, "err", err)
		b.ignoredMu.Lock()
		defer b.ignoredMu.Unlock()
		b.ignoredSince++
		if now := b.now(); b.ignoredLogged.IsZero() || now.Sub(b.ignoredLogged) >= ignoredLogGap {
			b.log.Warn("ignoring MQTT messages from workers the broker does not keep (see wgkex_broker_worker_messages_ignored_total)",
				"topic", topic, "err", err, "ignored_since_last_line", b.ignoredSince)
			b.ignoredLogged, b.ignoredSince = now, 0
		}
	default:
		b.log.Warn("dropping MQTT message", "topic", topic, "err", err)
	}
	return false
}

// parseOnline reads a status payload; an empty one clears a retained
// status, which means offline.
func parseOnline(payload []byte) (bool, error) {
	if len(payload) == 0 {
		return false, nil
	}
	return wgkex.ParseStatus(payload)
}
