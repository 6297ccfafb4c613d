package ipam

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdConfig says how to reach etcd and where the leases live.
type EtcdConfig struct {
	Endpoints          []string
	Username, Password string
	TLS                *tls.Config
	// Prefix of every key of ours (default "/wgkex/parker/ipam/"). Brokers
	// that share leases use the same prefix.
	Prefix string
	// OpTimeout bounds each call, so that an unreachable etcd is reported
	// instead of waited for (default 5s).
	OpTimeout time.Duration
}

// DefaultEtcdPrefix is where leases live unless configured otherwise.
const DefaultEtcdPrefix = "/wgkex/parker/ipam/"

// Etcd is the store shared by several brokers. Its keys, below Prefix:
//
//	lease/<key>   the lease record (JSON: index, created, last_seen, selected)
//	slot/<index>  the key holding slot <index> (20 decimal digits, so that
//	              key order is numeric order)
//	next          where the next search for a free slot starts (a hint)
//
// A lease and its slot are created and deleted together in one
// transaction that requires both to be absent (or unchanged), so two
// brokers never hand out one slot, nor two slots to one key.
type Etcd struct {
	client    *clientv3.Client
	prefix    string
	opTimeout time.Duration
}

var _ Store = (*Etcd)(nil)

// maxConflicts bounds the retries of one call that loses races against
// other brokers; each lost race means another allocation succeeded.
const maxConflicts = 1000

// OpenEtcd connects to etcd. It does not wait for etcd to be reachable:
// calls fail with ErrUnavailable until it is.
func OpenEtcd(cfg EtcdConfig) (*Etcd, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultEtcdPrefix
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 5 * time.Second
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints: cfg.Endpoints,
		Username:  cfg.Username,
		Password:  cfg.Password,
		TLS:       cfg.TLS,
		// Only used to fetch an auth token at start (with Username set).
		DialTimeout:          cfg.OpTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// The client logs its own retries at warning level; our errors say
		// what failed.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return &Etcd{client: client, prefix: cfg.Prefix, opTimeout: cfg.OpTimeout}, nil
}

// Close ends the connection.
func (e *Etcd) Close() error { return e.client.Close() }

func (e *Etcd) leaseKey(key string) string  { return e.prefix + "lease/" + key }
func (e *Etcd) slotKey(index uint64) string { return fmt.Sprintf("%sslot/%020d", e.prefix, index) }
func (e *Etcd) nextKey() string             { return e.prefix + "next" }

func (e *Etcd) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.opTimeout)
}

func (e *Etcd) Get(ctx context.Context, key string) (Lease, error) {
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	r, _, found, err := e.readRecord(ctx, key, "etcd get")
	if err == nil && !found {
		return Lease{}, ErrNotFound
	}
	return r.lease(key), err
}

// readRecord reads key's lease record and the revision it was last changed
// at; found is false when there is none. op names the caller in errors.
func (e *Etcd) readRecord(ctx context.Context, key, op string) (r record, rev int64, found bool, err error) {
	resp, err := e.client.Get(ctx, e.leaseKey(key))
	if err != nil {
		return r, 0, false, unavailable(op, err)
	}
	if len(resp.Kvs) == 0 {
		return r, 0, false, nil
	}
	kv := resp.Kvs[0]
	r, err = decodeRecord(key, kv.Value)
	return r, kv.ModRevision, true, err
}

func (e *Etcd) Allocate(ctx context.Context, key string, slots Slots, now time.Time) (Lease, error) {
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	leaseKey := e.leaseKey(key)
	// The lease, if any, and the hint, in one round trip.
	resp, err := e.client.Txn(ctx).Then(clientv3.OpGet(leaseKey), clientv3.OpGet(e.nextKey())).Commit()
	if err != nil {
		return Lease{}, unavailable("etcd allocate", err)
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		r, err := decodeRecord(key, kvs[0].Value)
		return r.lease(key), err
	}
	var hint uint64
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		hint, _ = strconv.ParseUint(string(kvs[0].Value), 10, 64)
	}
	for conflicts := range maxConflicts {
		index, found, err := e.findFree(ctx, hint, slots)
		if err != nil {
			return Lease{}, unavailable("etcd allocate", err)
		}
		if !found {
			return Lease{}, ErrPoolExhausted
		}
		r := newRecord(index, now)
		slot := e.slotKey(index)
		txn, err := e.client.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(leaseKey), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(slot), "=", 0)).
			Then(clientv3.OpPut(leaseKey, string(r.encode())),
				clientv3.OpPut(slot, key),
				clientv3.OpPut(e.nextKey(), strconv.FormatUint(index+1, 10))).
			Else(clientv3.OpGet(leaseKey)).
			Commit()
		if err != nil {
			return Lease{}, unavailable("etcd allocate", err)
		}
		if txn.Succeeded {
			return r.lease(key), nil
		}
		// Another broker was faster: either with this key (take its lease)
		// or with this slot (search again).
		if kvs := txn.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			r, err := decodeRecord(key, kvs[0].Value)
			return r.lease(key), err
		}
		// Brokers that all lost to the same winner would meet again on the
		// next free slot: spread them out, the more the more they collide.
		// Skipped slots are found when the search wraps round the pool.
		hint = index + 1 + rand.Uint64N(uint64(4)<<min(conflicts, 8))
	}
	return Lease{}, fmt.Errorf("%w: etcd allocate: lost %d races for a free slot", ErrUnavailable, maxConflicts)
}

