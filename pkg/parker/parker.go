// Package parker answers the configuration requests of Parker nodes (v3,
// docs/protocol.md §8): GET /config?pubkey=...&nonce=...&v6mtu=... gets the
// node's prefixes (pkg/ipam), one concentrator per PoP and the site's
// settings as one line of JSON, signed in the signify format the node checks
// with usign.
package parker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex/pkg/ipam"
	"github.com/freifunkMUC/wgkex/pkg/signify"
)

// Defaults of the values a site configures (upstream's).
const (
	DefaultMTU       = 1375
	DefaultKeepalive = 25
	DefaultRetry     = 120
)

// ErrNoConcentrator is what a Gateways source returns when it has nothing
// to offer (no worker online): the node is told to try again later.
var ErrNoConcentrator = errors.New("no concentrator online")

// Concentrator is one gateway a node is to connect to.
type Concentrator struct {
	// Name is the worker's name: what ipam remembers as the node's choice.
	Name string
	// ID is the worker's configured, stable id: the node names its
	// interface wg_c<ID>, so it must never change for a worker.
	ID uint32
	// Address4 is the gateway's IPv4 address on the tunnel (the node's
	// peer address); configured per worker, required.
	Address4 netip.Addr
	// Address6 is the worker's link-local address on the tunnel.
	Address6 netip.Addr
	// Host and Port are the WireGuard endpoint (external address).
	Host      string
	Port      int
	PublicKey string
}

// Gateways chooses the concentrators of a node: one per PoP, the same ones
// as last time (previous, worker names) while they stay usable.
// ErrNoConcentrator when none is online.
type Gateways interface {
	Concentrators(ctx context.Context, key string, previous []string) ([]Concentrator, error)
}

// Addresses leases a node's prefixes; *ipam.Allocator is one.
type Addresses interface {
	Assign(ctx context.Context, key string) (ipam.Assignment, error)
	Remember(ctx context.Context, key string, selected []string) error
}

// Options configure a Handler.
type Options struct {
	IPAM     Addresses
	Gateways Gateways
	// Key signs every reply; nodes check it against the site's
	// config_pubkey.
	Key *signify.PrivateKey
	// MTU caps the tunnel MTU sent to nodes (DefaultMTU when 0); a node
	// gets min(its v6mtu, MTU).
	MTU int
	// Keepalive is wg_keepalive in seconds, Retry how long a node waits
	// before polling again (DefaultKeepalive, DefaultRetry when 0).
	Keepalive int
	Retry     int
	Logger    *slog.Logger
	Now       func() time.Time
	// Registry receives the metrics (nil: none exported).
	Registry prometheus.Registerer
	// Publish, when set, hands the node to its concentrators (e.g. the
	// key and asg.Routes() on MQTT) before the node is answered: a node
	// told to connect must find its peer. An error answers 503 and the
	// node polls again. Nil: the caller installs peers some other way.
	Publish func(ctx context.Context, key string, asg ipam.Assignment, chosen []Concentrator) error
}

// Handler serves GET /config. Create it with New.
type Handler struct {
	ipam      Addresses
	gateways  Gateways
	key       *signify.PrivateKey
	mtu       int
	keepalive int
	retry     int
	log       *slog.Logger
	now       func() time.Time
	metrics   *metrics
	publish   func(ctx context.Context, key string, asg ipam.Assignment, chosen []Concentrator) error
}

