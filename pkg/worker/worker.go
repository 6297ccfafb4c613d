// Package worker installs the keys that nodes publish on the bus as
// WireGuard peers, routes and VXLAN FDB entries (docs/protocol.md §5), reports the
// gateway's state back, and removes stale peers. It reaches the kernel only
// through the WireGuard and Kernel interfaces, and reads time from an
// injectable clock.
//
// A key message is acknowledged to the MQTT server only once its key is
// installed, or kept in a journal file until its domain's interfaces exist:
// a crash or a stop never loses a key the server was told was taken care
// of (see Run).
package worker

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/internal/text"
	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
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

	// MQTT is the connection to the bus (server, credentials, TLS,
	// keepalive). Run completes it: client id wgkex-worker-<Name>,
	// persistent session, will, subscriptions, manual acknowledgement
	// with ReceiveMaximum. Without a Server the worker has no bus of its
	// own, and Publisher and Connected stand in (tests, tools).
	MQTT mqtt.Options
	// ReceiveMaximum is how many key messages the MQTT server may send
	// ahead of their acknowledgement (default 16384).
	ReceiveMaximum uint16
	// StateDir holds the journal of keys acknowledged but not installed
	// yet; "" keeps none (such keys are then held unacknowledged).
	StateDir string
	// MetricsListen is the address of /metrics, /healthz and /readyz
	// ("" none); Gatherer is what /metrics shows.
	MetricsListen string
	Gatherer      prometheus.Gatherer
	// StopTimeout bounds how long Run installs queued keys when it stops
	// (default 10 s); keys left then stay unacknowledged.
	StopTimeout time.Duration

	// Publisher and Connected replace the MQTT client when MQTT.Server is
	// nil.
	Publisher Publisher
	Connected func() bool

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
}

const (
	// sessionExpiry is how long the MQTT server keeps a stopped worker's
	// session (and queues keys for it).
	sessionExpiry = 7 * 24 * time.Hour
	// defaultReceiveMaximum is the window of unacknowledged keys: eight
	// of the largest batches, so the worker never waits for the server;
	// and the MQTT server holds a burst of this many keys plus its queue
	// bound (Mosquitto: 1,000 by default) for a connected worker without
	// dropping any. A key in flight costs the worker about 2 KB.
	defaultReceiveMaximum = 16384
	// maxPending bounds the keys kept (journal or memory) per domain.
	maxPending = 100000
)

// timing holds the worker's retry and pacing intervals (tests shorten them).
type timing struct {
	// Keys the kernel refused are retried, unacknowledged, with a backoff
	// from retryBase for retryHold; then they are kept in the journal
	// (acknowledged) and retried every pendingRetry, until they have
	// failed for maxFailing, when they are given up (the node sends its
	// key again at its next check).
	retryBase, retryHold, pendingRetry, maxFailing time.Duration
	// restore is the least time between two announcements made because
	// another client overwrote this worker's messages on the bus.
	restore time.Duration
}

var defaultTiming = timing{
	retryBase:    250 * time.Millisecond,
	retryHold:    10 * time.Second,
	pendingRetry: 30 * time.Second,
	maxFailing:   time.Hour,
	restore:      time.Second,
}

// Worker is the gateway side of wgkex. Create it with New.
type Worker struct {
	o       Options
	log     *slog.Logger
	queue   chan job
	started time.Time
	client  *mqtt.Client // nil without a bus of its own

	announce    chan struct{} // cap 1: a (re)announcement is wanted
	overwritten chan struct{} // cap 1: another client overwrote our status or data
	linkCheck   chan struct{} // cap 1: a look for interfaces is wanted

	// stop is closed when the worker takes no more messages (stopped);
	// receiving counts the receive calls that may still queue a key.
	stop      chan struct{}
	stopMu    sync.Mutex
	stopped   bool
	receiving sync.WaitGroup

	mu      sync.Mutex // guards domains, retry and journal, and serialises kernel work
	domains map[string]*domain
	names   []string // sorted domain names
	retry   []job    // keys the kernel refused, held unacknowledged for a while
	journal *journal // nil: keys cannot be kept durably

	own    *ownMessages // status and data as this worker published them
	timing timing

	stats   stats
	metrics *metrics
}

// job is one key to install, with what acknowledges its message.
type job struct {
	domain, key string
	received    time.Time
	// ack acknowledges the key's message; nil when there is nothing to
	// acknowledge (QoS 0, a key from the journal, installNow).
	ack   func() error
	retry *retryState // nil until the kernel refuses the key
}

// retryState is how a key the kernel refused is retried.
type retryState struct {
	failedSince, due time.Time
	attempts         int
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
	// pending holds the keys acknowledged but not installed: they arrived
	// while the interfaces were missing, or the kernel kept refusing them.
	pending map[string]pendingKey
	// held are keys that wait for the interfaces but could not be written
	// to the journal: they stay unacknowledged, so the server keeps them.
	held    []job
	missing string // last reason the interfaces were unusable
}

