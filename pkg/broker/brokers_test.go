package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex/internal/promtest"
)

func brokerNames(s *state) map[string]bool {
	out := map[string]bool{}
	for _, b := range s.brokerSnapshots() {
		out[fmt.Sprintf("%s online=%v self=%v", b.Name, b.Online, b.Self)] = true
	}
	return out
}

func TestBrokerPresence(t *testing.T) {
	clock := newClock()
	s := newState(stateConfig{now: clock.Now, self: "B1"})
	if n := s.onlineBrokers(); n != 1 {
		t.Fatalf("alone: %d brokers online, want 1", n)
	}
	// At startup the bus hands back this broker's own 0 of its last
	// shutdown: it still counts itself.
	s.setBrokerOnline("b1", false)
	s.setBrokerOnline("b2", true)
	s.setBrokerOnline("b3", true)
	if n := s.onlineBrokers(); n != 3 {
		t.Fatalf("%d brokers online, want 3", n)
	}
	s.setBrokerOnline("B3", false) // names are case-insensitive
	s.setBrokerOnline("b2", true)  // repeated: no double count
	if n := s.onlineBrokers(); n != 2 {
		t.Fatalf("%d brokers online, want 2", n)
	}
	got := s.brokerSnapshots()
	want := []brokerSnapshot{{"B1", true, clock.Now(), true}, {"b2", true, clock.Now(), false}, {"b3", false, clock.Now(), false}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Brokers() = %v, want %v", got, want)
	}

	// Without a name of its own a broker counts the others and itself.
	s = newState(stateConfig{})
	s.setBrokerOnline("b2", true)
	if n, list := s.onlineBrokers(), s.brokerSnapshots(); n != 2 || len(list) != 1 || list[0].Self {
		t.Errorf("nameless: %d online, %v", n, list)
	}
}

func TestBrokerExpiry(t *testing.T) {
	clock := newClock()
	s := newState(stateConfig{now: clock.Now, self: "b1", expiry: 10 * time.Minute})
	s.setBrokerOnline("up", true)     // online: kept however silent
	s.setBrokerOnline("down", false)  // offline and silent: forgotten
	s.setBrokerOnline("later", false) // offline, heard again below
	clock.Advance(10*time.Minute - time.Second)
	if got := s.brokerSnapshots(); len(got) != 4 {
		t.Fatalf("forgotten before the expiry: %v", got)
	}
	s.setBrokerOnline("later", false)
	clock.Advance(time.Second)
	got := brokerNames(s)
	want := map[string]bool{"b1 online=true self=true": true, "up online=true self=false": true, "later online=false self=false": true}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after the expiry: %v, want %v", got, want)
	}
	if n := s.onlineBrokers(); n != 2 {
		t.Errorf("%d online, want 2", n)
	}
}

