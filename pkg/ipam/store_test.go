package ipam

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/fakeclock"
)

func newClock() *fakeclock.Clock { return fakeclock.New(time.Unix(1_700_000_000, 0)) }

const day = 24 * time.Hour

// storeKinds are the stores every behaviour is checked on. etcd starts one
// server per test.
var storeKinds = []struct {
	name string
	open func(t *testing.T) Store
}{
	{"bolt", func(t *testing.T) Store {
		b, err := OpenBolt(filepath.Join(t.TempDir(), "ipam.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}},
	{"etcd", func(t *testing.T) Store {
		return startEtcd(t).Open(t, "/test/")
	}},
}

func forEachStore(t *testing.T, f func(t *testing.T, s Store)) {
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) { f(t, kind.open(t)) })
	}
}

// small is an XLAT pool of four /63s: slots 1..3 usable.
func small(clock *fakeclock.Clock) Config {
	return Config{XLAT: true, Pool6: mustPrefix("2001:db8:ed0::/61"), CLAT4: mustPrefix("10.80.96.0/22"), Now: clock.Now}
}

func newAllocator(t *testing.T, cfg Config, s Store) *Allocator {
	t.Helper()
	a, err := New(cfg, s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func assign(t *testing.T, a *Allocator, key string) Assignment {
	t.Helper()
	as, err := a.Assign(context.Background(), key)
	if err != nil {
		t.Fatalf("assign %s: %v", key, err)
	}
	return as
}

func TestSameKeySamePrefixes(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		clock := newClock()
		cfg := ffmuc
		cfg.Now = clock.Now
		a := newAllocator(t, cfg, s)

		first := assign(t, a, "node-a")
		if !first.New || first.Index != 1 {
			t.Fatalf("first assignment: new %v index %d, want new slot 1 (slot 0 is reserved)", first.New, first.Index)
		}
		if first.Range6.String() != "2001:db8:ed0:2::/64" || first.XLATRange6.String() != "2001:db8:ed0:3::/64" {
			t.Fatalf("first assignment %v %v", first.Range6, first.XLATRange6)
		}
		clock.Advance(2 * time.Minute)
		again := assign(t, a, "node-a")
		if again.New || again.Prefix6 != first.Prefix6 || again.Range4 != first.Range4 || again.Address4 != first.Address4 {
			t.Fatalf("next poll: %+v, want %+v", again, first)
		}
		other := assign(t, a, "node-b")
		if other.Index == first.Index || other.Prefix6.Overlaps(first.Prefix6) {
			t.Fatalf("second key got %v, overlapping the first %v", other.Prefix6, first.Prefix6)
		}
		// A second allocator on the same store (a restarted broker).
		b := newAllocator(t, cfg, s)
		if got := assign(t, b, "node-a"); got.Prefix6 != first.Prefix6 {
			t.Fatalf("after restart: %v, want %v", got.Prefix6, first.Prefix6)
		}
	})
}

func TestPollsWriteOnlyWhenStale(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		clock := newClock()
		a := newAllocator(t, small(clock), s)
		ctx := context.Background()
		start := clock.Now()
		assign(t, a, "k")
		clock.Advance(10 * time.Minute)
		assign(t, a, "k")
		l, err := s.Get(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if !l.LastSeen.Equal(start) {
			t.Fatalf("a poll 10 minutes later wrote last seen %v", l.LastSeen)
		}
		clock.Advance(2 * time.Hour)
		assign(t, a, "k")
		l, _ = s.Get(ctx, "k")
		if !l.LastSeen.Equal(clock.Now()) {
			t.Fatalf("a poll 2 hours later left last seen at %v, want %v", l.LastSeen, clock.Now())
		}
	})
}

func TestIdleLeasesAreReleasedAndReused(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		clock := newClock()
		a := newAllocator(t, small(clock), s)
		ctx := context.Background()
		if a.Capacity() != 3 {
			t.Fatalf("capacity %d, want 3", a.Capacity())
		}
		held := map[string]uint64{}
		for _, k := range []string{"k1", "k2", "k3"} {
			held[k] = assign(t, a, k).Index
		}
		_, err := a.Assign(ctx, "k4")
		if !errors.Is(err, ErrPoolExhausted) || errors.Is(err, ErrUnavailable) {
			t.Fatalf("fourth key in a pool of three: %v, want ErrPoolExhausted", err)
		}
		if _, err := s.Get(ctx, "k4"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("refused key has a lease: %v", err)
		}

		clock.Advance(20 * day)
		assign(t, a, "k1") // k1 polls; k2 and k3 do not
		clock.Advance(11 * day)

		// The full pool gives up the two idle slots for the new key.
		k4 := assign(t, a, "k4")
		if k4.Index == held["k1"] {
			t.Fatalf("k4 got k1's slot %d though k1 polls", k4.Index)
		}
		if got := assign(t, a, "k1"); got.Index != held["k1"] || got.New {
			t.Fatalf("k1 moved from slot %d to %d", held["k1"], got.Index)
		}
		// k2 comes back after 31 days: its slot is gone, it gets the last free one.
		k2 := assign(t, a, "k2")
		if !k2.New || k2.Index == k4.Index || k2.Index == held["k1"] {
			t.Fatalf("k2 got slot %d (new %v); k1 %d, k4 %d", k2.Index, k2.New, held["k1"], k4.Index)
		}
		if _, err := a.Assign(ctx, "k3"); !errors.Is(err, ErrPoolExhausted) {
			t.Fatalf("k3 after its slot was reused: %v, want ErrPoolExhausted", err)
		}
	})
}