type pendingKey struct {
	received     time.Time
	journaled    bool      // on disk; false when the journal failed (QoS 0 keys only)
	failingSince time.Time // zero while it only waits for the interfaces
}

// stats are counters for logs, tests and metrics.
type stats struct {
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
	def(&o.StopTimeout, 10*time.Second)
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
	if o.ReceiveMaximum == 0 {
		o.ReceiveMaximum = defaultReceiveMaximum
	}
	w := &Worker{
		o:           o,
		log:         o.Logger,
		queue:       make(chan job, o.QueueSize),
		started:     o.Now(),
		announce:    make(chan struct{}, 1),
		overwritten: make(chan struct{}, 1),
		linkCheck:   make(chan struct{}, 1),
		stop:        make(chan struct{}),
		domains:     map[string]*domain{},
		own:         newOwnMessages(),
		timing:      defaultTiming,
	}
	w.stats.latencyCeiling = 100000
	for name, ifs := range o.Domains {
		w.domains[name] = &domain{name: name, ifs: ifs, seen: map[string]time.Time{}, pending: map[string]pendingKey{}}
		w.names = append(w.names, name)
	}
	sort.Strings(w.names)
	if o.StateDir != "" {
		w.journal = newJournal(o.StateDir, o.Name)
	}
	if o.MQTT.Server != nil {
		w.client = mqtt.New(w.mqttOptions())
		w.o.Publisher, w.o.Connected = w.client, w.client.Connected
	}
	w.metrics = newMetrics(o.Registry, w)
	return w
}

// mqttOptions completes the connection settings: a persistent session, so
// that keys published while the worker is away are delivered when it is
// back; manual acknowledgement; the will; the key topics of every domain
// and the worker's own status and data topics (to notice them overwritten).
func (w *Worker) mqttOptions() mqtt.Options {
	mo := w.o.MQTT
	mo.ClientID = "wgkex-worker-" + w.o.Name
	mo.Persistent, mo.SessionExpiry = true, sessionExpiry
	mo.ManualAck, mo.ReceiveMaximum = true, w.o.ReceiveMaximum
	mo.Will = &mqtt.Will{Topic: wgkex.StatusTopic(w.o.Name), Payload: []byte(wgkex.StatusOffline), QoS: 1, Retain: true}
	if mo.Logger == nil {
		mo.Logger = w.log
	}
	mo.Subscriptions = nil
	for _, d := range w.names {
		mo.Subscriptions = append(mo.Subscriptions, mqtt.Subscription{Filter: wgkex.KeyFilter(d), QoS: 1})
	}
	mo.Subscriptions = append(mo.Subscriptions, mqtt.Subscription{Filter: wgkex.StatusTopic(w.o.Name), QoS: 1})
	for _, d := range w.names {
		mo.Subscriptions = append(mo.Subscriptions, mqtt.Subscription{Filter: wgkex.DataTopic(w.o.Name, d), QoS: 1})
	}
	mo.OnMessage = func(m mqtt.Message) { w.receive(context.Background(), m.Topic, m.Payload, m.Ack) }
	mo.OnReady = func(context.Context) { w.requestAnnounce() }
	return mo
}

// handleMessage takes a message as if it came from the bus, with nothing
// to acknowledge (tests, tools). It waits while the queue is full, until
// ctx ends.
func (w *Worker) handleMessage(ctx context.Context, topic string, payload []byte) {
	w.receive(ctx, topic, payload, nil)
}

// receive takes a message from the bus. It validates it and queues a key
// for the kernel; it never touches the kernel itself, so the MQTT
// connection keeps up with its keepalives under any load. When the queue is
// full it waits (back-pressure on the bus). What it drops (invalid, another
// domain) it acknowledges at once; keys are acknowledged once installed or
// kept. After the worker stopped taking messages, keys are neither queued
// nor acknowledged: the server sends them again to the next connection.
func (w *Worker) receive(ctx context.Context, topic string, payload []byte, ack func() error) {
	t, err := wgkex.ParseTopic(topic)
	own := err == nil && (t.Kind == wgkex.TopicStatus || t.Kind == wgkex.TopicData) && t.Worker == w.o.Name
	if !w.enterReceive() {
		if own {
			// The echo of the goodbye: acknowledged, so that the next
			// run does not get it again.
			w.acknowledge(ack)
		}
		return
	}
	defer w.receiving.Done()
	if own {
		w.watch(topic, payload)
		w.acknowledge(ack)
		return
	}
	if err == nil && t.Kind != wgkex.TopicKey {
		err = fmt.Errorf("not a key topic: %q", topic)
	}
	if err != nil {
		w.drop(ack, "dropping MQTT message", "topic", topic, "err", err)
		return
	}
	if _, ok := w.domains[t.Domain]; !ok {
		w.drop(ack, "dropping key for a domain not configured here", "topic", topic)
		return
	}
	key := strings.TrimSpace(string(payload))
	if !wgkex.ValidKey(key) {
		w.drop(ack, "dropping invalid key", "domain", t.Domain, "payload", text.Truncate(key, 64))
		return
	}
	select {
	case w.queue <- job{domain: t.Domain, key: key, received: time.Now(), ack: ack}:
	case <-w.stop:
	case <-ctx.Done():
	}
}

