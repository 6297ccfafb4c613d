package ipam

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// twoBrokers runs keys through two allocators on two etcd clients at once,
// every key asked for by both, and returns each key's slot. It fails the
// test when the brokers disagree about a key.
func twoBrokers(t *testing.T, cfg Config, keys []string, workersEach int) (map[string]uint64, []error) {
	t.Helper()
	srv := startEtcd(t)
	brokers := []*Allocator{
		newAllocator(t, cfg, srv.Open(t, "/shared/")),
		newAllocator(t, cfg, srv.Open(t, "/shared/")),
	}
	type result struct {
		broker int
		key    string
		as     Assignment
		err    error
	}
	results := make(chan result, 2*len(keys))
	var wg sync.WaitGroup
	for b, a := range brokers {
		work := make(chan string)
		for range workersEach {
			wg.Go(func() {
				for key := range work {
					as, err := a.Assign(context.Background(), key)
					results <- result{b, key, as, err}
				}
			})
		}
		wg.Go(func() {
			defer close(work)
			// The two brokers walk the keys in opposite orders, so that
			// they meet on keys as well as on slots.
			for i := range keys {
				k := keys[i]
				if b == 1 {
					k = keys[len(keys)-1-i]
				}
				work <- k
			}
		})
	}
	wg.Wait()
	close(results)

	slots := map[string]uint64{}
	var errs []error
	for r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("broker %d, %s: %w", r.broker, r.key, r.err))
			continue
		}
		if prev, ok := slots[r.key]; ok && prev != r.as.Index {
			t.Errorf("%s: slot %d from one broker, %d from the other", r.key, prev, r.as.Index)
		}
		slots[r.key] = r.as.Index
	}
	return slots, errs
}

func keys(n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("node-%03d", i)
	}
	return ks
}

func TestEtcdTwoBrokersNeverShareASlot(t *testing.T) {
	ks := keys(100)
	slots, errs := twoBrokers(t, ffmuc, ks, 4) // 127 free slots
	for _, err := range errs {
		t.Error(err)
	}
	owner := map[uint64]string{}
	for k, s := range slots {
		if other, ok := owner[s]; ok {
			t.Errorf("slot %d given to %s and %s", s, other, k)
		}
		owner[s] = k
		if s == 0 || s >= 128 {
			t.Errorf("%s: slot %d outside 1..127", k, s)
		}
	}
	if len(slots) != len(ks) {
		t.Errorf("%d keys have slots, want %d", len(slots), len(ks))
	}
}

func TestEtcdTwoBrokersExhaustAPool(t *testing.T) {
	// 30 keys for 15 slots (a /59 of /63s, slot 0 reserved).
	cfg := Config{XLAT: true, Pool6: mustPrefix("2001:db8:ed0::/59"), CLAT4: mustPrefix("10.80.96.0/22")}
	ks := keys(30)
	slots, errs := twoBrokers(t, cfg, ks, 3)
	owner := map[uint64]string{}
	for k, s := range slots {
		if other, ok := owner[s]; ok {
			t.Errorf("slot %d given to %s and %s", s, other, k)
		}
		owner[s] = k
	}
	if len(slots) != 15 {
		t.Errorf("%d keys got slots, want all 15", len(slots))
	}
	for _, err := range errs {
		if !errors.Is(err, ErrPoolExhausted) || errors.Is(err, ErrUnavailable) {
			t.Errorf("want only ErrPoolExhausted, got %v", err)
		}
	}
	// Each refused key was refused by both brokers.
	if len(errs) != 2*(len(ks)-15) {
		t.Errorf("%d refusals, want %d", len(errs), 2*(len(ks)-15))
	}
}

func TestEtcdUnavailable(t *testing.T) {
	srv := startEtcd(t)
	e, err := OpenEtcd(EtcdConfig{Endpoints: []string{srv.client}, Prefix: "/u/", OpTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	clock := newClock()
	a := newAllocator(t, small(clock), e)
	ctx := context.Background()
	first := assign(t, a, "k1")

	srv.Stop()
	for _, key := range []string{"k1", "k2"} {
		_, err := a.Assign(ctx, key)
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrPoolExhausted) || errors.Is(err, ErrNotFound) {
			t.Fatalf("etcd down, key %s: %v, want ErrUnavailable", key, err)
		}
	}
	if _, err := a.ReleaseIdle(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("etcd down, release: %v", err)
	}
	if err := a.Remember(ctx, "k1", []string{"gw"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("etcd down, remember: %v", err)
	}

	// Nothing was half-done: back up, k1 keeps its slot and k2 gets another.
	srv.Start()
	var again Assignment
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The client reconnects on its own; each try is bounded by OpTimeout.
		again, err = a.Assign(ctx, "k1")
		if err == nil || !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if again.Index != first.Index {
		t.Fatalf("after restart k1 has slot %d, had %d", again.Index, first.Index)
	}
	if k2 := assign(t, a, "k2"); k2.Index == first.Index {
		t.Fatalf("k2 got k1's slot %d", k2.Index)
	}
}

func TestEtcdRefusesNoEndpoints(t *testing.T) {
	if _, err := OpenEtcd(EtcdConfig{}); err == nil {
		t.Fatal("OpenEtcd without endpoints succeeded")
	}
}