// findFree searches the slot keys for the first free index, a page of keys
// at a time.
func (e *Etcd) findFree(ctx context.Context, hint uint64, slots Slots) (uint64, bool, error) {
	const page = 1000
	for _, span := range searchOrder(hint, slots) {
		from, end := e.slotKey(span[0]), e.slotKey(span[1])
		var buf []uint64
		more := true
		next := func() (uint64, bool, error) {
			if len(buf) == 0 && more {
				resp, err := e.client.Get(ctx, from, clientv3.WithRange(end), clientv3.WithKeysOnly(),
					clientv3.WithLimit(page), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
				if err != nil {
					return 0, false, err
				}
				for _, kv := range resp.Kvs {
					index, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), e.prefix+"slot/"), 10, 64)
					if err != nil {
						return 0, false, fmt.Errorf("%w: slot key %q", errCorrupt, kv.Key)
					}
					buf = append(buf, index)
				}
				more = resp.More
				if len(resp.Kvs) > 0 {
					from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
				}
			}
			if len(buf) == 0 {
				return 0, false, nil
			}
			used := buf[0]
			buf = buf[1:]
			return used, true, nil
		}
		index, found, err := firstGap(span[0], span[1], next)
		if err != nil || found {
			return index, found, err
		}
	}
	return 0, false, nil
}

func (e *Etcd) Touch(ctx context.Context, key string, index uint64, now time.Time, selected []string) error {
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	leaseKey := e.leaseKey(key)
	for range maxConflicts {
		r, rev, found, err := e.readRecord(ctx, key, "etcd touch")
		if err != nil {
			return err
		}
		if !found || r.Index != index {
			return ErrNotFound
		}
		txn, err := e.client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(leaseKey), "=", rev)).
			Then(clientv3.OpPut(leaseKey, string(r.touched(now, selected).encode()))).
			Commit()
		if err != nil {
			return unavailable("etcd touch", err)
		}
		if txn.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: etcd touch: lost %d races", ErrUnavailable, maxConflicts)
}

func (e *Etcd) Release(ctx context.Context, key string, idleBefore time.Time) (bool, error) {
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	leaseKey := e.leaseKey(key)
	for range maxConflicts {
		r, rev, found, err := e.readRecord(ctx, key, "etcd release")
		if err != nil || !found {
			return false, err
		}
		if !r.idle(idleBefore) {
			return false, nil
		}
		slot := e.slotKey(r.Index)
		txn, err := e.client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(leaseKey), "=", rev),
				clientv3.Compare(clientv3.Value(slot), "=", key)).
			Then(clientv3.OpDelete(leaseKey), clientv3.OpDelete(slot)).
			Commit()
		if err != nil {
			return false, unavailable("etcd release", err)
		}
		if txn.Succeeded {
			return true, nil
		}
		// Touched meanwhile (then the next round finds it busy), or the
		// slot does not name this key (edited by hand): drop the lease
		// alone, never another key's slot.
		check, err := e.client.Get(ctx, slot)
		if err != nil {
			return false, unavailable("etcd release", err)
		}
		if len(check.Kvs) == 0 || string(check.Kvs[0].Value) != key {
			txn, err := e.client.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(leaseKey), "=", rev)).
				Then(clientv3.OpDelete(leaseKey)).
				Commit()
			if err != nil {
				return false, unavailable("etcd release", err)
			}
			if txn.Succeeded {
				return true, nil
			}
		}
	}
	return false, fmt.Errorf("%w: etcd release: lost %d races", ErrUnavailable, maxConflicts)
}

func (e *Etcd) Idle(ctx context.Context, idleBefore time.Time) ([]Lease, error) {
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	const page = 1000
	prefix := e.leaseKey("")
	from, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	var idle []Lease
	for {
		resp, err := e.client.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(page),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return nil, unavailable("etcd list idle", err)
		}
		for _, kv := range resp.Kvs {
			key := strings.TrimPrefix(string(kv.Key), prefix)
			r, err := decodeRecord(key, kv.Value)
			if err != nil {
				return nil, err
			}
			if r.idle(idleBefore) {
				idle = append(idle, r.lease(key))
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return idle, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
