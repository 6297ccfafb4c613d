// Package worker installs the keys that nodes publish on the bus as
// WireGuard peers, routes and VXLAN FDB entries (docs/protocol.md §5), reports the
// gateway's state back, and removes stale peers. It reaches the kernel only
// through the WireGuard and Kernel interfaces, and reads time from an
// injectable clock.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// WireGuard is the part of wgctrl the worker uses.
type WireGuard interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
}

// Kernel is the part of rtnetlink the worker uses (see pkg/netlink).
type Kernel interface {
	LinkIndex(name string) (int, error)
	ReplaceRoute(dev int, dst netip.Prefix) error
	DeleteRoute(dev int, dst netip.Prefix) error
	Routes(dev int) ([]netip.Prefix, error)
	AppendFDB(vx int, dst netip.Addr, via int) error
	DeleteFDB(vx int, dst netip.Addr, via int) error
	FDB(vx int) ([]kernel.FDBEntry, error)
	Addrs(dev int) ([]netip.Prefix, error)
}

// Publisher sends one message to the bus.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
}

// Options configure a Worker.
type Options struct {
	Name         string // MQTT worker name
	ExternalName string // what nodes dial; default Name
	Domains      map[string]wgkex.Interfaces

	WireGuard WireGuard
	Kernel    Kernel
	Publisher Publisher

	MetricsInterval time.Duration // default 60 s
	CleanupInterval time.Duration // default 1 h
	PeerTimeout     time.Duration // default 3 h
	NewPeerGrace    time.Duration // default (0) 10 min; negative: no grace at all
	// HandshakeWindow: a peer counts as connected when its last handshake
	// is this recent (default 3 min, as the original).
	HandshakeWindow time.Duration
	// LinkCheckInterval is how often missing or recreated interfaces are
	// looked for (default 5 s).
	LinkCheckInterval time.Duration

	BatchSize int // peers per WireGuard configure call, default 512
	QueueSize int // keys buffered between MQTT and the kernel, default 65536

	Now    func() time.Time
	Logger *slog.Logger
	// Registry receives the Prometheus metrics (nil: none are exported).
	Registry prometheus.Registerer
	// Connected reports whether the MQTT connection is up (readyz, metrics).
	Connected func() bool
}

// Worker is the gateway side of wgkex. Create it with New.
type Worker struct {
	o       Options
	log     *slog.Logger
	queue   chan job
	started time.Time

	announce  chan struct{} // cap 1: a (re)announcement is wanted
	linkCheck chan struct{} // cap 1: a look for interfaces is wanted

	mu      sync.Mutex // guards domains and serialises kernel work
	domains map[string]*domain
	names   []string // sorted domain names

	stats   Stats
	metrics *metrics
}

type job struct {
	domain, key string
	received    time.Time
}

// domain is what the worker knows of one domain's interfaces.
type domain struct {
	name    string
	ifs     wgkex.Interfaces
	wgIndex int // 0 while missing
	vxIndex int
	// seen holds when this worker installed a key, or first found it on
	// the device: new peers get NewPeerGrace counted from then.
	seen map[string]time.Time
	// pending holds keys that arrived while the interfaces were missing.
	pending map[string]time.Time
	missing string // last reason the interfaces were unusable
}

// maxPending bounds the keys kept for a domain whose interfaces are gone.
const maxPending = 100000

// Stats are counters for logs, tests and metrics.
type Stats struct {
	mu             sync.Mutex
	Installed      int64
	Failed         int64
	Removed        int64
	Dropped        int64 // invalid messages
	latencies      []time.Duration
	latencyCeiling int
}

// New makes a Worker.
func New(o Options) *Worker {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ExternalName == "" {
		o.ExternalName = o.Name
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.MetricsInterval, time.Minute)
	def(&o.CleanupInterval, time.Hour)
	def(&o.PeerTimeout, 3*time.Hour)
	def(&o.HandshakeWindow, 3*time.Minute)
	def(&o.LinkCheckInterval, 5*time.Second)
	switch {
	case o.NewPeerGrace == 0:
		o.NewPeerGrace = 10 * time.Minute
	case o.NewPeerGrace < 0:
		o.NewPeerGrace = 0
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 512
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 65536
	}
	w := &Worker{
		o:         o,
		log:       o.Logger,
		queue:     make(chan job, o.QueueSize),
		started:   o.Now(),
		announce:  make(chan struct{}, 1),
		linkCheck: make(chan struct{}, 1),
		domains:   map[string]*domain{},
	}
	w.stats.latencyCeiling = 100000
	for name, ifs := range o.Domains {
		w.domains[name] = &domain{name: name, ifs: ifs, seen: map[string]time.Time{}, pending: map[string]time.Time{}}
		w.names = append(w.names, name)
	}
	sort.Strings(w.names)
	w.metrics = newMetrics(o.Registry, w)
	return w
}

