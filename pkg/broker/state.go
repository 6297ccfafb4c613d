package broker

import (
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// Errors of gateway selection, mapped to the HTTP answers of docs/protocol.md §2.
var (
	ErrNoGateway     = errors.New("no gateway online for this domain, please check the domain value and try again later")
	ErrNoGatewayData = errors.New("could not get gateway data")
)

// MaxWorkers bounds how many worker names the broker keeps state for, so
// that a client on the bus cannot grow it without limit with made-up names.
const MaxWorkers = 4096

// ErrTooManyWorkers is returned for a new worker beyond MaxWorkers.
var ErrTooManyWorkers = errors.New("too many workers known; ignoring a new one")

// State is what the broker knows of the workers from the bus. It is safe for
// concurrent use.
type State struct {
	mu      sync.Mutex
	workers map[string]*workerState
	weight  func(worker string) int
	now     func() time.Time
}

type workerState struct {
	online   bool
	peers    map[string]int // domain -> connected_peers; absent = not serving
	data     map[string]wgkex.WorkerData
	lastSeen time.Time
}

// NewState makes an empty state. weight gives a worker's configured weight.
func NewState(weight func(worker string) int, now func() time.Time) *State {
	if now == nil {
		now = time.Now
	}
	return &State{workers: map[string]*workerState{}, weight: weight, now: now}
}

func (s *State) worker(name string) (*workerState, error) {
	w := s.workers[name]
	if w == nil {
		if len(s.workers) >= MaxWorkers {
			return nil, ErrTooManyWorkers
		}
		w = &workerState{peers: map[string]int{}, data: map[string]wgkex.WorkerData{}}
		s.workers[name] = w
	}
	w.lastSeen = s.now()
	return w, nil
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
func (s *State) Choose(domain string) (Choice, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name, ok := s.best(domain)
	if !ok {
		return Choice{}, ErrNoGateway
	}
	w := s.workers[name]
	d, ok := w.data[domain]
	if !ok {
		return Choice{Worker: name}, ErrNoGatewayData
	}
	w.peers[domain]++
	return Choice{Worker: name, Data: d}, nil
}

// Best is Choose without counting: which worker would be chosen now.
func (s *State) Best(domain string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.best(domain)
}

func (s *State) best(domain string) (string, bool) {
	type cand struct {
		name   string
		peers  int
		weight int
	}
	var cands []cand
	total, weights := 0, 0
	for name, w := range s.workers {
		if n, ok := w.peers[domain]; !w.online || !ok || n < 0 {
			continue
		}
		c := cand{name: name, weight: s.weight(name)}
		for _, n := range w.peers {
			c.peers += n
		}
		cands = append(cands, c)
		total += c.peers
		weights += c.weight
	}
	if len(cands) == 0 || weights <= 0 {
		return "", false
	}
	// Ties go to the first name, so the choice does not depend on map order.
	sort.Slice(cands, func(i, j int) bool { return cands[i].name < cands[j].name })
	best, bestDiff := "", 0.0
	for _, c := range cands {
		diff := float64(c.peers) - float64(c.weight)/float64(weights)*float64(total)
		if best == "" || diff < bestDiff {
			best, bestDiff = c.name, diff
		}
	}
	return best, true
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
	out := make([]WorkerSnapshot, 0, len(s.workers))
	for name, w := range s.workers {
		ws := WorkerSnapshot{Name: name, Online: w.online, Weight: s.weight(name), LastSeen: w.lastSeen,
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
