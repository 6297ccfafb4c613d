package broker

import (
	"errors"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// Errors of gateway selection, mapped to the HTTP answers of docs/protocol.md §2.
var (
	errNoGateway     = errors.New("no gateway online for this domain, please check the domain value and try again later")
	errNoGatewayData = errors.New("could not get gateway data")
)

// Why a message from the bus left the worker table unchanged.
var (
	errUnlistedWorker = errors.New("worker is not listed under workers (known_workers_only); ignoring it")
	errTooManyWorkers = errors.New("too many unlisted workers known; ignoring a new one")
)

// maxUnlisted bounds how many workers not listed under workers: the broker
// keeps state for, so that made-up names on the bus cannot grow it without
// limit. Listed workers always have a place besides these.
const maxUnlisted = 4096

// defaultWorkerExpiry is how long an unlisted worker that cannot be chosen
// (offline, or without a data message) is kept after its last message.
const defaultWorkerExpiry = 10 * time.Minute

// minSweepGap spaces out scans of the table for expired workers, so that a
// flood of new names cannot make every message a scan of the whole table.
const minSweepGap = time.Second

// state is what the broker knows of the workers, and of the other brokers,
// from the bus. It is safe for concurrent use.
//
// Worker names are compared case-insensitively (they are host names), so the
// table is keyed by the lower-cased name. Workers listed in the configuration
// are always kept. Unlisted ones share maxUnlisted places; one that cannot be
// chosen and has been silent for the expiry time is forgotten, and a new name
// finds no place while all are taken by others (docs/protocol.md §3.3).
type state struct {
	mu        sync.Mutex
	workers   map[string]*workerState // lower-cased name -> state
	unlisted  int                     // entries not listed in the configuration
	listed    map[string]bool         // lower-cased configured names
	knownOnly bool
	budget    int
	expiry    time.Duration
	nextSweep time.Time
	weight    func(worker string) int
	now       func() time.Time
	// sticky selects by rendezvous hashing of the node's key, within
	// tolerance (a fraction) of the gateway's share; else least loaded.
	sticky    bool
	tolerance float64

	ignoredUnlisted, ignoredFull, evicted uint64

	brokerTable // the brokers on the bus, this one included (brokers.go)
}

type workerState struct {
	name     string // as first heard, for display
	id       string // lower-cased name: the table key, and what sticky choices hash
	listed   bool
	online   bool
	peers    map[string]int // domain -> connected_peers; absent = not serving
	data     map[string]wgkex.WorkerData
	lastSeen time.Time
}

// usable reports whether the worker could be handed out for some domain.
func (w *workerState) usable() bool { return w.online && len(w.data) > 0 }

// stateConfig configures a state; zero values take the defaults.
type stateConfig struct {
	weight    func(worker string) int
	now       func() time.Time
	listed    []string
	knownOnly bool
	expiry    time.Duration
	budget    int

	sticky    bool
	tolerance float64 // percent
	self      string  // this broker's name; "" when it does not announce itself
}

func newState(c stateConfig) *state {
	if c.weight == nil {
		c.weight = func(string) int { return 1 }
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.expiry <= 0 {
		c.expiry = defaultWorkerExpiry
	}
	if c.budget <= 0 {
		c.budget = maxUnlisted
	}
	s := &state{workers: map[string]*workerState{}, listed: map[string]bool{}, knownOnly: c.knownOnly,
		budget: c.budget, expiry: c.expiry, weight: c.weight, now: c.now,
		sticky: c.sticky, tolerance: max(c.tolerance, 0) / 100}
	s.brokerTable = newBrokerTable(c.self)
	for _, n := range c.listed {
		s.listed[strings.ToLower(n)] = true
	}
	return s
}

// worker finds or admits the entry for name and marks it as just heard.
func (s *state) worker(name string) (*workerState, error) {
	now := s.now()
	s.sweep(now)
	key := strings.ToLower(name)
	w := s.workers[key]
	if w == nil {
		listed := s.listed[key]
		switch {
		case listed:
		case s.knownOnly:
			s.ignoredUnlisted++
			return nil, errUnlistedWorker
		case s.unlisted >= s.budget: // the sweep above made what room there is
			s.ignoredFull++
			return nil, errTooManyWorkers
		}
		w = &workerState{name: name, id: key, listed: listed, peers: map[string]int{}, data: map[string]wgkex.WorkerData{}}
		s.workers[key] = w
		if !listed {
			s.unlisted++
		}
	}
	w.lastSeen = now
	return w, nil
}

// sweep forgets the unlisted workers that cannot be chosen and have been
// silent for the expiry time. It scans only when one of them can have
// expired since the last scan (lastSeen only moves forward, and new entries
// are younger), and at most once per minSweepGap.
func (s *state) sweep(now time.Time) {
	if now.Before(s.nextSweep) {
		return
	}
	oldest := now
	for key, w := range s.workers {
		if w.listed {
			continue
		}
		if now.Sub(w.lastSeen) >= s.expiry && !w.usable() {
			delete(s.workers, key)
			s.unlisted--
			s.evicted++
			continue
		}
		if w.lastSeen.Before(oldest) {
			oldest = w.lastSeen
		}
	}
	s.nextSweep = s.nextSweepAt(oldest, now)
}

// nextSweepAt is when the entry last seen at oldest expires, but no sooner
// than minSweepGap from now.
func (s *state) nextSweepAt(oldest, now time.Time) time.Time {
	if next := oldest.Add(s.expiry); !next.Before(now.Add(minSweepGap)) {
		return next
	}
	return now.Add(minSweepGap)
}

// setOnline records a worker's status message.
func (s *state) setOnline(worker string, online bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.worker(worker)
	if err != nil {
		return err
	}
	w.online = online
	return nil
}

// setConnectedPeers records a connected_peers metric; -1 (or less) takes the
// worker out for that domain.
func (s *state) setConnectedPeers(worker, domain string, n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.worker(worker)
	if err != nil {
		return err
	}
	if n < 0 {
		delete(w.peers, domain)
		return nil
	}
	w.peers[domain] = n
	return nil
}

// setData records (or, with nil, forgets) a worker's data for domain.
func (s *state) setData(worker, domain string, d *wgkex.WorkerData) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.worker(worker)
	if err != nil {
		return err
	}
	if d == nil {
		delete(w.data, domain)
		return nil
	}
	w.data[domain] = *d
	return nil
}

// choice is the outcome of a gateway selection.
type choice struct {
	Worker string
	Data   wgkex.WorkerData
	// Hashed: the sticky rule's own choice (false: least loaded, by
	// configuration or as its fallback).
	Hashed bool
}

// choose picks the gateway for a new peer with key on domain
// (docs/protocol.md §4) and counts the peer for it, so a burst of requests
// spreads out before the next metrics message corrects the count.
//
// It counts the peer once for every broker online (at least this one): each
// of N brokers sharing the requests sees only its own choices, and counting
// each N times lets every one of them estimate what all of them together
// have handed out since the gateway's last metrics message.
//
// A worker without a data message for domain cannot be handed out and is no
// candidate. errNoGateway: no worker online serves domain; errNoGatewayData:
// some do, but none of them has sent its data message for it.
func (s *state) choose(domain, key string) (choice, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs, err := s.candidates(domain)
	if err != nil {
		return choice{}, err
	}
	var w *workerState
	hashed := false
	if s.sticky {
		w = cs.sticky(key, s.tolerance)
		hashed = w != nil
	}
	if w == nil {
		w = cs.leastLoaded()
	}
	w.peers[domain] = addSat(w.peers[domain], s.brokersOnline())
	return choice{Worker: w.name, Data: w.data[domain], Hashed: hashed}, nil
}

// best is which worker the least-loaded rule would choose now, without
// counting (for the status page; a sticky choice depends on the node).
func (s *state) best(domain string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs, err := s.candidates(domain)
	if err != nil {
		return "", false
	}
	return cs.leastLoaded().name, true
}

// candidate is a worker that can take a peer on a domain.
type candidate struct {
	w      *workerState
	peers  int // over all domains
	weight int
}

// candidateSet are the candidates for one domain, sorted by name, with
// their totals.
type candidateSet struct {
	list           []candidate
	total, weights int
}

// target is c's weighted share of the candidates' peers.
func (cs *candidateSet) target(c candidate) float64 {
	return float64(c.weight) / float64(cs.weights) * float64(cs.total)
}

func (s *state) candidates(domain string) (*candidateSet, error) {
	cs := &candidateSet{}
	dataless := 0
	for _, w := range s.workers {
		if n, ok := w.peers[domain]; !w.online || !ok || n < 0 {
			continue
		}
		if _, ok := w.data[domain]; !ok {
			dataless++
			continue
		}
		c := candidate{w: w, weight: s.weight(w.name)}
		for _, n := range w.peers {
			c.peers = addSat(c.peers, n)
		}
		cs.list = append(cs.list, c)
		cs.total = addSat(cs.total, c.peers)
		cs.weights = addSat(cs.weights, c.weight)
	}
	if len(cs.list) == 0 || cs.weights <= 0 {
		if dataless > 0 {
			return nil, errNoGatewayData
		}
		return nil, errNoGateway
	}
	// Ties go to the first name, so the choice does not depend on map order.
	sort.Slice(cs.list, func(i, j int) bool { return cs.list[i].w.name < cs.list[j].w.name })
	return cs, nil
}

// leastLoaded is the candidate furthest below its weighted share.
func (cs *candidateSet) leastLoaded() *workerState {
	var best *workerState
	bestDiff := 0.0
	for _, c := range cs.list {
		diff := float64(c.peers) - cs.target(c)
		if best == nil || diff < bestDiff {
			best, bestDiff = c.w, diff
		}
	}
	return best
}

// sticky is the candidate weighted rendezvous hashing gives key, or nil when
// that one has more than tolerance (a fraction) above its weighted share.
// Every broker computes the same candidate from the same candidates, without
// sharing any state, and a node keeps it while that gateway stays a
// candidate within tolerance: when another candidate joins or leaves, only
// the nodes that hash to it move.
func (cs *candidateSet) sticky(key string, tolerance float64) *workerState {
	var top candidate
	topScore := math.Inf(-1)
	for _, c := range cs.list {
		if sc := rendezvousScore(key, c.w.id, c.weight); sc > topScore {
			top, topScore = c, sc
		}
	}
	if float64(top.peers) > cs.target(top)*(1+tolerance) {
		return nil
	}
	return top.w
}

// rendezvousScore is the weighted highest-random-weight score of worker for
// key: -weight / ln(u), u uniform in (0, 1) from a hash of both. Over random
// keys the highest score falls to each worker in proportion to its weight.
func rendezvousScore(key, worker string, weight int) float64 {
	var d xxhash.Digest
	d.Reset()
	d.WriteString(key)
	d.WriteString("\x00")
	d.WriteString(worker)
	// The top 53 bits, centred in their interval: never 0 or 1.
	u := (float64(d.Sum64()>>11) + 0.5) / (1 << 53)
	return -float64(weight) / math.Log(u)
}

// addSat adds two non-negative counts, stopping at math.MaxInt instead of
// wrapping around to a negative number.
func addSat(a, b int) int {
	if a > math.MaxInt-b {
		return math.MaxInt
	}
	return a + b
}

// workerSnapshot is one worker as the broker sees it.
type workerSnapshot struct {
	Name     string                      `json:"name"`
	Online   bool                        `json:"online"`
	Weight   int                         `json:"weight"`
	Peers    map[string]int              `json:"connected_peers"`
	Data     map[string]wgkex.WorkerData `json:"data"`
	LastSeen time.Time                   `json:"last_seen"`
}

// snapshot copies the state, workers sorted by name.
func (s *state) snapshot() []workerSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep(s.now())
	out := make([]workerSnapshot, 0, len(s.workers))
	for _, w := range s.workers {
		ws := workerSnapshot{Name: w.name, Online: w.online, Weight: s.weight(w.name), LastSeen: w.lastSeen,
			Peers: make(map[string]int, len(w.peers)), Data: make(map[string]wgkex.WorkerData, len(w.data))}
		for k, v := range w.peers {
			ws.Peers[k] = v
		}
		for k, v := range w.data {
			ws.Data[k] = v
		}
		out = append(out, ws)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// tableStats are the counters behind the worker table's metrics.
type tableStats struct {
	entries, unlisted                     int
	ignoredUnlisted, ignoredFull, evicted uint64
}

func (s *state) stats() tableStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return tableStats{entries: len(s.workers), unlisted: s.unlisted,
		ignoredUnlisted: s.ignoredUnlisted, ignoredFull: s.ignoredFull, evicted: s.evicted}
}
