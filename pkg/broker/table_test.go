package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex/internal/fakeclock"
	"github.com/freifunkMUC/wgkex/internal/promtest"
)

func newClock() *fakeclock.Clock { return fakeclock.New(time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)) }

func names(s *state) map[string]bool {
	out := map[string]bool{}
	for _, w := range s.snapshot() {
		out[w.Name] = true
	}
	return out
}

func TestExpiry(t *testing.T) {
	clock := newClock()
	s := newState(stateConfig{now: clock.Now, expiry: 10 * time.Minute, listed: []string{"GW-Listed"}})
	online(s, "usable", map[string]int{"d": 1})    // online with data: kept however silent
	online(s, "gw-listed", map[string]int{"d": 1}) // listed: always kept
	s.setOnline("gw-listed", false)
	s.setOnline("offline", false)
	s.setOnline("dataless", true)
	s.setConnectedPeers("dataless", "d", 0)

	clock.Advance(10*time.Minute - time.Second)
	if got := names(s); len(got) != 4 {
		t.Fatalf("evicted before the expiry: %v", got)
	}
	s.setOnline("refreshed", false) // heard just before the others expire
	clock.Advance(time.Second)
	got := names(s)
	if got["offline"] || got["dataless"] {
		t.Errorf("silent unusable workers kept past the expiry: %v", got)
	}
	if !got["usable"] || !got["gw-listed"] || !got["refreshed"] {
		t.Errorf("workers lost: %v", got)
	}
	if st := s.stats(); st.evicted != 2 || st.unlisted != 2 || st.entries != 3 {
		t.Errorf("stats %+v, want 2 evicted, 2 unlisted of 3", st)
	}
	// A forgotten worker that comes back starts afresh.
	online(s, "offline", map[string]int{"d": 5})
	if c, err := s.choose("d", testKey); err != nil || c.Worker == "" {
		t.Fatalf("returning worker: %+v %v", c, err)
	}
}

// 5,000 made-up names on the bus: a listed worker keeps its place, the table
// stays bounded, and v2 still hands out the real gateways.
func TestFloodOfMadeUpNames(t *testing.T) {
	for _, knownOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("known_workers_only=%v", knownOnly), func(t *testing.T) {
			clock := newClock()
			s := newState(stateConfig{now: clock.Now, listed: []string{"gw04", "gw05"}, knownOnly: knownOnly})
			online(s, "gw04", map[string]int{"d": 10})
			for i := range 5000 {
				name := fmt.Sprintf("fake%04d", i)
				s.setOnline(name, true)
				s.setConnectedPeers(name, "d", 0)
			}
			// The second listed gateway comes after the flood (a restart with
			// retained junk on the bus delivers it in any order).
			if err := s.setOnline("GW05", true); err != nil {
				t.Fatalf("listed worker refused after the flood: %v", err)
			}
			s.setConnectedPeers("GW05", "d", 12)
			s.setData("GW05", "d", data(40005))

			st := s.stats()
			if st.entries-st.unlisted != 2 {
				t.Errorf("%d listed entries, want 2", st.entries-st.unlisted)
			}
			wantUnlisted, wantIgnored := maxUnlisted, uint64(2*(5000-maxUnlisted))
			if knownOnly {
				wantUnlisted, wantIgnored = 0, 2*5000
			}
			if st.unlisted != wantUnlisted || st.ignoredFull+st.ignoredUnlisted != wantIgnored {
				t.Errorf("stats %+v, want %d unlisted and %d ignored", st, wantUnlisted, wantIgnored)
			}
			for range 3 {
				c, err := s.choose("d", testKey)
				if err != nil || (c.Worker != "gw04" && c.Worker != "GW05") {
					t.Fatalf("v2 chose %q, %v", c.Worker, err)
				}
			}
			if knownOnly {
				return
			}
			// The fakes never sent data: once silent for the expiry they make
			// room for a real new gateway.
			if err := s.setOnline("newgw", true); !errors.Is(err, errTooManyWorkers) {
				t.Fatalf("full table took a new name: %v", err)
			}
			clock.Advance(defaultWorkerExpiry)
			online(s, "gw04", map[string]int{"d": 10}) // the real ones keep talking
			if err := s.setOnline("newgw", true); err != nil {
				t.Fatalf("new gateway refused once the fakes expired: %v", err)
			}
			if got := s.stats(); got.unlisted != 1 || got.evicted != uint64(maxUnlisted) {
				t.Errorf("after expiry: %+v", got)
			}
		})
	}
}

// Worker names are host names: other spellings of a listed name are the
// same worker, not new places.
func TestNamesCaseInsensitive(t *testing.T) {
	s := newState(stateConfig{listed: []string{"gw04"}, budget: 1})
	for _, n := range []string{"gw04", "GW04", "Gw04", "gW04"} {
		if err := s.setOnline(n, true); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
	}
	s.setOnline("other", true)
	if err := s.setOnline("OTHER", true); err != nil {
		t.Fatalf("same unlisted name, other case: %v", err)
	}
	snap := s.snapshot()
	if len(snap) != 2 || snap[0].Name != "gw04" || snap[1].Name != "other" {
		t.Fatalf("snapshot %+v", snap)
	}
}

