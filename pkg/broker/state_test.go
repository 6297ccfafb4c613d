package broker

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

func data(port int) *wgkex.WorkerData {
	return &wgkex.WorkerData{ExternalAddress: "gw.example.net", Port: port,
		PublicKey: "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", LinkAddress: "fe80::1"}
}

func weights(m map[string]int) func(string) int {
	return func(w string) int {
		if n, ok := m[w]; ok {
			return n
		}
		return 1
	}
}

func online(s *state, worker string, peers map[string]int) {
	s.setOnline(worker, true)
	for d, n := range peers {
		s.setConnectedPeers(worker, d, n)
		s.setData(worker, d, data(40000))
	}
}

func TestChooseWorkedCases(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights map[string]int
		w1, w2  map[string]int
		want    string
	}{
		{"equal weights, fewer peers wins", nil, map[string]int{"d": 20}, map[string]int{"d": 19}, "w2"},
		{"peers summed over domains", nil, map[string]int{"d": 25, "e": 5}, map[string]int{"d": 20, "e": 20}, "w1"},
		{"weights 84 and 42", map[string]int{"w1": 84, "w2": 42}, map[string]int{"d": 21}, map[string]int{"d": 19}, "w1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newState(stateConfig{weight: weights(tc.weights)})
			online(s, "w1", tc.w1)
			online(s, "w2", tc.w2)
			c, err := s.choose("d", testKey)
			if err != nil || c.Worker != tc.want {
				t.Fatalf("Choose = %q, %v; want %q", c.Worker, err, tc.want)
			}
		})
	}
}

func TestChooseEdgeCases(t *testing.T) {
	t.Run("no candidate", func(t *testing.T) {
		s := newState(stateConfig{weight: weights(nil)})
		if _, err := s.choose("d", testKey); !errors.Is(err, errNoGateway) {
			t.Fatalf("err = %v", err)
		}
		s.setOnline("w1", true) // online, but no metric for d yet
		if _, err := s.choose("d", testKey); !errors.Is(err, errNoGateway) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("offline worker is no candidate", func(t *testing.T) {
		s := newState(stateConfig{weight: weights(nil)})
		online(s, "w1", map[string]int{"d": 0})
		online(s, "w2", map[string]int{"d": 100})
		s.setOnline("w1", false)
		if c, _ := s.choose("d", testKey); c.Worker != "w2" {
			t.Fatalf("chose %q", c.Worker)
		}
	})
	t.Run("-1 takes a worker out of a domain", func(t *testing.T) {
		s := newState(stateConfig{weight: weights(nil)})
		online(s, "w1", map[string]int{"d": 0, "e": 0})
		s.setConnectedPeers("w1", "d", -1)
		if _, err := s.choose("d", testKey); !errors.Is(err, errNoGateway) {
			t.Fatalf("err = %v", err)
		}
		if _, err := s.choose("e", testKey); err != nil {
			t.Fatalf("other domain: %v", err)
		}
	})
	t.Run("zero peers everywhere spreads a burst", func(t *testing.T) {
		s := newState(stateConfig{weight: weights(nil)})
		online(s, "w1", map[string]int{"d": 0})
		online(s, "w2", map[string]int{"d": 0})
		online(s, "w3", map[string]int{"d": 0})
		count := map[string]int{}
		for i := 0; i < 30; i++ {
			c, err := s.choose("d", testKey)
			if err != nil {
				t.Fatal(err)
			}
			count[c.Worker]++
		}
		if count["w1"] != 10 || count["w2"] != 10 || count["w3"] != 10 {
			t.Fatalf("burst spread = %v, want 10 each", count)
		}
	})
	t.Run("weights respected in a burst", func(t *testing.T) {
		s := newState(stateConfig{weight: weights(map[string]int{"w1": 3})}) // w2 unlisted: weight 1
		online(s, "w1", map[string]int{"d": 0})
		online(s, "w2", map[string]int{"d": 0})
		count := map[string]int{}
		for i := 0; i < 40; i++ {
			c, _ := s.choose("d", testKey)
			count[c.Worker]++
		}
		if count["w1"] != 30 || count["w2"] != 10 {
			t.Fatalf("spread = %v, want w1 30, w2 10", count)
		}
	})
	t.Run("online without data is a 500", func(t *testing.T) {
		s := newState(stateConfig{weight: weights(nil)})
		s.setOnline("w1", true)
		s.setConnectedPeers("w1", "d", 3)
		c, err := s.choose("d", testKey)
		if !errors.Is(err, errNoGatewayData) || c.Worker != "" {
			t.Fatalf("Choose = %+v, %v", c, err)
		}
		if got := s.snapshot()[0].Peers["d"]; got != 3 {
			t.Errorf("a failed choice counted a peer: %d", got)
		}
	})
	t.Run("data can be cleared", func(t *testing.T) {
		s := newState(stateConfig{weight: weights(nil)})
		online(s, "w1", map[string]int{"d": 3})
		s.setData("w1", "d", nil)
		if _, err := s.choose("d", testKey); !errors.Is(err, errNoGatewayData) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestChooseConcurrent(t *testing.T) {
	s := newState(stateConfig{weight: weights(nil)})
	for i := 0; i < 4; i++ {
		online(s, fmt.Sprintf("w%d", i), map[string]int{"d": 0})
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				if _, err := s.choose("d", testKey); err != nil {
					t.Error(err)
					return
				}
				s.setConnectedPeers("w0", "e", i)
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, w := range s.snapshot() {
		total += w.Peers["d"]
	}
	if total != 800 {
		t.Fatalf("counted %d choices, want 800", total)
	}
}

func TestStateBounded(t *testing.T) {
	s := newState(stateConfig{weight: weights(nil)})
	for i := 0; i < maxUnlisted; i++ {
		if err := s.setOnline(fmt.Sprintf("w%d", i), true); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.setOnline("one-too-many", true); !errors.Is(err, errTooManyWorkers) {
		t.Fatalf("err = %v", err)
	}
	if err := s.setConnectedPeers("w1", "d", 3); err != nil {
		t.Fatalf("known worker refused: %v", err)
	}
	if len(s.snapshot()) != maxUnlisted {
		t.Fatalf("%d workers", len(s.snapshot()))
	}
}
