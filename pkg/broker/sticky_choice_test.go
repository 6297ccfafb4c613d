package broker

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
	"testing"
)

// The score must not change between releases: brokers of two versions on
// one bus would otherwise send a node back and forth. It hashes the node's
// key, a NUL and the lower-cased worker name with xxhash64.
func TestRendezvousScoreStable(t *testing.T) {
	const h = 0xc67b3c19dcff620e // xxhash64(testKey + "\x00" + "gw1")
	want := -1 / math.Log((float64(uint64(h)>>11)+0.5)/(1<<53))
	if got := rendezvousScore(testKey, "gw1", 1); got != want {
		t.Errorf("score %v, want %v", got, want)
	}
	if got := rendezvousScore(testKey, "gw1", 3); math.Abs(got-3*want) > 1e-12*want {
		t.Errorf("weight 3: score %v, want %v", got, 3*want)
	}
	if got := rendezvousScore(testKey, "gw2", 1); got == want || got <= 0 || math.IsInf(got, 0) {
		t.Errorf("other worker: score %v", got)
	}
}

// stickyState is a sticky state with the four simulation gateways at
// their weighted shares of 800 peers (100, 100, 200, 400).
func stickyState(t *testing.T, self string, gatewayName func(string) string) *state {
	t.Helper()
	// Weights are looked up case-insensitively, as config.Weight does.
	weight := func(n string) int { return simWeight(strings.ToLower(n)) }
	s := newState(stateConfig{weight: weight, sticky: true, tolerance: 10, self: self})
	atShare(s, gatewayName)
	return s
}

func atShare(s *state, gatewayName func(string) string) {
	for _, g := range simGateways {
		online(s, gatewayName(g.name), map[string]int{"d": 100 * g.weight})
	}
}

func same(n string) string { return n }

// A node gets its rendezvous gateway on every request while that gateway
// is within tolerance, whatever the loads of the others.
func TestStickySameGateway(t *testing.T) {
	s := stickyState(t, "", same)
	for i, key := range simKeys(200) {
		want := simGateways[hrw(key, all(true))].name
		for try := range 3 {
			atShare(s, same) // the metrics message puts the count back
			c, err := s.choose("d", key)
			if err != nil || c.Worker != want || !c.Hashed {
				t.Fatalf("key %d, try %d: %+v %v, want %s by the hashed rule", i, try, c, err, want)
			}
		}
	}
}

// Worker names are compared case-insensitively: a broker that first heard
// GW3 hashes the same name as one that heard gw3.
func TestStickyIgnoresNameCase(t *testing.T) {
	lower := stickyState(t, "", same)
	upper := stickyState(t, "", func(n string) string { return "G" + n[1:] })
	for _, key := range simKeys(200) {
		a, _ := lower.choose("d", key)
		b, _ := upper.choose("d", key)
		if a.Worker[1:] != b.Worker[1:] {
			t.Fatalf("key %s: %s and %s", key, a.Worker, b.Worker)
		}
	}
}

// Over tolerance, the least-loaded rule decides; at the bound, the hashed
// gateway still takes the node.
func TestStickyFallback(t *testing.T) {
	for _, tc := range []struct {
		tolerance  float64
		home, away int // peers of the node's gateway and of the other one (weight 1 each)
		want       string
		hashed     bool
	}{
		{10, 110, 90, "home", true},   // target 100, bound 110
		{10, 111, 89, "away", false},  // over the bound
		{10, 0, 0, "home", true},      // nobody has peers yet
		{0, 100, 100, "home", true},   // exactly at its share
		{0, 101, 99, "away", false},   // one over
		{50, 149, 51, "home", true},   // wide tolerance
		{50, 151, 49, "away", false},  //
		{10, 10, 0, "away", false},    // small counts: one peer is 10 %
		{10, 1000, 0, "away", false},  // the other has none
		{10, 0, 1000, "home", true},   // far below
		{100, 200, 0, "home", true},   // 100 %: up to twice its share
		{100, 201, -1, "home", true},  // the other does not serve the domain: alone, always within
		{10, 230, 200, "home", true},  // 230 <= 215 * 1.1
		{10, 250, 200, "away", false}, // 250 > 225 * 1.1
	} {
		t.Run(fmt.Sprintf("tolerance %v home %d away %d", tc.tolerance, tc.home, tc.away), func(t *testing.T) {
			s := newState(stateConfig{sticky: true, tolerance: tc.tolerance})
			online(s, "home", map[string]int{"d": tc.home})
			online(s, "away", map[string]int{"d": max(tc.away, 0)})
			if tc.away < 0 {
				s.setConnectedPeers("away", "d", -1)
			}
			var key string
			for _, k := range simKeys(100) {
				if rendezvousScore(k, "home", 1) > rendezvousScore(k, "away", 1) {
					key = k
					break
				}
			}
			c, err := s.choose("d", key)
			if err != nil || c.Worker != tc.want || c.Hashed != tc.hashed {
				t.Errorf("Choose = %+v, %v; want %s (hashed %v)", c, err, tc.want, tc.hashed)
			}
		})
	}
}