func TestReleaseIdle(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		clock := newClock()
		a := newAllocator(t, small(clock), s) // default release_after: 30 days
		ctx := context.Background()
		assign(t, a, "old")
		clock.Advance(29 * day)
		assign(t, a, "young")
		if n, err := a.ReleaseIdle(ctx); err != nil || n != 0 {
			t.Fatalf("after 29 days: released %d (%v), want 0", n, err)
		}
		clock.Advance(2 * day)
		if n, err := a.ReleaseIdle(ctx); err != nil || n != 1 {
			t.Fatalf("after 31 days: released %d (%v), want 1", n, err)
		}
		if _, err := s.Get(ctx, "old"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("released lease: %v", err)
		}
		if _, err := s.Get(ctx, "young"); err != nil {
			t.Fatalf("young lease: %v", err)
		}

		// An injected release_after.
		short := small(clock)
		short.ReleaseAfter = time.Hour
		b := newAllocator(t, short, s)
		clock.Advance(2 * time.Hour)
		if n, err := b.ReleaseIdle(ctx); err != nil || n != 1 {
			t.Fatalf("release_after 1h: released %d (%v), want 1", n, err)
		}
	})
}

func TestReleaseLosesToTouch(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		clock := newClock()
		ctx := context.Background()
		l, err := s.Allocate(ctx, "k", Slots{1, 4}, clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		clock.Advance(31 * day)
		cutoff := clock.Now().Add(-30 * day)
		idle, err := s.Idle(ctx, cutoff)
		if err != nil || len(idle) != 1 || idle[0].Key != "k" {
			t.Fatalf("idle: %v %v", idle, err)
		}
		// The node polls between the sweep's listing and its release.
		if err := s.Touch(ctx, "k", l.Index, clock.Now(), nil); err != nil {
			t.Fatal(err)
		}
		if ok, err := s.Release(ctx, "k", cutoff); err != nil || ok {
			t.Fatalf("release of a just-touched lease: %v %v", ok, err)
		}
		if err := s.Touch(ctx, "k", l.Index+1, clock.Now(), nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("touch of another slot: %v, want ErrNotFound", err)
		}
		if ok, err := s.Release(ctx, "k", farFuture); err != nil || !ok {
			t.Fatalf("forced release: %v %v", ok, err)
		}
		if err := s.Touch(ctx, "k", l.Index, clock.Now(), nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("touch after release: %v, want ErrNotFound", err)
		}
		if ok, err := s.Release(ctx, "k", farFuture); err != nil || ok {
			t.Fatalf("second release: %v %v", ok, err)
		}
		// The freed slot is leased again.
		again, err := s.Allocate(ctx, "other", Slots{l.Index, l.Index + 1}, clock.Now())
		if err != nil || again.Index != l.Index {
			t.Fatalf("freed slot: %+v %v", again, err)
		}
	})
}

func TestRemember(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		clock := newClock()
		a := newAllocator(t, small(clock), s)
		ctx := context.Background()
		if err := a.Remember(ctx, "nobody", []string{"gw1"}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("remember for an unknown key: %v", err)
		}
		first := assign(t, a, "k")
		if len(first.Selected) != 0 {
			t.Fatalf("new lease selected %v", first.Selected)
		}
		if err := a.Remember(ctx, "k", []string{"gw1", "gw2"}); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Minute)
		if got := assign(t, a, "k"); !slices.Equal(got.Selected, []string{"gw1", "gw2"}) || got.Index != first.Index {
			t.Fatalf("after remember: %+v", got)
		}
		l, _ := s.Get(ctx, "k")
		before := l.LastSeen
		clock.Advance(time.Minute)
		if err := a.Remember(ctx, "k", []string{"gw1", "gw2"}); err != nil {
			t.Fatal(err)
		}
		if l, _ := s.Get(ctx, "k"); !l.LastSeen.Equal(before) {
			t.Fatal("remembering the same selection wrote the lease")
		}
		// A touch without a selection keeps it.
		clock.Advance(2 * time.Hour)
		assign(t, a, "k")
		if l, _ := s.Get(ctx, "k"); !slices.Equal(l.Selected, []string{"gw1", "gw2"}) || !l.LastSeen.Equal(clock.Now()) {
			t.Fatalf("after a touch: %+v", l)
		}
		if err := a.Remember(ctx, "k", nil); err != nil {
			t.Fatal(err)
		}
		if l, _ := s.Get(ctx, "k"); len(l.Selected) != 0 {
			t.Fatalf("cleared selection: %v", l.Selected)
		}
	})
}