// New checks o and returns a Handler.
func New(o Options) (*Handler, error) {
	switch {
	case o.IPAM == nil:
		return nil, errors.New("parker: no address allocator")
	case o.Gateways == nil:
		return nil, errors.New("parker: no gateway source")
	case o.Key == nil:
		return nil, errors.New("parker: no signing key")
	case o.MTU < 0 || o.MTU != 0 && o.MTU < minV6MTU || o.MTU > maxV6MTU:
		return nil, fmt.Errorf("parker: MTU %d: want %d to %d", o.MTU, minV6MTU, maxV6MTU)
	case o.Keepalive < 0 || o.Keepalive > 65535:
		return nil, fmt.Errorf("parker: keepalive %d: want 0 (default) to 65535 seconds", o.Keepalive)
	case o.Retry < 0:
		return nil, fmt.Errorf("parker: retry %d: want a positive number of seconds", o.Retry)
	}
	h := &Handler{
		ipam: o.IPAM, gateways: o.Gateways, key: o.Key,
		mtu: orDefault(o.MTU, DefaultMTU), keepalive: orDefault(o.Keepalive, DefaultKeepalive), retry: orDefault(o.Retry, DefaultRetry),
		log: o.Logger, now: o.Now, publish: o.Publish,
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.now == nil {
		h.now = time.Now
	}
	m, err := newMetrics(o.Registry)
	if err != nil {
		return nil, err
	}
	h.metrics = m
	return h, nil
}

func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// ServeHTTP answers one configuration request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		h.fail(w, resultMethod, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed, use GET")
		return
	}
	req, err := parseQuery(r.URL.RawQuery)
	if err != nil {
		h.log.Debug("rejected parker request", "remote", r.RemoteAddr, "err", err)
		h.fail(w, resultBadRequest, http.StatusBadRequest, err.Error())
		return
	}
	if len(req.ignored) > 0 {
		h.log.Debug("parker request: ignored parameters", "key", req.key, "params", req.ignored)
	}

	ctx := r.Context()
	asg, err := h.ipam.Assign(ctx, req.key)
	switch {
	case errors.Is(err, ipam.ErrPoolExhausted):
		h.log.Error("parker: address pool exhausted", "key", req.key, "err", err)
		h.fail(w, resultPoolExhausted, http.StatusServiceUnavailable, "address pool exhausted: no prefix is free for a new node")
		return
	case errors.Is(err, ipam.ErrUnavailable):
		h.log.Error("parker: address store unavailable", "key", req.key, "err", err)
		h.fail(w, resultStoreUnavailable, http.StatusServiceUnavailable, "address store unavailable, please try again later")
		return
	case err != nil:
		h.log.Error("parker: could not assign addresses", "key", req.key, "err", err)
		h.fail(w, resultError, http.StatusInternalServerError, "could not assign addresses")
		return
	}
	if asg.New {
		h.metrics.allocations.Inc()
		h.log.Info("parker: new node", "key", req.key, "slot", asg.Index, "prefix6", asg.Prefix6)
	}

	gws, err := h.gateways.Concentrators(ctx, req.key, asg.Selected)
	if err != nil && !errors.Is(err, ErrNoConcentrator) {
		h.log.Error("parker: could not choose concentrators", "key", req.key, "err", err)
		h.fail(w, resultError, http.StatusInternalServerError, "could not choose concentrators")
		return
	}
	concs := make([]concentrator, 0, len(gws))
	names := make([]string, 0, len(gws))
	chosen := make([]Concentrator, 0, len(gws))
	for _, g := range gws {
		c, err := concentratorJSON(g)
		if err != nil {
			h.log.Warn("parker: concentrator left out", "worker", g.Name, "id", g.ID, "why", err)
			continue
		}
		concs = append(concs, c)
		names = append(names, g.Name)
		chosen = append(chosen, g)
	}
	if len(concs) == 0 {
		h.log.Warn("parker: no concentrator to hand out", "key", req.key, "offered", len(gws))
		h.fail(w, resultNoConcentrator, http.StatusServiceUnavailable, "no concentrator online, please try again later")
		return
	}
	if h.publish != nil {
		if err := h.publish(ctx, req.key, asg, chosen); err != nil {
			h.log.Error("parker: could not hand the node to its concentrators", "key", req.key, "err", err)
			h.fail(w, resultPublishFailed, http.StatusServiceUnavailable, "the key could not be handed to the concentrators; please try again later")
			return
		}
	}
	// Only a changed choice is written: a repeated poll costs no store write
	// and is not counted as a new peer anywhere.
	if !slices.Equal(names, asg.Selected) {
		if err := h.ipam.Remember(ctx, req.key, names); err != nil {
			// The reply is still right; only the next poll's stickiness
			// hint is lost.
			h.metrics.rememberFailed.Inc()
			h.log.Warn("parker: could not remember the chosen concentrators", "key", req.key, "err", err)
		}
	}

	c := config{
		Nonce:         req.nonce,
		Time:          h.now().Unix(),
		ID:            asg.Index,
		MTU:           min(req.v6mtu, h.mtu),
		Concentrators: concs,
		Range6:        asg.Range6.String(),
		Address6:      asg.Address6.String(),
		Range4:        asg.Range4.String(),
		Address4:      asg.Address4.String(),
		WGKeepalive:   h.keepalive,
		Retry:         h.retry,
	}
	if asg.XLATRange6.IsValid() {
		c.XLATRange6 = asg.XLATRange6.String()
	}
	body, err := encodeConfig(c)
	if err != nil {
		h.log.Error("parker: could not encode reply", "key", req.key, "err", err)
		h.fail(w, resultError, http.StatusInternalServerError, "could not encode the configuration")
		return
	}
	body = append(body, h.key.Sign(body)...)
	h.metrics.result(resultOK).Inc()
	h.log.Debug("parker: config sent", "key", req.key, "slot", asg.Index, "concentrators", names, "remote", r.RemoteAddr)

	hd := w.Header()
	hd.Set("Content-Type", "text/plain")
	hd.Set("Cache-Control", "no-store")
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// fail answers with the broker's error shape {"error":{"message":...}}.
func (h *Handler) fail(w http.ResponseWriter, result string, code int, msg string) {
	h.metrics.result(result).Inc()
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	e.Error.Message = msg
	buf, _ := json.Marshal(e) // a struct of one string cannot fail
	buf = append(buf, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(buf)))
	w.WriteHeader(code)
	w.Write(buf)
}