// Subscriptions are the topic filters the worker needs.
func (w *Worker) Subscriptions() []string {
	out := make([]string, 0, len(w.names))
	for _, d := range w.names {
		out = append(out, wgkex.KeyFilter(d))
	}
	return out
}

// HandleMessage takes a key message from the bus. It validates it and
// queues it for the kernel; it never touches the kernel itself, so the MQTT
// connection keeps up with its keepalives under any load. When the queue is
// full it waits (back-pressure on the bus) until ctx ends.
func (w *Worker) HandleMessage(ctx context.Context, topic string, payload []byte) {
	t, err := wgkex.ParseTopic(topic)
	if err == nil && t.Kind != wgkex.TopicKey {
		err = fmt.Errorf("not a key topic: %q", topic)
	}
	if err != nil {
		w.drop("dropping MQTT message", "topic", topic, "err", err)
		return
	}
	if _, ok := w.domains[t.Domain]; !ok {
		w.drop("dropping key for a domain not configured here", "topic", topic)
		return
	}
	key := strings.TrimSpace(string(payload))
	if !wgkex.ValidKey(key) {
		w.drop("dropping invalid key", "domain", t.Domain, "payload", truncate(key, 64))
		return
	}
	select {
	case w.queue <- job{domain: t.Domain, key: key, received: time.Now()}:
	case <-ctx.Done():
	}
}

func (w *Worker) drop(msg string, args ...any) {
	w.stats.mu.Lock()
	w.stats.Dropped++
	w.stats.mu.Unlock()
	w.log.Warn(msg, args...)
}

// RequestAnnounce asks Run to publish data, status and metrics; call it
// whenever the MQTT connection is (re)established and subscribed.
func (w *Worker) RequestAnnounce() {
	select {
	case w.announce <- struct{}{}:
	default:
	}
}

// Run does the worker's work until ctx ends: it repairs the domains'
// routes and FDB, installs queued keys in batches, announces, publishes
// metrics, cleans up stale peers and watches for interfaces (re)appearing.
func (w *Worker) Run(ctx context.Context) error {
	w.CheckLinks(ctx)
	metrics := time.NewTicker(w.o.MetricsInterval)
	defer metrics.Stop()
	cleanup := time.NewTicker(w.o.CleanupInterval)
	defer cleanup.Stop()
	links := time.NewTicker(w.o.LinkCheckInterval)
	defer links.Stop()
	for {
		select {
		case <-ctx.Done():
			w.flushQueue()
			return nil
		case j := <-w.queue:
			w.InstallBatch(w.drain(j))
		case <-w.announce:
			w.Announce(ctx)
		case <-metrics.C:
			w.PublishMetrics(ctx)
		case <-cleanup.C:
			w.Cleanup()
		case <-links.C:
			w.CheckLinks(ctx)
		case <-w.linkCheck:
			w.CheckLinks(ctx)
		}
	}
}

// flushQueue installs what is still queued at shutdown: those keys were
// acknowledged to the MQTT server already and would be lost otherwise.
func (w *Worker) flushQueue() {
	for {
		select {
		case j := <-w.queue:
			w.InstallBatch(w.drain(j))
		default:
			return
		}
	}
}

// drain collects the keys that are already queued behind first, up to a
// bounded batch.
func (w *Worker) drain(first job) []job {
	batch := []job{first}
	limit := 4 * w.o.BatchSize
	for len(batch) < limit {
		select {
		case j := <-w.queue:
			batch = append(batch, j)
		default:
			return batch
		}
	}
	return batch
}

// Install installs keys on domain now (for callers outside Run, such as
// tests and tools) and returns the error of each key that failed.
func (w *Worker) Install(domainName string, keys ...string) map[string]error {
	jobs := make([]job, 0, len(keys))
	for _, k := range keys {
		jobs = append(jobs, job{domain: domainName, key: k, received: time.Now()})
	}
	return w.InstallBatch(jobs)
}

// InstallBatch installs a batch of keys: one WireGuard configure call per
// interface per BatchSize peers (duplicates coalesced), then the route and
// FDB entry of each. A failing key never holds up the others.
func (w *Worker) InstallBatch(jobs []job) map[string]error {
	w.mu.Lock()
	defer w.mu.Unlock()
	byDomain := map[string][]job{}
	seen := map[[2]string]bool{}
	for _, j := range jobs {
		if d := w.domains[j.domain]; d == nil {
			continue
		}
		k := [2]string{j.domain, j.key}
		if seen[k] {
			continue
		}
		seen[k] = true
		byDomain[j.domain] = append(byDomain[j.domain], j)
	}
	failed := map[string]error{}
	for name, js := range byDomain {
		d := w.domains[name]
		if d.wgIndex == 0 {
			// Only CheckLinks brings a domain up (it repairs first), so
			// keep the keys for it and ask for a check now.
			for _, j := range js {
				if len(d.pending) < maxPending {
					d.pending[j.key] = j.received
				}
			}
			w.log.Error("interfaces missing; keys kept until they appear", "domain", name,
				"wireguard", d.ifs.WireGuard, "vxlan", d.ifs.VXLAN, "keys", len(js), "pending", len(d.pending), "reason", d.missing)
			select {
			case w.linkCheck <- struct{}{}:
			default:
			}
			continue
		}
		for start := 0; start < len(js); start += w.o.BatchSize {
			end := min(start+w.o.BatchSize, len(js))
			for k, err := range w.installChunk(d, js[start:end]) {
				failed[k] = err
			}
		}
	}
	return failed
}

