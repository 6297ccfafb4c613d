// Package ipam hands out the address ranges of Parker nodes (docs/protocol.md
// §8): every node key leases one slot of a pool, and its prefixes follow
// from the slot number. The same key gets the same slot on every poll; a
// slot not polled for Config.ReleaseAfter is released and can be handed out
// again.
//
// Two layouts, as the deployed Parker servers have them:
//
// XLAT (Freifunk München, upstream wgkex's parker branch): slot i is the
// i-th /63 (Config.Length6) of Pool6. Its first /64 is range6, its second
// xlat_range6 (the node's CLAT source prefix). range4 is the shared CLAT
// range (Config.CLAT4) for every node. Slot 0, the first /63 of the pool,
// is never handed out: upstream keeps it for infrastructure.
//
// Per-node IPv4 (Freifunk Braunschweig, etcd-tools' etcdconfigweb): slot i
// is the node id; range4 is the i-th /22 (Config.Length4) of Pool4 and
// range6 the i-th /64 of Pool6. With FFBS's pools 10.0.0.0/8 and
// 2001:bf7:381::/48, id 30 is 10.0.120.0/22 and 2001:bf7:381:1e::/64, and
// the largest id is 16383 (10.255.252.0/22, 2001:bf7:381:3fff::/64).
// Slot 0 is kept back here too (10.0.0.0/22 holds the gateways' own
// addresses in such networks).
//
// In both, a node's own address (address4, address6) is the first address
// after the network address of range4 and range6, as both servers send it.
package ipam

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// Config is the pool layout. Changing a pool or a length later moves every
// node to other prefixes (slots stay, prefixes are derived from them).
type Config struct {
	// XLAT selects FFMUC's 464XLAT layout; false the per-node IPv4 layout.
	XLAT bool
	// Pool6 is the IPv6 pool every node's prefix is cut from.
	Pool6 netip.Prefix
	// Length6 is the length of a node's IPv6 prefix in XLAT mode: 63 when
	// zero, at most 63 (range6 and xlat_range6 are its first two /64s).
	// Per-node mode always uses /64.
	Length6 int
	// CLAT4 (XLAT mode) is the range4 all nodes share.
	CLAT4 netip.Prefix
	// Pool4 (per-node mode) is the IPv4 pool, Length4 a node's prefix
	// length (22 when zero, as FFBS).
	Pool4   netip.Prefix
	Length4 int
	// ReleaseAfter is how long a slot stays with a key that does not poll
	// (30 days when zero).
	ReleaseAfter time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// DefaultReleaseAfter is how long an unpolled lease is kept by default.
const DefaultReleaseAfter = 30 * 24 * time.Hour

// reservedSlots: slot 0 of every pool stays for infrastructure.
const reservedSlots = 1

// maxKeyLen bounds a store key; node keys are 44-byte WireGuard keys.
const maxKeyLen = 256

// Assignment is what a node is told about its own addresses.
type Assignment struct {
	// Index is the node's slot: FFBS's node id in per-node mode.
	Index uint64
	// Prefix6 is all of the node's IPv6 (the /63 in XLAT mode; range6 in
	// per-node mode): what a gateway routes to the node.
	Prefix6    netip.Prefix
	Range6     netip.Prefix
	Address6   netip.Addr
	XLATRange6 netip.Prefix // XLAT mode only; the zero Prefix otherwise
	Range4     netip.Prefix
	Address4   netip.Addr
	// Selected is what Remember stored for the node last time.
	Selected []string
	// New reports that the slot was leased by this call (or by another
	// broker for the same key within the same second).
	New bool
}

// Routes are the prefixes a gateway routes to the node (its WireGuard
// allowed IPs): the shared CLAT range is not among them.
func (a Assignment) Routes() []netip.Prefix {
	if a.XLATRange6.IsValid() {
		return []netip.Prefix{a.Prefix6}
	}
	return []netip.Prefix{a.Range4, a.Prefix6}
}

// Allocator leases slots from a Store and derives the prefixes.
type Allocator struct {
	cfg        Config
	store      Store
	slots      Slots
	touchEvery time.Duration
	// lastReclaim is when a full pool last swept idle leases (UnixNano).
	lastReclaim atomic.Int64
}

// New checks cfg and returns an Allocator over store.
func New(cfg Config, store Store) (*Allocator, error) {
	if store == nil {
		return nil, errors.New("ipam: no store")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReleaseAfter == 0 {
		cfg.ReleaseAfter = DefaultReleaseAfter
	}
	if cfg.ReleaseAfter < 0 {
		return nil, fmt.Errorf("ipam: release_after %v is negative", cfg.ReleaseAfter)
	}
	limit, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	// Polls only write when the last write is this old: a poll every two
	// minutes needs no write, and a lease is still far from ReleaseAfter.
	touchEvery := min(time.Hour, cfg.ReleaseAfter/24)
	return &Allocator{cfg: cfg, store: store, slots: Slots{First: reservedSlots, Limit: limit}, touchEvery: touchEvery}, nil
}

// validate fills defaults and returns the number of slots of the pool
// (including the reserved ones).
func (c *Config) validate() (uint64, error) {
	if !c.Pool6.IsValid() || !c.Pool6.Addr().Is6() || c.Pool6.Addr().Is4In6() {
		return 0, fmt.Errorf("ipam: IPv6 pool %v is not an IPv6 prefix", c.Pool6)
	}
	if c.Pool6 != c.Pool6.Masked() {
		return 0, fmt.Errorf("ipam: IPv6 pool %v has host bits set (%v)", c.Pool6, c.Pool6.Masked())
	}
	if c.XLAT {
		if c.Length6 == 0 {
			c.Length6 = 63
		}
		if c.Length6 > 63 {
			return 0, fmt.Errorf("ipam: IPv6 length /%d leaves no room for range6 and xlat_range6 (at most /63)", c.Length6)
		}
		if !c.CLAT4.IsValid() || !c.CLAT4.Addr().Is4() || c.CLAT4.Bits() > 30 || c.CLAT4 != c.CLAT4.Masked() {
			return 0, fmt.Errorf("ipam: CLAT range %v must be an IPv4 network of at most /30", c.CLAT4)
		}
	} else {
		if c.Length6 != 0 && c.Length6 != 64 {
			return 0, fmt.Errorf("ipam: per-node IPv4 mode gives every node a /64, not /%d", c.Length6)
		}
		c.Length6 = 64
		if c.Length4 == 0 {
			c.Length4 = 22
		}
		if !c.Pool4.IsValid() || !c.Pool4.Addr().Is4() || c.Pool4 != c.Pool4.Masked() {
			return 0, fmt.Errorf("ipam: IPv4 pool %v must be an IPv4 network", c.Pool4)
		}
		if c.Length4 <= c.Pool4.Bits() || c.Length4 > 30 {
			return 0, fmt.Errorf("ipam: IPv4 length /%d must be longer than the pool %v and at most /30", c.Length4, c.Pool4)
		}
	}
	if c.Length6 <= c.Pool6.Bits() {
		return 0, fmt.Errorf("ipam: IPv6 length /%d must be longer than the pool %v", c.Length6, c.Pool6)
	}
	slotBits := c.Length6 - c.Pool6.Bits() // log2 of the number of slots
	if !c.XLAT {
		slotBits = min(slotBits, c.Length4-c.Pool4.Bits())
	}
	// More than 2^40 nodes is no network of ours, and keeps the arithmetic
	// in range.
	slotBits = min(slotBits, 40)
	n := uint64(1) << slotBits
	if n <= reservedSlots {
		return 0, fmt.Errorf("ipam: the pools hold only %d prefix, and the first is reserved", n)
	}
	return n, nil
}

// Capacity is the number of nodes the pools hold.
func (a *Allocator) Capacity() uint64 { return a.slots.Limit - a.slots.First }

// Assign returns key's addresses, leasing a slot when key has none. A key
// that already holds one gets the same prefixes again. Errors:
// ErrPoolExhausted when no slot is free (after releasing idle leases),
// ErrUnavailable when the store cannot be reached.
func (a *Allocator) Assign(ctx context.Context, key string) (Assignment, error) {
	if key == "" || len(key) > maxKeyLen {
		return Assignment{}, fmt.Errorf("ipam: key of %d bytes (want 1..%d)", len(key), maxKeyLen)
	}
	now := a.cfg.Now()
	lease, err := a.store.Get(ctx, key)
	switch {
	case err == nil && (lease.Index < a.slots.First || lease.Index >= a.slots.Limit):
		// The pool has shrunk below this lease: give it up for a valid one.
		if _, err := a.store.Release(ctx, key, farFuture); err != nil {
			return Assignment{}, fmt.Errorf("ipam: release out-of-pool slot %d: %w", lease.Index, err)
		}
	case err == nil:
		if now.Sub(lease.LastSeen) < a.touchEvery {
			return a.assignment(lease, false), nil
		}
		err := a.store.Touch(ctx, key, lease.Index, now, nil)
		if err == nil {
			lease.LastSeen = now
			return a.assignment(lease, false), nil
		}
		if !errors.Is(err, ErrNotFound) {
			return Assignment{}, fmt.Errorf("ipam: touch: %w", err)
		}
		// Released just now as idle: lease a new slot.
	case !errors.Is(err, ErrNotFound):
		return Assignment{}, fmt.Errorf("ipam: get: %w", err)
	}

	lease, err = a.store.Allocate(ctx, key, a.slots, now)
	if errors.Is(err, ErrPoolExhausted) && a.mayReclaim(now) {
		// Reclaim what nobody polls before giving up.
		if n, rerr := a.ReleaseIdle(ctx); rerr != nil {
			return Assignment{}, fmt.Errorf("ipam: pool full, releasing idle leases: %w", rerr)
		} else if n > 0 {
			lease, err = a.store.Allocate(ctx, key, a.slots, now)
		}
	}
	if errors.Is(err, ErrPoolExhausted) {
		return Assignment{}, fmt.Errorf("ipam: %w: all %d prefixes are leased", err, a.Capacity())
	}
	if err != nil {
		return Assignment{}, fmt.Errorf("ipam: allocate: %w", err)
	}
	return a.assignment(lease, lease.Created.Unix() == now.Unix() && lease.LastSeen.Unix() == now.Unix()), nil
}

// reclaimEvery bounds the sweeps a full pool triggers: each one reads
// every lease, and new keys keep coming while the pool is full.
const reclaimEvery = time.Minute

// mayReclaim reports whether a full pool may sweep idle leases now, and
// takes the turn if so.
func (a *Allocator) mayReclaim(now time.Time) bool {
	last := a.lastReclaim.Load()
	if last != 0 && now.UnixNano()-last < int64(reclaimEvery) && now.UnixNano() >= last {
		return false
	}
	return a.lastReclaim.CompareAndSwap(last, now.UnixNano())
}

// farFuture releases any lease, however fresh.
var farFuture = time.Unix(1<<62, 0)

// Remember stores what the broker selected for key (gateway names), when
// it differs from what is stored. ErrNotFound when key holds no lease.
func (a *Allocator) Remember(ctx context.Context, key string, selected []string) error {
	lease, err := a.store.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("ipam: remember: %w", err)
	}
	if selected == nil {
		selected = []string{}
	}
	if slices.Equal(lease.Selected, selected) {
		return nil
	}
	if err := a.store.Touch(ctx, key, lease.Index, a.cfg.Now(), selected); err != nil {
		return fmt.Errorf("ipam: remember: %w", err)
	}
	return nil
}

// ReleaseIdle releases every lease not polled for ReleaseAfter and returns
// how many it released. A lease polled meanwhile stays.
func (a *Allocator) ReleaseIdle(ctx context.Context) (int, error) {
	cutoff := a.cfg.Now().Add(-a.cfg.ReleaseAfter)
	idle, err := a.store.Idle(ctx, cutoff)
	if err != nil {
		return 0, fmt.Errorf("ipam: list idle leases: %w", err)
	}
	released := 0
	for _, l := range idle {
		ok, err := a.store.Release(ctx, l.Key, cutoff)
		if err != nil {
			return released, fmt.Errorf("ipam: release %q: %w", l.Key, err)
		}
		if ok {
			released++
		}
	}
	return released, nil
}

// assignment derives the prefixes of a lease.
func (a *Allocator) assignment(l Lease, isNew bool) Assignment {
	as := a.cfg.derive(l.Index)
	as.Selected = l.Selected
	as.New = isNew
	return as
}

// derive is the pool arithmetic: slot i is the i-th prefix of each pool,
// i.e. the pool's base address plus i shifted to the prefix length (what
// FFBS writes as base | id<<10 for IPv4 and base | id for the fourth
// IPv6 group).
func (c *Config) derive(index uint64) Assignment {
	as := Assignment{Index: index}
	as.Prefix6 = netip.PrefixFrom(addOffset(c.Pool6.Addr(), index, 128-c.Length6), c.Length6)
	as.Range6 = netip.PrefixFrom(as.Prefix6.Addr(), 64)
	as.Address6 = as.Range6.Addr().Next()
	if c.XLAT {
		as.XLATRange6 = netip.PrefixFrom(addOffset(as.Prefix6.Addr(), 1, 64), 64)
		as.Range4 = c.CLAT4
	} else {
		as.Range4 = netip.PrefixFrom(addOffset(c.Pool4.Addr(), index, 32-c.Length4), c.Length4)
	}
	as.Address4 = as.Range4.Addr().Next()
	return as
}

// addOffset returns base + n<<shift. validate keeps it inside the pool.
func addOffset(base netip.Addr, n uint64, shift int) netip.Addr {
	b := base.AsSlice()
	// (hi, lo) = n << shift as a 128-bit number.
	var hi, lo uint64
	switch {
	case shift >= 128:
	case shift >= 64:
		hi = n << (shift - 64)
	case shift == 0:
		lo = n
	default:
		hi, lo = n>>(64-shift), n<<shift
	}
	if len(b) == 4 {
		var out [4]byte
		binary.BigEndian.PutUint32(out[:], binary.BigEndian.Uint32(b)+uint32(lo))
		return netip.AddrFrom4(out)
	}
	// The low and the high 64 bits, with the carry.
	sum, carry := bits.Add64(binary.BigEndian.Uint64(b[8:]), lo, 0)
	high, _ := bits.Add64(binary.BigEndian.Uint64(b[:8]), hi, carry)
	var out [16]byte
	binary.BigEndian.PutUint64(out[:8], high)
	binary.BigEndian.PutUint64(out[8:], sum)
	return netip.AddrFrom16(out)
}