// Made-up broker names on the bus cannot grow the table, and once the
// offline ones expire a real new broker finds room.
func TestBrokerTableBounded(t *testing.T) {
	clock := newClock()
	s := newState(stateConfig{now: clock.Now, self: "me"})
	for i := range maxBrokers {
		if err := s.setBrokerOnline(fmt.Sprintf("junk%d", i), i%2 == 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.setBrokerOnline("real", true); !errors.Is(err, errTooManyBrokers) {
		t.Fatalf("full table: %v", err)
	}
	if err := s.setBrokerOnline("JUNK1", true); err != nil {
		t.Fatalf("a known name refused: %v", err)
	}
	if n := s.onlineBrokers(); n != 1+maxBrokers/2+1 {
		t.Errorf("%d online", n)
	}
	clock.Advance(defaultWorkerExpiry)
	if err := s.setBrokerOnline("real", true); err != nil {
		t.Fatalf("no room once the offline junk expired: %v", err)
	}
	if got := len(s.brokerSnapshots()); got != 1+maxBrokers/2+1+1 {
		t.Errorf("%d entries", got)
	}
}

// Each of N brokers counts a choice N times: what all of them together
// handed out since the gateway's last metrics message.
func TestChooseCountsEveryBroker(t *testing.T) {
	s := newState(stateConfig{self: "b1"})
	online(s, "w1", map[string]int{"d": 10})
	step := func(want int) {
		t.Helper()
		before := s.snapshot()[0].Peers["d"]
		if _, err := s.choose("d", testKey); err != nil {
			t.Fatal(err)
		}
		if got := s.snapshot()[0].Peers["d"] - before; got != want {
			t.Errorf("a choice added %d, want %d", got, want)
		}
	}
	step(1)
	s.setBrokerOnline("b2", true)
	s.setBrokerOnline("b3", true)
	step(3)
	s.setBrokerOnline("b3", false)
	step(2)
	s.setBrokerOnline("b2", false)
	step(1)
}

// Two brokers share the requests between two metrics messages: counting
// each choice twice, each one's estimate follows what both handed out, and
// together they fill the emptier gateway to the other's level, then share
// evenly. (Counting each choice once, each would fill it on its own, so
// together twice as far: 100 and 200.)
func TestTwoBrokersFillTogether(t *testing.T) {
	a := newState(stateConfig{self: "a"})
	b := newState(stateConfig{self: "b"})
	for _, s := range []*state{a, b} {
		online(s, "w1", map[string]int{"d": 100})
		online(s, "w2", map[string]int{"d": 0})
	}
	a.setBrokerOnline("b", true)
	b.setBrokerOnline("a", true)
	real := map[string]int{"w1": 100, "w2": 0}
	for i := range 200 {
		s := a
		if i%2 == 1 {
			s = b
		}
		c, err := s.choose("d", testKey)
		if err != nil {
			t.Fatal(err)
		}
		real[c.Worker]++
	}
	if real["w2"] != 150 || real["w1"] != 150 {
		t.Errorf("after 200 requests shared by two brokers: %v, want 150 each", real)
	}
}

func TestBrokerStatusMessages(t *testing.T) {
	clock := newClock()
	pub := &fakePublisher{}
	b := New(Options{Name: "b1", Domains: []string{"ffmuc_welt"}, Publisher: pub, KeyQoS: 1, Now: clock.Now,
		Logger: slog.New(slog.DiscardHandler)})
	b.HandleMessage("wireguard-broker/b2/status", []byte("1"))
	b.HandleMessage("wireguard-broker/b3/status", []byte(" 1\n"))
	b.HandleMessage("wireguard-broker/b3/status", nil) // a cleared retained status: offline
	for _, bad := range []struct{ topic, payload string }{
		{"wireguard-broker/b4/status", "online"},
		{"wireguard-broker/b4/status", "2"},
		{"wireguard-broker//status", "1"},
		{"wireguard-broker/b4/other", "1"},
		{"wireguard-broker/b+/status", "1"},
	} {
		b.HandleMessage(bad.topic, []byte(bad.payload))
	}
	st := b.status()
	js, _ := json.Marshal(st.Brokers)
	want := `[{"name":"b1","online":true,"this_broker":true},` +
		`{"name":"b2","online":true,"last_message":"2025-01-01T12:00:00Z"},` +
		`{"name":"b3","online":false,"last_message":"2025-01-01T12:00:00Z"}]`
	if string(js) != want {
		t.Errorf("brokers\n got %s\nwant %s", js, want)
	}
	if st.Selection != "least_loaded" {
		t.Errorf("selection %q", st.Selection)
	}
	// Its own status, once heard on the bus, gives it a last message.
	clock.Advance(time.Second)
	b.HandleMessage("wireguard-broker/b1/status", []byte("1"))
	if own := b.status().Brokers[0]; own.LastSeen != clock.Now() || !own.ThisBroker {
		t.Errorf("own entry %+v", own)
	}

	rec := httptest.NewRecorder()
	b.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	page := rec.Body.String()
	for _, s := range []string{"<h2>Brokers</h2>", "b1 <span class=\"muted\">(this broker)</span>", "<td>b3</td><td><span class=\"off\">offline</span>"} {
		if !strings.Contains(page, s) {
			t.Errorf("status page lacks %q", s)
		}
	}
	_, m := do(t, b, "GET", "/api/v1/status", "", "")
	if list, _ := m["brokers"].([]any); len(list) != 3 {
		t.Errorf("/api/v1/status brokers: %v", m["brokers"])
	}
}

func TestAnnounceAndWithdraw(t *testing.T) {
	pub := &fakePublisher{}
	b := New(Options{Name: "b1", Domains: []string{"ffmuc_welt"}, Publisher: pub, Logger: slog.New(slog.DiscardHandler)})
	if err := b.Announce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := b.Withdraw(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []published{{"wireguard-broker/b1/status", "1", 1, true}, {"wireguard-broker/b1/status", "0", 1, true}}
	if fmt.Sprint(pub.msgs) != fmt.Sprint(want) {
		t.Errorf("published %v, want %v", pub.msgs, want)
	}
	pub.err = errors.New("down")
	if err := b.Announce(t.Context()); err == nil || !strings.Contains(err.Error(), "down") {
		t.Errorf("failed publish: %v", err)
	}

	nameless := &fakePublisher{}
	b = New(Options{Domains: []string{"ffmuc_welt"}, Publisher: nameless, Logger: slog.New(slog.DiscardHandler)})
	if b.Announce(t.Context()) != nil || b.Withdraw(t.Context()) != nil || len(nameless.msgs) != 0 {
		t.Errorf("a broker without a name announced itself: %v", nameless.msgs)
	}
	if !strings.Contains(strings.Join(Subscriptions(), " "), "wireguard-broker/+/status") {
		t.Errorf("subscriptions %v", Subscriptions())
	}
}

func TestBrokerMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := New(Options{Name: "b1", Domains: []string{"ffmuc_welt"}, Publisher: &fakePublisher{}, KeyQoS: 1, Registry: reg, Gatherer: reg,
		Sticky: true, StickyTolerance: 10, Logger: slog.New(slog.DiscardHandler)})
	b.HandleMessage("wireguard-broker/b2/status", []byte("1"))
	announceTo(b, "gw1", 40001, "0")
	do(t, b, "POST", "/api/v2/wg/key/exchange", "", body("ffmuc_welt", testKey))
	fams := scrape(t, b)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"wgkex_broker_brokers_online", nil, 2},
		{"wgkex_broker_sticky_choices_total", map[string]string{"rule": "hashed"}, 1},
		{"wgkex_broker_sticky_choices_total", map[string]string{"rule": "least_loaded"}, 0},
		{"wgkex_broker_worker_connected_peers", map[string]string{"worker": "gw1", "domain": "ffmuc_welt"}, 2},
	} {
		if got := promtest.Value(fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if b.status().Selection != "sticky" {
		t.Errorf("selection %q", b.status().Selection)
	}
}
