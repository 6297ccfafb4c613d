package broker

import (
	"errors"
	"sort"
	"strings"
	"time"
)

// errTooManyBrokers: the broker table is full of brokers that are online or
// were heard of recently, and a new name has no place.
var errTooManyBrokers = errors.New("too many brokers known; ignoring a new one")

// maxBrokers bounds the broker table, so that made-up names on the bus
// cannot grow it without limit. Real deployments run a handful of brokers.
// It also bounds the count a choice adds (state.choose): junk on the bus can
// inflate it to at most this.
const maxBrokers = 256

// brokerTable is what a state knows of the brokers on the bus, this one
// included (docs/protocol.md §3). Its fields belong to state.mu.
type brokerTable struct {
	self         string // lower-cased own name; "" when this broker does not announce itself
	brokers      map[string]*brokerState
	othersOnline int // online entries other than self
	brokerBudget int
	nextBSweep   time.Time
}

type brokerState struct {
	name     string // as first heard, for display
	online   bool
	lastSeen time.Time // zero: never heard (only this broker's own entry)
}

func newBrokerTable(self string) brokerTable {
	t := brokerTable{self: strings.ToLower(self), brokers: map[string]*brokerState{}, brokerBudget: maxBrokers}
	if self != "" {
		// This broker counts as online while it runs, whatever the bus
		// says: at startup the bus still holds the 0 of its last shutdown.
		t.brokers[t.self] = &brokerState{name: self, online: true}
	}
	return t
}

// setBrokerOnline records a broker's status message.
func (s *state) setBrokerOnline(name string, online bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.sweepBrokers(now)
	key := strings.ToLower(name)
	b := s.brokers[key]
	switch {
	case key == s.self:
		b.lastSeen = now // and it stays online
		return nil
	case b == nil:
		others := len(s.brokers)
		if s.self != "" {
			others--
		}
		if others >= s.brokerBudget { // the sweep above made what room there is
			return errTooManyBrokers
		}
		b = &brokerState{name: name}
		s.brokers[key] = b
	}
	if online != b.online {
		if online {
			s.othersOnline++
		} else {
			s.othersOnline--
		}
	}
	b.online, b.lastSeen = online, now
	return nil
}

// brokersOnline is how many brokers are online, this one included. Call it
// with s.mu held.
func (s *state) brokersOnline() int { return 1 + s.othersOnline }

// sweepBrokers forgets the brokers that are offline and have been silent
// for the expiry time, at most once per minSweepGap (as state.sweep does
// for workers). Online brokers stay: their retained status speaks for them
// until their will or their shutdown says 0.
func (s *state) sweepBrokers(now time.Time) {
	if now.Before(s.nextBSweep) {
		return
	}
	oldest := now
	for key, b := range s.brokers {
		if key == s.self || b.online {
			continue
		}
		if now.Sub(b.lastSeen) >= s.expiry {
			delete(s.brokers, key)
			continue
		}
		if b.lastSeen.Before(oldest) {
			oldest = b.lastSeen
		}
	}
	s.nextBSweep = s.nextSweepAt(oldest, now)
}

// brokerSnapshot is one broker as this one sees it.
type brokerSnapshot struct {
	Name     string
	Online   bool
	LastSeen time.Time // zero: never heard on the bus
	Self     bool      // this broker
}

// brokerSnapshots lists the brokers known, this one included, sorted by name.
func (s *state) brokerSnapshots() []brokerSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepBrokers(s.now())
	out := make([]brokerSnapshot, 0, len(s.brokers))
	for key, b := range s.brokers {
		out = append(out, brokerSnapshot{Name: b.name, Online: b.online, LastSeen: b.lastSeen, Self: key == s.self})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// onlineBrokers is how many brokers are online, this one included: what a
// choice adds to the chosen gateway's count.
func (s *state) onlineBrokers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.brokersOnline()
}
