package broker

import (
	"errors"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// Errors of gateway selection, mapped to the HTTP answers of docs/protocol.md §2.
var (
	ErrNoGateway     = errors.New("no gateway online for this domain, please check the domain value and try again later")
	ErrNoGatewayData = errors.New("could not get gateway data")
)

// Why a message from the bus left the worker table unchanged.
var (
	ErrUnlistedWorker = errors.New("worker is not listed under workers (known_workers_only); ignoring it")
	ErrTooManyWorkers = errors.New("too many unlisted workers known; ignoring a new one")
)

// maxUnlisted bounds how many workers not listed under workers: the broker
// keeps state for, so that made-up names on the bus cannot grow it without
// limit. Listed workers always have a place besides these.
const maxUnlisted = 4096

// DefaultWorkerExpiry is how long an unlisted worker that cannot be chosen
// (offline, or without a data message) is kept after its last message.
const DefaultWorkerExpiry = 10 * time.Minute

// minSweepGap spaces out scans of the table for expired workers, so that a
// flood of new names cannot make every message a scan of the whole table.
const minSweepGap = time.Second

// State is what the broker knows of the workers from the bus. It is safe for
// concurrent use.
//
// Worker names are compared case-insensitively (they are host names), so the
// table is keyed by the lower-cased name. Workers listed in the configuration
// are always kept. Unlisted ones share maxUnlisted places; one that cannot be
// chosen and has been silent for the expiry time is forgotten, and a new name
// finds no place while all are taken by others (docs/protocol.md §3.3).
type State struct {
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

	ignoredUnlisted, ignoredFull, evicted uint64
}

type workerState struct {
	name     string // as first heard, for display
	listed   bool
	online   bool
	peers    map[string]int // domain -> connected_peers; absent = not serving
	data     map[string]wgkex.WorkerData
	lastSeen time.Time
}

// usable reports whether the worker could be handed out for some domain.
func (w *workerState) usable() bool { return w.online && len(w.data) > 0 }

// stateConfig configures a State; zero values take the defaults.
type stateConfig struct {
	weight    func(worker string) int
	now       func() time.Time
	listed    []string
	knownOnly bool
	expiry    time.Duration
	budget    int
}

func newState(c stateConfig) *State {
	if c.weight == nil {
		c.weight = func(string) int { return 1 }
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.expiry <= 0 {
		c.expiry = DefaultWorkerExpiry
	}
	if c.budget <= 0 {
		c.budget = maxUnlisted
	}
	s := &State{workers: map[string]*workerState{}, listed: map[string]bool{}, knownOnly: c.knownOnly,
		budget: c.budget, expiry: c.expiry, weight: c.weight, now: c.now}
	for _, n := range c.listed {
		s.listed[strings.ToLower(n)] = true
	}
	return s
}

// worker finds or admits the entry for name and marks it as just heard.
func (s *State) worker(name string) (*workerState, error) {
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
			return nil, ErrUnlistedWorker
		case s.unlisted >= s.budget: // the sweep above made what room there is
			s.ignoredFull++
			return nil, ErrTooManyWorkers
		}
		w = &workerState{name: name, listed: listed, peers: map[string]int{}, data: map[string]wgkex.WorkerData{}}
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
func (s *State) sweep(now time.Time) {
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
	s.nextSweep = oldest.Add(s.expiry)
	if gap := now.Add(minSweepGap); s.nextSweep.Before(gap) {
		s.nextSweep = gap
	}
}

// SetOnline records a worker's status message.
func (s *State) SetOnline(worker string, online bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.worker(worker)
	if err != nil {
		return err
	}
	w.online = online
	return nil
}

// SetConnectedPeers records a connected_peers metric; -1 (or less) takes the
// worker out for that domain.
func (s *State) SetConnectedPeers(worker, domain string, n int) error {
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

// SetData records (or, with nil, forgets) a worker's data for domain.
func (s *State) SetData(worker, domain string, d *wgkex.WorkerData) error {
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

// Choice is the outcome of a gateway selection.
type Choice struct {
	Worker string
	Data   wgkex.WorkerData
}

// Choose picks the gateway for a new peer on domain (docs/protocol.md §4) and
// counts the peer for it, so a burst of requests spreads out before the
// next metrics message corrects the count.
//
// A worker without a data message for domain cannot be handed out and is no
// candidate. ErrNoGateway: no worker online serves domain; ErrNoGatewayData:
// some do, but none of them has sent its data message for it.
func (s *State) Choose(domain string) (Choice, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.best(domain)
	if err != nil {
		return Choice{}, err
	}
	w.peers[domain] = addSat(w.peers[domain], 1)
	return Choice{Worker: w.name, Data: w.data[domain]}, nil
}

// Best is Choose without counting: which worker would be chosen now.
func (s *State) Best(domain string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.best(domain)
	if err != nil {
		return "", false
	}
	return w.name, true
}

func (s *State) best(domain string) (*workerState, error) {
	type cand struct {
		w      *workerState
		peers  int
		weight int
	}
	var cands []cand
	total, weights, dataless := 0, 0, 0
	for _, w := range s.workers {
		if n, ok := w.peers[domain]; !w.online || !ok || n < 0 {
			continue
		}
		if _, ok := w.data[domain]; !ok {
			dataless++
			continue
		}
		c := cand{w: w, weight: s.weight(w.name)}
		for _, n := range w.peers {
			c.peers = addSat(c.peers, n)
		}
		cands = append(cands, c)
		total = addSat(total, c.peers)
		weights = addSat(weights, c.weight)
	}
	if len(cands) == 0 || weights <= 0 {
		if dataless > 0 {
			return nil, ErrNoGatewayData
		}
		return nil, ErrNoGateway
	}
	// Ties go to the first name, so the choice does not depend on map order.
	sort.Slice(cands, func(i, j int) bool { return cands[i].w.name < cands[j].w.name })
	var best *workerState
	bestDiff := 0.0
	for _, c := range cands {
		diff := float64(c.peers) - float64(c.weight)/float64(weights)*float64(total)
		if best == nil || diff < bestDiff {
			best, bestDiff = c.w, diff
		}
	}
	return best, nil
}

// addSat adds two non-negative counts, stopping at math.MaxInt instead of
// wrapping around to a negative number.
func addSat(a, b int) int {
	if a > math.MaxInt-b {
		return math.MaxInt
	}
	return a + b
}

// WorkerSnapshot is one worker as the broker sees it.
type WorkerSnapshot struct {
	Name     string                      `json:"name"`
	Online   bool                        `json:"online"`
	Weight   int                         `json:"weight"`
	Peers    map[string]int              `json:"connected_peers"`
	Data     map[string]wgkex.WorkerData `json:"data"`
	LastSeen time.Time                   `json:"last_seen"`
}

// Snapshot copies the state, workers sorted by name.
func (s *State) Snapshot() []WorkerSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep(s.now())
	out := make([]WorkerSnapshot, 0, len(s.workers))
	for _, w := range s.workers {
		ws := WorkerSnapshot{Name: w.name, Online: w.online, Weight: s.weight(w.name), LastSeen: w.lastSeen,
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

func (s *State) stats() tableStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return tableStats{entries: len(s.workers), unlisted: s.unlisted,
		ignoredUnlisted: s.ignoredUnlisted, ignoredFull: s.ignoredFull, evicted: s.evicted}
}
