package ratelimit

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// clientKey names a client: an IPv4 address as ::ffff:a.b.c.d, an IPv6
// address cut to its /64 (the low 8 bytes zero) or a whole IPv6 link-local
// address (fe80::/10, never cut), or unknownKey. The forms cannot collide.
type clientKey [16]byte

// unknownKey is the one client all requests without a usable address share.
var unknownKey = clientKey{0: 0xff, 1: 0xff, 2: 0xff, 3: 0xff, 4: 0xff, 5: 0xff, 6: 0xff, 7: 0xff,
	8: 0xff, 9: 0xff, 10: 0xff, 11: 0xff, 12: 0xff, 13: 0xff, 14: 0xff, 15: 0xff}

// table holds the client buckets: shards of a map plus a list from the most
// to the least recently seen client, so the oldest can be dropped in O(1).
type table struct {
	seed   maphash.Seed
	shards []shard
	limit  rate.Limit
	burst  int
	// full is how long an untouched bucket takes to refill completely;
	// after that it is the same as a new one and can be dropped.
	full    time.Duration
	evicted atomic.Uint64
}

type shard struct {
	mu      sync.Mutex
	entries map[clientKey]*entry
	newest  *entry
	oldest  *entry
	max     int
	_       [64]byte // keep neighbouring shards' locks off one cache line
}

type entry struct {
	key    clientKey
	bucket *rate.Limiter
	seen   time.Time // last request, refused ones included
	newer  *entry
	older  *entry
}

// sweepMax bounds the idle entries one request drops, so that no request
// pays for a whole shard going idle at once.
const sweepMax = 16

func newTable(limit rate.Limit, burst, maxClients int) *table {
	n := shardCount(maxClients)
	t := &table{
		seed:   maphash.MakeSeed(),
		shards: make([]shard, n),
		limit:  limit,
		burst:  burst,
		full:   time.Duration(float64(burst) / float64(limit) * float64(time.Second)),
	}
	for i := range t.shards {
		t.shards[i].entries = make(map[clientKey]*entry)
		t.shards[i].max = maxClients / n
	}
	return t
}

// shardCount spreads maxClients over up to 64 shards (a power of two) of at
// least 1,024 entries each; shards × their size never exceeds maxClients.
func shardCount(maxClients int) int {
	n := 1
	for n < 64 && maxClients/(2*n) >= 1024 {
		n *= 2
	}
	return n
}

// lock finds or makes key's entry, marks it seen at now and returns it with
// its shard locked; the caller unlocks s.mu.
func (t *table) lock(key clientKey, now time.Time) (s *shard, e *entry) {
	s = &t.shards[maphash.Comparable(t.seed, key)&uint64(len(t.shards)-1)]
	s.mu.Lock()
	for i := 0; i < sweepMax && s.oldest != nil && now.Sub(s.oldest.seen) >= t.full; i++ {
		s.remove(s.oldest)
	}
	e = s.entries[key]
	if e != nil {
		s.unlink(e)
	} else {
		if len(s.entries) >= s.max {
			if now.Sub(s.oldest.seen) < t.full {
				t.evicted.Add(1)
			}
			s.remove(s.oldest)
		}
		e = &entry{key: key, bucket: rate.NewLimiter(t.limit, t.burst)}
		s.entries[key] = e
	}
	e.seen = now
	s.pushNewest(e)
	return s, e
}

func (t *table) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += len(s.entries)
		s.mu.Unlock()
	}
	return n
}

func (s *shard) remove(e *entry) {
	s.unlink(e)
	delete(s.entries, e.key)
}

func (s *shard) unlink(e *entry) {
	if e.newer != nil {
		e.newer.older = e.older
	} else {
		s.newest = e.older
	}
	if e.older != nil {
		e.older.newer = e.newer
	} else {
		s.oldest = e.newer
	}
	e.newer, e.older = nil, nil
}

func (s *shard) pushNewest(e *entry) {
	e.older = s.newest
	if s.newest != nil {
		s.newest.newer = e
	} else {
		s.oldest = e
	}
	s.newest = e
}