func (w *Worker) drop(ack func() error, msg string, args ...any) {
	w.stats.mu.Lock()
	w.stats.Dropped++
	w.stats.mu.Unlock()
	w.log.Warn(msg, args...)
	w.acknowledge(ack)
}

// acknowledge sends ack, if any. A failure means the connection is gone:
// the server sends the message again, and installing a key twice is
// harmless.
func (w *Worker) acknowledge(ack func() error) {
	if ack == nil {
		return
	}
	if err := ack(); err != nil {
		w.log.Debug("acknowledgement not sent; the MQTT server will send the message again", "err", err)
	}
}

func (w *Worker) acknowledgeAll(js []job) {
	for _, j := range js {
		w.acknowledge(j.ack)
	}
}

// enterReceive counts a receive that may queue a key, unless the worker
// stopped taking messages.
func (w *Worker) enterReceive() bool {
	w.stopMu.Lock()
	defer w.stopMu.Unlock()
	if w.stopped {
		return false
	}
	w.receiving.Add(1)
	return true
}

// stopReceiving makes receive take no more keys, and waits for the message
// it is handling (one waiting for room in the queue gives up).
func (w *Worker) stopReceiving() {
	w.stopMu.Lock()
	if !w.stopped {
		w.stopped = true
		close(w.stop)
	}
	w.stopMu.Unlock()
	w.receiving.Wait()
}

// watch notices another client overwriting this worker's retained status
// (anything but 1, also an empty payload, which clears it) or data message
// (see ownMessages), and asks for them to be published again.
func (w *Worker) watch(topic string, payload []byte) {
	if !w.own.received(topic, payload) {
		return
	}
	w.log.Warn("another client overwrote this worker's message on the bus; publishing it again (worker names must be unique)",
		"topic", topic, "payload", text.Truncate(string(payload), 64))
	select {
	case w.overwritten <- struct{}{}:
	default:
	}
}

// requestAnnounce asks the loop to publish data, status and metrics; it
// runs whenever the MQTT connection is (re)established and subscribed.
func (w *Worker) requestAnnounce() {
	select {
	case w.announce <- struct{}{}:
	default:
	}
}

// loop does the worker's work until ctx ends: it repairs the domains'
// routes and FDB, installs queued keys in batches, retries refused ones,
// announces, publishes metrics, cleans up stale peers and watches for
// interfaces (re)appearing. When ctx ends it installs what is queued.
func (w *Worker) loop(ctx context.Context) {
	w.checkLinks(ctx)
	metrics := time.NewTicker(w.o.MetricsInterval)
	defer metrics.Stop()
	cleanup := time.NewTicker(w.o.CleanupInterval)
	defer cleanup.Stop()
	links := time.NewTicker(w.o.LinkCheckInterval)
	defer links.Stop()
	pendingRetry := time.NewTicker(w.timing.pendingRetry)
	defer pendingRetry.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	restore := time.NewTimer(time.Hour)
	restore.Stop()
	defer restore.Stop()
	for {
		w.armRetry(retry)
		select {
		case <-ctx.Done():
			w.drainQueue()
			return
		case j := <-w.queue:
			w.installBatch(w.drain(j))
		case <-retry.C:
			w.retryDue()
		case <-pendingRetry.C:
			w.retryPending()
		case <-w.announce:
			w.announceAll(ctx)
		case <-w.overwritten:
			if wait := w.timing.restore - time.Since(w.own.last()); wait > 0 {
				restore.Reset(wait)
			} else {
				w.announceAll(ctx)
			}
		case <-restore.C:
			w.announceAll(ctx)
		case <-metrics.C:
			w.publishMetrics(ctx)
		case <-cleanup.C:
			w.cleanup()
		case <-links.C:
			w.checkLinks(ctx)
		case <-w.linkCheck:
			w.checkLinks(ctx)
		}
	}
}

// drainQueue installs what is queued when the worker stops, for at most
// StopTimeout; what is left stays unacknowledged, and the server sends it
// again.
func (w *Worker) drainQueue() {
	deadline := time.Now().Add(w.o.StopTimeout)
	for more := true; more && time.Now().Before(deadline); {
		select {
		case j := <-w.queue:
			w.installBatch(w.drain(j))
		default:
			more = false
		}
	}
	w.mu.Lock()
	unacked := len(w.retry)
	for _, d := range w.domains {
		unacked += len(d.held)
	}
	w.mu.Unlock()
	if left := len(w.queue); left+unacked > 0 {
		w.log.Warn("stopping with keys not installed; the MQTT server sends them again", "queued", left, "unacknowledged", unacked)
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