func (w *Worker) installChunk(d *domain, js []job) map[string]error {
	failed := map[string]error{}
	peers := make([]wgtypes.PeerConfig, 0, len(js))
	for _, j := range js {
		pk, err := wgtypes.ParseKey(j.key)
		if err != nil {
			failed[j.key] = fmt.Errorf("key %s: %w", j.key, err)
			continue
		}
		peers = append(peers, peerConfig(pk, j.key))
	}
	if err := w.o.WireGuard.ConfigureDevice(d.ifs.WireGuard, wgtypes.Config{Peers: peers}); err != nil {
		// Find the culprit: one peer at a time.
		w.log.Warn("batch peer update failed; retrying one by one", "domain", d.name, "interface", d.ifs.WireGuard, "peers", len(peers), "err", err)
		for _, p := range peers {
			if err := w.o.WireGuard.ConfigureDevice(d.ifs.WireGuard, wgtypes.Config{Peers: []wgtypes.PeerConfig{p}}); err != nil {
				failed[p.PublicKey.String()] = fmt.Errorf("add peer %s on %s: %w", p.PublicKey, d.ifs.WireGuard, err)
			}
		}
	}
	now := w.o.Now()
	for _, j := range js {
		if _, bad := failed[j.key]; bad {
			continue
		}
		if err := w.addEntries(d, j.key); err != nil {
			failed[j.key] = err
			continue
		}
		if _, ok := d.seen[j.key]; !ok {
			d.seen[j.key] = now
		}
		delete(d.pending, j.key)
		lat := time.Since(j.received)
		w.stats.record(lat)
		w.metrics.observeInstall(d.name, lat)
		w.log.Debug("key installed", "domain", d.name, "key", j.key, "ll", wgkex.LinkLocal(j.key))
	}
	for k, err := range failed {
		w.log.Error("could not install key", "domain", d.name, "interface", d.ifs.WireGuard, "key", k, "err", err)
	}
	w.metrics.failed.WithLabelValues(d.name).Add(float64(len(failed)))
	w.stats.mu.Lock()
	w.stats.Installed += int64(len(js) - len(failed))
	w.stats.Failed += int64(len(failed))
	w.stats.mu.Unlock()
	return failed
}

func peerConfig(pk wgtypes.Key, key string) wgtypes.PeerConfig {
	ll := wgkex.LinkLocal(key)
	return wgtypes.PeerConfig{
		PublicKey:         pk,
		ReplaceAllowedIPs: true,
		AllowedIPs:        []net.IPNet{{IP: net.IP(ll.AsSlice()), Mask: net.CIDRMask(128, 128)}},
	}
}

// addEntries installs the route and FDB entry of key (steps 3 and 4).
func (w *Worker) addEntries(d *domain, key string) error {
	ll := wgkex.LinkLocal(key)
	if err := w.o.Kernel.ReplaceRoute(d.wgIndex, netip.PrefixFrom(ll, 128)); err != nil {
		return fmt.Errorf("key %s: route on %s: %w", key, d.ifs.WireGuard, err)
	}
	if err := w.o.Kernel.AppendFDB(d.vxIndex, ll, d.wgIndex); err != nil {
		return fmt.Errorf("key %s: fdb entry on %s: %w", key, d.ifs.VXLAN, err)
	}
	return nil
}

// removeEntries undoes addEntries, FDB first; what is gone already is fine.
func (w *Worker) removeEntries(d *domain, key string) error {
	ll := wgkex.LinkLocal(key)
	var errs []error
	if err := w.o.Kernel.DeleteFDB(d.vxIndex, ll, d.wgIndex); err != nil {
		errs = append(errs, fmt.Errorf("key %s: fdb entry on %s: %w", key, d.ifs.VXLAN, err))
	}
	if err := w.o.Kernel.DeleteRoute(d.wgIndex, netip.PrefixFrom(ll, 128)); err != nil {
		errs = append(errs, fmt.Errorf("key %s: route on %s: %w", key, d.ifs.WireGuard, err))
	}
	return errors.Join(errs...)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
