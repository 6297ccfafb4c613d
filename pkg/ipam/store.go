package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

var (
	// ErrNotFound: the key holds no lease (never had one, or it was released).
	ErrNotFound = errors.New("no lease for this key")
	// ErrPoolExhausted: every slot of the pool is leased.
	ErrPoolExhausted = errors.New("address pool exhausted")
	// ErrUnavailable: the store could not be reached or failed; nothing was
	// changed that the caller can see, and trying again later may succeed.
	ErrUnavailable = errors.New("address store unavailable")
	// errCorrupt: a stored record that does not decode.
	errCorrupt = errors.New("corrupt lease record")
)

// Lease is a key's claim on one slot of the pool. The prefixes follow
// from the slot and the pool configuration (see Config).
type Lease struct {
	Key      string
	Index    uint64
	Created  time.Time
	LastSeen time.Time
	// Selected is what the broker chose for the node last time (gateway
	// names), kept so that a repeated poll is not counted as a new peer.
	Selected []string
}

// Slots is the range of slot indexes a store may hand out: [First, Limit).
type Slots struct {
	First, Limit uint64
}

// Store keeps leases. Every method is atomic on its own, also between
// several brokers sharing one store: no slot is ever leased to two keys,
// and no key ever holds two slots.
//
// Implementations: Bolt (embedded, one broker), Etcd (shared by brokers).
// A NetBox store would map slots to prefixes with the pool arithmetic.
type Store interface {
	// Get returns key's lease, or ErrNotFound.
	Get(ctx context.Context, key string) (Lease, error)
	// Allocate leases a free slot in slots to key, with Created and
	// LastSeen set to now. If key already holds a lease, it returns that
	// lease unchanged instead. ErrPoolExhausted when no slot is free.
	Allocate(ctx context.Context, key string, slots Slots, now time.Time) (Lease, error)
	// Touch sets LastSeen of key's lease to now, and replaces Selected
	// when selected is not nil. ErrNotFound when key no longer holds the
	// slot index (it was released, and perhaps leased again).
	Touch(ctx context.Context, key string, index uint64, now time.Time, selected []string) error
	// Release frees key's slot if the lease was last seen before
	// idleBefore, compared at the moment of release so that a concurrent
	// Touch wins. It reports whether it released anything.
	Release(ctx context.Context, key string, idleBefore time.Time) (bool, error)
	// Idle lists the leases last seen before idleBefore.
	Idle(ctx context.Context, idleBefore time.Time) ([]Lease, error)
	Close() error
}

// record is a lease as stored, in both stores.
type record struct {
	Index    uint64   `json:"index"`
	Created  int64    `json:"created"`
	LastSeen int64    `json:"last_seen"`
	Selected []string `json:"selected,omitempty"`
}

func newRecord(index uint64, now time.Time) record {
	return record{Index: index, Created: now.Unix(), LastSeen: now.Unix()}
}

func (r record) encode() []byte {
	b, err := json.Marshal(r)
	if err != nil {
		panic(err) // cannot happen: plain struct
	}
	return b
}

func decodeRecord(key string, b []byte) (record, error) {
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return record{}, fmt.Errorf("%w for %q: %v", errCorrupt, key, err)
	}
	return r, nil
}

func (r record) lease(key string) Lease {
	return Lease{
		Key:      key,
		Index:    r.Index,
		Created:  time.Unix(r.Created, 0),
		LastSeen: time.Unix(r.LastSeen, 0),
		Selected: slices.Clone(r.Selected),
	}
}

// touched is r seen at now, with selected replacing Selected unless nil.
func (r record) touched(now time.Time, selected []string) record {
	r.LastSeen = now.Unix()
	if selected != nil {
		r.Selected = slices.Clone(selected)
	}
	return r
}

func (r record) idle(before time.Time) bool { return r.LastSeen < before.Unix() }

// firstGap returns the first index in [from, to) that next does not
// yield. next yields the leased indexes from `from` on, ascending, and
// false at the end.
func firstGap(from, to uint64, next func() (uint64, bool, error)) (uint64, bool, error) {
	want := from
	for want < to {
		used, ok, err := next()
		if err != nil {
			return 0, false, err
		}
		if !ok || used > want {
			return want, true, nil
		}
		if used == want {
			want++
		}
		// used < want cannot happen for an ascending sequence from `from`;
		// skipping it is the safe reading.
	}
	return 0, false, nil
}

// searchOrder is where a store looks for a free slot: from the hint (where
// the last allocation stopped) to the end, then from the start. Handing
// out slots round the pool delays the reuse of a released one as long as
// possible.
func searchOrder(hint uint64, s Slots) [][2]uint64 {
	if hint < s.First || hint >= s.Limit {
		hint = s.First
	}
	if hint == s.First {
		return [][2]uint64{{s.First, s.Limit}}
	}
	return [][2]uint64{{hint, s.Limit}, {s.First, hint}}
}

// unavailable wraps a store failure, keeping our own sentinel errors and a
// caller's cancellation as they are.
func unavailable(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrPoolExhausted), errors.Is(err, errCorrupt),
		errors.Is(err, ErrUnavailable), errors.Is(err, context.Canceled):
		return err
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}