func TestKnownWorkersOnly(t *testing.T) {
	s := newState(stateConfig{listed: []string{"gw04"}, knownOnly: true})
	if err := s.setOnline("intruder", true); !errors.Is(err, errUnlistedWorker) {
		t.Fatalf("err = %v", err)
	}
	if err := s.setData("intruder", "d", data(1)); !errors.Is(err, errUnlistedWorker) {
		t.Fatalf("err = %v", err)
	}
	online(s, "gw04", map[string]int{"d": 0})
	if snap := s.snapshot(); len(snap) != 1 || snap[0].Name != "gw04" {
		t.Fatalf("snapshot %+v", snap)
	}
	if st := s.stats(); st.ignoredUnlisted != 2 {
		t.Errorf("ignored %d, want 2", st.ignoredUnlisted)
	}
}

// One online worker that never sent its data message must not break v2
// for everyone: it is no candidate.
func TestWorkerWithoutDataSkipped(t *testing.T) {
	s := newState(stateConfig{})
	online(s, "busy", map[string]int{"d": 100})
	s.setOnline("nodata", true) // fewest peers: it would win
	s.setConnectedPeers("nodata", "d", 0)
	for range 5 {
		c, err := s.choose("d", testKey)
		if err != nil || c.Worker != "busy" {
			t.Fatalf("Choose = %q, %v; want busy", c.Worker, err)
		}
	}
	if w, _ := s.best("d"); w != "busy" {
		t.Errorf("Best = %q", w)
	}
	if got := s.snapshot()[1].Peers["d"]; got != 0 {
		t.Errorf("the skipped worker was counted: %d", got)
	}
}

func TestCountersSaturate(t *testing.T) {
	s := newState(stateConfig{weight: weights(map[string]int{"w2": math.MaxInt})})
	online(s, "w1", map[string]int{"d": math.MaxInt, "e": math.MaxInt})
	if c, err := s.choose("d", testKey); err != nil || c.Worker != "w1" {
		t.Fatalf("Choose = %q, %v", c.Worker, err)
	}
	if got := s.snapshot()[0].Peers["d"]; got != math.MaxInt {
		t.Fatalf("connected_peers after +1 = %d, want MaxInt", got)
	}
	online(s, "w2", map[string]int{"d": 0})
	for range 3 {
		if c, err := s.choose("d", testKey); err != nil || c.Worker != "w2" {
			t.Fatalf("Choose = %q, %v; want w2 (fewest peers, largest weight)", c.Worker, err)
		}
	}
}

// A flood of made-up names through the broker: v2 keeps answering with the
// listed gateway, the flood is counted, and it gives one warning, not 5,000.
func TestBrokerFloodOfMadeUpNames(t *testing.T) {
	logs := &countingHandler{}
	reg := prometheus.NewRegistry()
	b := New(Options{Domains: []string{"ffmuc_welt"}, Publisher: &fakePublisher{}, KeyQoS: 1, Logger: slog.New(logs),
		Registry: reg, Gatherer: reg, KnownWorkers: []string{"gw04"}, KnownWorkersOnly: true})
	announceTo(b, "gw04", 40004, "7")
	for i := range 5000 {
		announceTo(b, fmt.Sprintf("fake%d", i), 50000, "0")
	}
	resp, m := do(t, b, "POST", "/api/v2/wg/key/exchange", "", body("ffmuc_welt", testKey))
	if ep, _ := m["Endpoint"].(map[string]any); resp.StatusCode != 200 || ep["Port"] != "40004" {
		t.Fatalf("v2 after the flood: %d %v", resp.StatusCode, m)
	}
	if n := logs.count(slog.LevelWarn); n != 1 {
		t.Errorf("%d warnings for the flood, want 1", n)
	}
	fams := scrape(t, b)
	if got := promtest.Value(fams, "wgkex_broker_worker_messages_ignored_total", map[string]string{"reason": "unlisted"}); got != 3*5000 {
		t.Errorf("ignored = %v, want 15000", got)
	}
	if got := promtest.Value(fams, "wgkex_broker_worker_table_entries", map[string]string{"listed": "true"}); got != 1 {
		t.Errorf("listed entries = %v", got)
	}
}

func announceTo(b *Broker, worker string, port int, peers string) {
	b.HandleMessage("wireguard-worker/"+worker+"/ffmuc_welt/data",
		fmt.Appendf(nil, `{"ExternalAddress":"%s.example.net","Port":%d,"PublicKey":"%s","LinkAddress":"fe80::1"}`, worker, port, testKey))
	b.HandleMessage("wireguard-metrics/ffmuc_welt/"+worker+"/connected_peers", []byte(peers))
	b.HandleMessage("wireguard-worker/"+worker+"/status", []byte("1"))
}

// countingHandler counts log records by level.
type countingHandler struct {
	mu sync.Mutex
	n  map[slog.Level]int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[slog.Level]int{}
	}
	h.n[r.Level]++
	return nil
}

func (h *countingHandler) count(l slog.Level) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[l]
}
