package broker

import (
	"encoding/base64"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// simKeys are n WireGuard-like keys, the same on every run.
func simKeys(n int) []string {
	r := rand.New(rand.NewPCG(1, 2))
	keys := make([]string, n)
	raw := make([]byte, 32)
	for i := range keys {
		for j := range raw {
			raw[j] = byte(r.Uint32())
		}
		keys[i] = base64.StdEncoding.EncodeToString(raw)
	}
	return keys
}

// simGateways are four gateways weighing 1, 1, 2 and 4.
var simGateways = []struct {
	name   string
	weight int
}{{"gw1", 1}, {"gw2", 1}, {"gw3", 2}, {"gw4", 4}}

func simWeight(name string) int {
	for _, g := range simGateways {
		if g.name == name {
			return g.weight
		}
	}
	return 1
}

// hrw is pure weighted rendezvous hashing of key over the gateways with
// in[i] set: the index of the winner.
func hrw(key string, in []bool) int {
	var scores [4]float64
	for i, g := range simGateways {
		scores[i] = rendezvousScore(key, g.name, g.weight)
	}
	return top(scores, in)
}

// top is the index of the highest of scores with in[i] set.
func top(scores [4]float64, in []bool) int {
	best, bestScore := -1, math.Inf(-1)
	for i, sc := range scores {
		if in[i] && sc > bestScore {
			best, bestScore = i, sc
		}
	}
	return best
}

// deviation is each gateway's share of count relative to its weighted share
// among the gateways with in[i] set, in percent (+10: 10 % above its
// share), and the largest absolute one.
func deviation(count []int, in []bool) (per []float64, worst float64) {
	total, weights := 0, 0
	for i, g := range simGateways {
		if in[i] {
			total += count[i]
			weights += g.weight
		}
	}
	per = make([]float64, len(simGateways))
	for i, g := range simGateways {
		if !in[i] || total == 0 {
			continue
		}
		want := float64(g.weight) / float64(weights)
		per[i] = 100 * (float64(count[i])/float64(total) - want) / want
		worst = max(worst, math.Abs(per[i]))
	}
	return per, worst
}

func fmtDev(per []float64, in []bool) string {
	var parts []string
	for i, g := range simGateways {
		if in[i] {
			parts = append(parts, fmt.Sprintf("%s(w%d) %+.2f%%", g.name, g.weight, per[i]))
		}
	}
	return strings.Join(parts, ", ")
}

func all(b bool) []bool { return []bool{b, b, b, b} }

func without(i int) []bool {
	in := all(true)
	in[i] = false
	return in
}

// Weighted rendezvous hashing on its own: the split follows the weights,
// and when a gateway leaves or joins, only the nodes that hash to it move.
func TestRendezvousSimulation(t *testing.T) {
	keys := simKeys(100_000)
	scores := make([][4]float64, len(keys))
	home := make([]int, len(keys))
	count := make([]int, len(simGateways))
	for k, key := range keys {
		for i, g := range simGateways {
			scores[k][i] = rendezvousScore(key, g.name, g.weight)
		}
		home[k] = top(scores[k], all(true))
		count[home[k]]++
	}
	per, worst := deviation(count, all(true))
	t.Logf("pure rendezvous, %d keys, weights 1,1,2,4: %s; largest %.2f%%", len(keys), fmtDev(per, all(true)), worst)
	if worst > 2 {
		t.Errorf("largest deviation from the weights %.2f%%, want under 2%% with %d keys", worst, len(keys))
	}

	for gone := range simGateways {
		kept, strays := 0, 0
		for k := range keys {
			now := top(scores[k], without(gone))
			switch {
			case now == home[k]:
				kept++
			case home[k] != gone:
				strays++ // a node of another gateway moved
			}
		}
		ideal := 1 - float64(simGateways[gone].weight)/8
		t.Logf("%s (weight %d) leaves: %.2f%% of nodes keep their gateway (ideal %.2f%%)",
			simGateways[gone].name, simGateways[gone].weight, 100*float64(kept)/float64(len(keys)), 100*ideal)
		if strays > 0 {
			t.Errorf("%s leaves: %d nodes of other gateways moved", simGateways[gone].name, strays)
		}
	}
	for joins := range simGateways {
		kept, strays := 0, 0
		for k := range keys {
			before := top(scores[k], without(joins))
			switch {
			case before == home[k]:
				kept++
			case home[k] != joins:
				strays++ // moved, but not to the new gateway
			}
		}
		ideal := 1 - float64(simGateways[joins].weight)/8
		t.Logf("%s (weight %d) joins the other three: %.2f%% of nodes keep their gateway (ideal %.2f%%)",
			simGateways[joins].name, simGateways[joins].weight, 100*float64(kept)/float64(len(keys)), 100*ideal)
		if strays > 0 {
			t.Errorf("%s joins: %d nodes moved to another gateway than it", simGateways[joins].name, strays)
		}
	}
}

// simWorld is a mesh of nodes, gateways and brokers: nodes ask the brokers
// in turn, and every metricsEvery requests the gateways report the peers
// they really have, as workers do every metrics_interval.
type simWorld struct {
	brokers      []*state
	at           []int // node -> gateway index, -1 none
	count        []int // peers per gateway
	online       []bool
	next, since  int
	metricsEvery int
	hashed       int // choices by the sticky rule itself
	requests     int
}

func newSimWorld(t testing.TB, nodes, brokers, metricsEvery int, sticky bool) *simWorld {
	t.Helper()
	w := &simWorld{at: make([]int, nodes), count: make([]int, len(simGateways)), online: all(true), metricsEvery: metricsEvery}
	for i := range w.at {
		w.at[i] = -1
	}
	for i := range brokers {
		s := newState(stateConfig{weight: simWeight, sticky: sticky, tolerance: 10, self: fmt.Sprintf("b%d", i)})
		for j := range brokers {
			s.setBrokerOnline(fmt.Sprintf("b%d", j), true)
		}
		for _, g := range simGateways {
			online(s, g.name, map[string]int{"d": 0})
		}
		w.brokers = append(w.brokers, s)
	}
	return w
}

func (w *simWorld) index(name string) int {
	for i, g := range simGateways {
		if g.name == name {
			return i
		}
	}
	return -1
}

// request registers node with key; it reports whether the node kept its
// gateway.
func (w *simWorld) request(t testing.TB, node int, key string) bool {
	s := w.brokers[w.next%len(w.brokers)]
	w.next++
	c, err := s.choose("d", key)
	if err != nil {
		t.Fatal(err)
	}
	w.requests++
	if c.Hashed {
		w.hashed++
	}
	gw := w.index(c.Worker)
	kept := w.at[node] == gw
	if w.at[node] >= 0 {
		w.count[w.at[node]]--
	}
	w.at[node] = gw
	w.count[gw]++
	if w.since++; w.since >= w.metricsEvery {
		w.report()
	}
	return kept
}

func (w *simWorld) report() {
	w.since = 0
	for _, s := range w.brokers {
		for i, g := range simGateways {
			if w.online[i] {
				s.setConnectedPeers(g.name, "d", w.count[i])
			}
		}
	}
}

// leave takes gateway i offline: its nodes lose their link.
func (w *simWorld) leave(i int) (orphans []int) {
	w.online[i] = false
	for _, s := range w.brokers {
		s.setOnline(simGateways[i].name, false)
	}
	for n, at := range w.at {
		if at == i {
			orphans = append(orphans, n)
			w.at[n] = -1
		}
	}
	w.count[i] = 0
	return orphans
}

// join brings gateway i back with no peers.
func (w *simWorld) join(i int) {
	w.online[i] = true
	for _, s := range w.brokers {
		s.setOnline(simGateways[i].name, true)
		s.setConnectedPeers(simGateways[i].name, "d", 0)
	}
}

func (w *simWorld) onHome(keys []string) float64 {
	n := 0
	for k, key := range keys {
		if w.at[k] == hrw(key, w.online) {
			n++
		}
	}
	return 100 * float64(n) / float64(len(keys))
}

// reregisterAll lets every node ask again once, in a shuffled order; it
// returns the share of nodes that kept their gateway.
func (w *simWorld) reregisterAll(t testing.TB, keys []string, seed uint64) float64 {
	order := rand.New(rand.NewPCG(seed, 7)).Perm(len(keys))
	kept := 0
	for _, k := range order {
		if w.request(t, k, keys[k]) {
			kept++
		}
	}
	return 100 * float64(kept) / float64(len(keys))
}

// Sticky selection with a 10 % tolerance, as loads grow from zero, when
// every node registers again, and when a gateway leaves and comes back.
// Everything here is deterministic (fixed keys, fixed orders), so the
// assertions are too. The figures are logged (go test -v -run Simulation);
// BenchmarkSelectionSimulation gives them for 100,000 nodes.
func TestStickySimulation(t *testing.T) {
	simulateSticky(t, 10_000, 2)
}

func TestLeastLoadedSimulation(t *testing.T) {
	simulateLeastLoaded(t, 10_000, 2)
}

// BenchmarkSelectionSimulation prints the figures of the simulations for
// 100,000 nodes (go test -v -run X -bench SelectionSimulation -benchtime 1x;
// without -v the log is cut after ten lines).
func BenchmarkSelectionSimulation(b *testing.B) {
	for range b.N {
		simulateSticky(b, 100_000, 1)
		simulateSticky(b, 100_000, 2)
		simulateLeastLoaded(b, 100_000, 2)
	}
}

func simulateSticky(t testing.TB, nodes, brokers int) {
	metricsEvery := nodes / 100 // a metrics interval sees 1 % of the nodes register
	keys := simKeys(nodes)
	t.Logf("sticky, tolerance 10%%, %d nodes, %d broker(s) answering in turn, metrics every %d requests:", nodes, brokers, metricsEvery)
	w := newSimWorld(t, nodes, brokers, metricsEvery, true)
	next := 100
	for k, key := range keys {
		w.request(t, k, key)
		if k+1 == next || k+1 == nodes {
			per, worst := deviation(w.count, w.online)
			t.Logf("  growth, %6d nodes: %s; largest %.2f%%; by the hashed rule so far %.1f%%; on their rendezvous gateway %.1f%%",
				k+1, fmtDev(per, w.online), worst, 100*float64(w.hashed)/float64(w.requests), w.onHome(keys[:k+1]))
			next *= 10
		}
	}
	if _, worst := deviation(w.count, w.online); worst > 10 {
		t.Errorf("after growth a gateway is %.2f%% off its share, over the tolerance", worst)
	}

	w.hashed, w.requests = 0, 0
	kept := w.reregisterAll(t, keys, 1)
	per, worst := deviation(w.count, w.online)
	t.Logf("  every node registers again: %.2f%% keep their gateway; %s; largest %.2f%%; hashed rule %.1f%%; on their rendezvous gateway %.1f%%",
		kept, fmtDev(per, w.online), worst, 100*float64(w.hashed)/float64(w.requests), w.onHome(keys))
	kept = w.reregisterAll(t, keys, 2)
	t.Logf("  and once more: %.2f%% keep their gateway", kept)
	if kept < 99 {
		t.Errorf("steady state: only %.2f%% keep their gateway", kept)
	}

	const gone = 2 // gw3, weight 2: a quarter of the nodes
	orphans := w.leave(gone)
	for _, n := range orphans {
		w.request(t, n, keys[n])
	}
	w.report()
	per, worst = deviation(w.count, w.online)
	t.Logf("  %s leaves: its %d nodes (%.1f%%) register elsewhere, the other %.2f%% keep theirs; %s; largest %.2f%%",
		simGateways[gone].name, len(orphans), 100*float64(len(orphans))/float64(nodes), 100-100*float64(len(orphans))/float64(nodes),
		fmtDev(per, w.online), worst)
	kept = w.reregisterAll(t, keys, 3)
	per, worst = deviation(w.count, w.online)
	t.Logf("    then every node registers again: %.2f%% keep their gateway; %s; largest %.2f%%", kept, fmtDev(per, w.online), worst)
	if kept < 99 {
		t.Errorf("after a gateway left: only %.2f%% keep their gateway", kept)
	}

	w.join(gone)
	kept = w.reregisterAll(t, keys, 4)
	per, worst = deviation(w.count, w.online)
	t.Logf("  %s comes back empty, every node registers again: %.2f%% keep their gateway (ideal %.0f%%); %s; largest %.2f%%; on their rendezvous gateway %.1f%%",
		simGateways[gone].name, kept, 100-100*float64(simGateways[gone].weight)/8, fmtDev(per, w.online), worst, w.onHome(keys))
	kept = w.reregisterAll(t, keys, 5)
	per, worst = deviation(w.count, w.online)
	t.Logf("    and once more: %.2f%% keep their gateway; %s; largest %.2f%%; on their rendezvous gateway %.1f%%",
		kept, fmtDev(per, w.online), worst, w.onHome(keys))
	if worst > 10 {
		t.Errorf("after the gateway came back one is %.2f%% off its share", worst)
	}
}

// simulateLeastLoaded: the least-loaded rule keeps the split exact but
// hands a node that registers again whatever gateway is least loaded at
// that moment.
func simulateLeastLoaded(t testing.TB, nodes, brokers int) {
	keys := simKeys(nodes)
	w := newSimWorld(t, nodes, brokers, nodes/100, false)
	for k, key := range keys {
		w.request(t, k, key)
	}
	per, worst := deviation(w.count, w.online)
	kept := w.reregisterAll(t, keys, 1)
	t.Logf("least loaded, %d nodes, %d broker(s): after growth %s, largest %.2f%%; every node registers again: %.2f%% keep their gateway",
		nodes, brokers, fmtDev(per, w.online), worst, kept)
	if worst > 1 {
		t.Errorf("least loaded off by %.2f%%", worst)
	}
}

// BenchmarkChoose is one choice among four gateways, by each rule.
func BenchmarkChoose(b *testing.B) {
	keys := simKeys(1024)
	for _, sticky := range []bool{false, true} {
		b.Run(map[bool]string{false: "least_loaded", true: "sticky"}[sticky], func(b *testing.B) {
			s := newState(stateConfig{weight: simWeight, sticky: sticky, tolerance: 10})
			for _, g := range simGateways {
				online(s, g.name, map[string]int{"d": 1000 * g.weight})
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := s.choose("d", keys[i%len(keys)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