// A node whose gateway goes offline gets its next rendezvous gateway, and
// its own back when that returns; the other nodes keep theirs throughout.
func TestStickyGatewayLeavesAndReturns(t *testing.T) {
	s := stickyState(t, "", same)
	keys := simKeys(400)
	home := make([]int, len(keys))
	for k, key := range keys {
		home[k] = hrw(key, all(true))
	}
	const gone = 3 // gw4, half of the weight
	s.setOnline("gw4", false)
	for k, key := range keys {
		atShare(s, same)
		s.setOnline("gw4", false)
		c, _ := s.choose("d", key)
		want := simGateways[hrw(key, without(gone))].name
		if c.Worker != want {
			t.Fatalf("gw4 offline, key %d: %s, want %s", k, c.Worker, want)
		}
		if home[k] != gone && c.Worker != simGateways[home[k]].name {
			t.Fatalf("key %d moved from %s though its gateway is online", k, simGateways[home[k]].name)
		}
	}
	for k, key := range keys {
		atShare(s, same) // gw4 back, at its share
		if c, _ := s.choose("d", key); c.Worker != simGateways[home[k]].name {
			t.Fatalf("gw4 back, key %d: %s, want %s", k, c.Worker, simGateways[home[k]].name)
		}
	}
}

// Two brokers fed the same bus messages: a node registers with one, and
// later again with the other. Sticky, both give it the same gateway, with
// no state shared between them; only a node the first placed by the
// least-loaded fallback (while loads grow from zero, its own gateway was
// over tolerance) now gets its own gateway. (Least loaded, the second
// answer is whichever gateway is least loaded then.)
func TestStickyTwoBrokersAgree(t *testing.T) {
	for _, tc := range []struct {
		sticky bool
		start  int // peers per unit of weight at the start
	}{{true, 0}, {true, 100}, {false, 0}} {
		sticky := tc.sticky
		t.Run(fmt.Sprintf("sticky=%v start=%d", sticky, tc.start), func(t *testing.T) {
			var brokers []*Broker
			for _, name := range []string{"a", "b"} {
				brokers = append(brokers, New(Options{Name: name, Domains: []string{"ffmuc_welt"}, Publisher: &fakePublisher{},
					Weight: simWeight, Sticky: sticky, StickyTolerance: 10, Logger: slog.New(slog.DiscardHandler)}))
			}
			bus := func(topic, payload string) {
				for _, b := range brokers {
					b.HandleMessage(topic, []byte(payload))
				}
			}
			bus("wireguard-broker/a/status", "1")
			bus("wireguard-broker/b/status", "1")
			real := map[string]int{}
			metrics := func() {
				for _, g := range simGateways {
					bus("wireguard-metrics/ffmuc_welt/"+g.name+"/connected_peers", fmt.Sprint(real[g.name]))
				}
			}
			for _, g := range simGateways {
				real[g.name] = tc.start * g.weight
				bus("wireguard-worker/"+g.name+"/ffmuc_welt/data",
					fmt.Sprintf(`{"ExternalAddress":"%s.example.net","Port":51820,"PublicKey":"%s","LinkAddress":"fe80::1"}`, g.name, testKey))
				bus("wireguard-worker/"+g.name+"/status", "1")
			}
			metrics()
			keys := simKeys(2000)
			at := make([]string, len(keys))
			fallback := make([]bool, len(keys))
			for i, key := range keys { // the brokers take turns
				c, err := brokers[i%2].state.choose("ffmuc_welt", key)
				if err != nil {
					t.Fatal(err)
				}
				at[i], fallback[i] = c.Worker, !c.Hashed
				real[c.Worker]++
				if i%20 == 19 {
					metrics()
				}
			}
			metrics()
			disagree, fallbacks := 0, 0
			for i, key := range keys { // each node asks the other broker
				c, err := brokers[(i+1)%2].state.choose("ffmuc_welt", key)
				if err != nil {
					t.Fatal(err)
				}
				if c.Worker != at[i] {
					disagree++
					if fallback[i] {
						fallbacks++
					}
				}
				if i%20 == 19 {
					metrics() // its peer count did not change: same node
				}
			}
			t.Logf("the second broker gives %d of %d nodes another gateway than the first", disagree, len(keys))
			if sticky {
				t.Logf("  of them placed by the least-loaded fallback at first: %d", fallbacks)
			}
			switch {
			case sticky && disagree != fallbacks:
				t.Errorf("sticky brokers disagree on %d nodes the hashed rule placed", disagree-fallbacks)
			case sticky && tc.start > 0 && disagree != 0:
				t.Errorf("starting at the shares, sticky brokers disagree on %d nodes", disagree)
			case !sticky && disagree == 0:
				t.Error("least-loaded brokers always agree: the comparison shows nothing")
			}
		})
	}
}

// broker.selection reaches the broker: sticky, one node asking again and
// again gets one gateway; least loaded, the +1 moves it on.
func TestV2Selection(t *testing.T) {
	for _, sticky := range []bool{true, false} {
		b := New(Options{Domains: []string{"ffmuc_welt"}, Publisher: &fakePublisher{}, KeyQoS: 1, Sticky: sticky, StickyTolerance: 10,
			Logger: slog.New(slog.DiscardHandler)})
		announceTo(b, "gw1", 40001, "50")
		announceTo(b, "gw2", 40002, "50")
		ports := map[any]int{}
		for range 4 {
			_, m := do(t, b, "POST", "/api/v2/wg/key/exchange", "", body("ffmuc_welt", testKey))
			ports[m["Endpoint"].(map[string]any)["Port"]]++
		}
		if sticky && len(ports) != 1 || !sticky && len(ports) != 2 {
			t.Errorf("sticky=%v: gateways handed to one node: %v", sticky, ports)
		}
	}
}