func TestConcurrentAssign(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		a := newAllocator(t, ffmuc, s) // 127 slots
		const workers, perWorker = 6, 15
		type result struct {
			key   string
			index uint64
			err   error
		}
		results := make(chan result, workers*(perWorker+1))
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range perWorker {
					key := fmt.Sprintf("w%d-k%d", w, i)
					as, err := a.Assign(context.Background(), key)
					results <- result{key, as.Index, err}
				}
				as, err := a.Assign(context.Background(), "shared")
				results <- result{"shared", as.Index, err}
			})
		}
		wg.Wait()
		close(results)
		byIndex := map[uint64]string{}
		for r := range results {
			if r.err != nil {
				t.Fatalf("%s: %v", r.key, r.err)
			}
			if prev, ok := byIndex[r.index]; ok && prev != r.key {
				t.Fatalf("slot %d handed to %s and %s", r.index, prev, r.key)
			}
			byIndex[r.index] = r.key
		}
		if len(byIndex) != workers*perWorker+1 {
			t.Fatalf("%d slots for %d keys", len(byIndex), workers*perWorker+1)
		}
	})
}

func TestAssignRefusesBadKeys(t *testing.T) {
	clock := newClock()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "ipam.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a := newAllocator(t, small(clock), b)
	for _, k := range []string{"", string(make([]byte, maxKeyLen+1))} {
		if _, err := a.Assign(context.Background(), k); err == nil {
			t.Errorf("key of %d bytes accepted", len(k))
		}
	}
	if _, err := New(small(clock), nil); err == nil {
		t.Error("New without a store")
	}
	neg := small(clock)
	neg.ReleaseAfter = -time.Hour
	if _, err := New(neg, b); err == nil {
		t.Error("negative release_after accepted")
	}
}

func TestPoolShrinkMovesLease(t *testing.T) {
	clock := newClock()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "ipam.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	wide := newAllocator(t, ffmuc, b) // 127 slots
	ctx := context.Background()
	for i := range 5 {
		assign(t, wide, fmt.Sprintf("k%d", i)) // slots 1..5
	}
	if ok, err := b.Release(ctx, "k0", farFuture); !ok || err != nil { // frees slot 1
		t.Fatalf("release k0: %v %v", ok, err)
	}
	narrow := newAllocator(t, small(clock), b) // slots 1..3
	got := assign(t, narrow, "k4")             // held slot 5
	if !got.New || got.Index != 1 {
		t.Fatalf("out-of-pool lease: got slot %d (new %v)", got.Index, got.New)
	}
	if _, err := narrow.Assign(ctx, "k3"); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("k3 (slot 4) in a full narrow pool: %v", err)
	}
}

func TestBoltPersistsAndLocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	clock := newClock()
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	a := newAllocator(t, small(clock), b)
	first := assign(t, a, "k")
	if err := a.Remember(context.Background(), "k", []string{"gw"}); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBolt(path); err == nil {
		t.Fatal("a second OpenBolt of an open file succeeded")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b, err = OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a = newAllocator(t, small(clock), b)
	if got := assign(t, a, "k"); got.Index != first.Index || got.New || !slices.Equal(got.Selected, []string{"gw"}) {
		t.Fatalf("after reopening: %+v, want slot %d", got, first.Index)
	}
}

func TestBoltUnavailable(t *testing.T) {
	clock := newClock()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "ipam.db"))
	if err != nil {
		t.Fatal(err)
	}
	a := newAllocator(t, small(clock), b)
	assign(t, a, "k")
	b.Close()
	for _, key := range []string{"k", "new"} {
		_, err := a.Assign(context.Background(), key)
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrPoolExhausted) {
			t.Errorf("closed store, key %s: %v, want ErrUnavailable", key, err)
		}
	}
	if _, err := a.ReleaseIdle(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("closed store, release: %v", err)
	}
}

// countingStore counts the sweeps (Idle calls) that reach the store.
type countingStore struct {
	Store
	mu    sync.Mutex
	idles int
}

func (c *countingStore) Idle(ctx context.Context, before time.Time) ([]Lease, error) {
	c.mu.Lock()
	c.idles++
	c.mu.Unlock()
	return c.Store.Idle(ctx, before)
}

func TestFullPoolSweepsAtMostOncePerMinute(t *testing.T) {
	clock := newClock()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "ipam.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	s := &countingStore{Store: b}
	a := newAllocator(t, small(clock), s)
	ctx := context.Background()
	for _, k := range []string{"k1", "k2", "k3"} {
		assign(t, a, k)
	}
	for i := range 20 {
		if _, err := a.Assign(ctx, fmt.Sprintf("flood-%d", i)); !errors.Is(err, ErrPoolExhausted) {
			t.Fatalf("flood-%d: %v", i, err)
		}
	}
	if s.idles != 1 {
		t.Fatalf("20 refused keys swept the store %d times, want 1", s.idles)
	}
	clock.Advance(time.Minute)
	if _, err := a.Assign(ctx, "later"); !errors.Is(err, ErrPoolExhausted) {
		t.Fatal(err)
	}
	if s.idles != 2 {
		t.Fatalf("a minute later: %d sweeps, want 2", s.idles)
	}
}
