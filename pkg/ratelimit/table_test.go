package ratelimit

import (
	"net/netip"
	"runtime"
	"testing"
	"time"
)

func v4(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// v6 gives client i a /64 of its own (2001:db8:i::/64, i < 2^32).
func v6(i int) netip.Addr {
	var b [16]byte
	b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
	b[4], b[5], b[6], b[7] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	b[15] = 1
	return netip.AddrFrom16(b)
}

func TestLeastRecentlySeenClientIsEvicted(t *testing.T) {
	c := newClock()
	l := mustNew(t, Config{PerClient: 0.001, PerClientBurst: 1, Global: -1, MaxClients: 3, Now: c.Now})
	a, b := v4(1), v4(2)
	if l.admit(a, c.Now()).by != nobody || l.admit(a, c.Now()).by != byClient {
		t.Fatal("a: want one pass, then a refusal")
	}
	l.admit(b, c.Now())
	l.admit(v4(3), c.Now())
	l.admit(a, c.Now()) // refused, but seen: b is now the oldest
	l.admit(v4(4), c.Now())
	if v := l.admit(a, c.Now()); v.by != byClient {
		t.Error("a was evicted although b was older")
	}
	if v := l.admit(b, c.Now()); v.by != nobody {
		t.Error("b was not evicted: it is still refused")
	}
	st := l.stats()
	if st.Clients != 3 {
		t.Errorf("%d clients kept, want MaxClients = 3", st.Clients)
	}
	if st.Evicted != 2 { // b for v4(4), then v4(3) for b
		t.Errorf("%d evictions, want 2", st.Evicted)
	}
}

func TestRefilledBucketsAreDropped(t *testing.T) {
	c := newClock()
	// A bucket of 4 at 2/s is full 2 s after its last request.
	l := mustNew(t, Config{PerClient: 2, PerClientBurst: 4, Global: -1, MaxClients: 1000, Now: c.Now})
	for i := range 10 {
		l.admit(v4(i), c.Now())
	}
	c.Advance(1999 * time.Millisecond)
	l.admit(v4(100), c.Now())
	if n := l.stats().Clients; n != 11 {
		t.Fatalf("%d clients, want 11: none of them had refilled", n)
	}
	c.Advance(time.Millisecond)
	l.admit(v4(100), c.Now()) // sweeps at most sweepMax = 16 of the 10 full ones
	if n := l.stats().Clients; n != 1 {
		t.Errorf("%d clients kept, want 1: the refilled buckets carry nothing", n)
	}
	if e := l.stats().Evicted; e != 0 {
		t.Errorf("%d evictions counted for idle expiry", e)
	}
}

// TestStateStaysBounded feeds 10× MaxClients distinct clients through and
// checks the table keeps MaxClients entries and that the heap does not grow
// with the extra clients (BenchmarkMemory reports the figures at 1,000,000).
func TestStateStaysBounded(t *testing.T) {
	const maxClients = 20_000
	c := newClock()
	l := mustNew(t, Config{Global: -1, MaxClients: maxClients, Now: c.Now})
	atMax := 0.0
	for i := range 10 * maxClients {
		addr := v6(i)
		if i%2 == 1 {
			addr = v4(i)
		}
		if v := l.admit(addr, c.Now()); v.by != nobody {
			t.Fatalf("client %d refused: a new client has a full bucket", i)
		}
		c.Advance(time.Microsecond)
		if i+1 == maxClients {
			atMax = heapInuse()
		}
	}
	st := l.stats()
	if st.Clients > maxClients {
		t.Errorf("%d clients kept, over MaxClients %d", st.Clients, maxClients)
	}
	if st.Evicted < 8*maxClients {
		t.Errorf("only %d evictions for %d clients over the bound", st.Evicted, 9*maxClients)
	}
	after := heapInuse()
	t.Logf("heap in use: %.1f MB at %d clients, %.1f MB after %d", atMax/1e6, maxClients, after/1e6, 10*maxClients)
	// Generous: the same entries, plus map and allocator slack.
	if after > 1.5*atMax+4e6 {
		t.Errorf("heap grew from %.1f MB to %.1f MB with clients beyond the bound", atMax/1e6, after/1e6)
	}
	runtime.KeepAlive(l)
}

func heapInuse() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapInuse)
}

func TestShardCount(t *testing.T) {
	for _, tc := range []struct{ max, shards int }{
		{1, 1}, {10, 1}, {2047, 1}, {2048, 2}, {100_000, 64}, {10_000_000, 64},
	} {
		n := shardCount(tc.max)
		if n != tc.shards {
			t.Errorf("shardCount(%d) = %d, want %d", tc.max, n, tc.shards)
		}
		if n*(tc.max/n) > tc.max || tc.max/n < 1 {
			t.Errorf("MaxClients %d: %d shards of %d", tc.max, n, tc.max/n)
		}
	}
}
