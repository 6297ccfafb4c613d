package ipam

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	boltErrors "go.etcd.io/bbolt/errors"
)

var (
	boltLeases = []byte("leases") // key -> record (JSON)
	boltSlots  = []byte("slots")  // index (8 bytes big-endian) -> key
	boltMeta   = []byte("meta")   // "next" -> index to search from
	boltNext   = []byte("next")
)

// Bolt is the embedded store: one file, used by one broker at a time (the
// file is locked). Every change is one bbolt transaction, written to disk
// before the call returns.
type Bolt struct {
	db *bolt.DB
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens (or creates) the store file at path.
func OpenBolt(path string) (*Bolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if errors.Is(err, boltErrors.ErrTimeout) {
		return nil, fmt.Errorf("open address store %s: locked by another process", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open address store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{boltLeases, boltSlots, boltMeta} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open address store %s: %w", path, err)
	}
	return &Bolt{db: db}, nil
}

// Close closes the file.
func (b *Bolt) Close() error { return b.db.Close() }

func slotKey(index uint64) []byte { return binary.BigEndian.AppendUint64(nil, index) }

func (b *Bolt) Get(ctx context.Context, key string) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	var l Lease
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(boltLeases).Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		r, err := decodeRecord(key, v)
		l = r.lease(key)
		return err
	})
	return l, unavailable("get", err)
}

func (b *Bolt) Allocate(ctx context.Context, key string, slots Slots, now time.Time) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	var l Lease
	err := b.db.Update(func(tx *bolt.Tx) error {
		leases, slotB, meta := tx.Bucket(boltLeases), tx.Bucket(boltSlots), tx.Bucket(boltMeta)
		if v := leases.Get([]byte(key)); v != nil {
			r, err := decodeRecord(key, v)
			l = r.lease(key)
			return err
		}
		var hint uint64
		if v := meta.Get(boltNext); len(v) == 8 {
			hint = binary.BigEndian.Uint64(v)
		}
		index, found := uint64(0), false
		for _, span := range searchOrder(hint, slots) {
			c := slotB.Cursor()
			k, _ := c.Seek(slotKey(span[0]))
			next := func() (uint64, bool, error) {
				if k == nil {
					return 0, false, nil
				}
				used := binary.BigEndian.Uint64(k)
				k, _ = c.Next()
				return used, true, nil
			}
			var err error
			if index, found, err = firstGap(span[0], span[1], next); err != nil || found {
				break
			}
		}
		if !found {
			return ErrPoolExhausted
		}
		r := newRecord(index, now)
		if err := leases.Put([]byte(key), r.encode()); err != nil {
			return err
		}
		if err := slotB.Put(slotKey(index), []byte(key)); err != nil {
			return err
		}
		if err := meta.Put(boltNext, slotKey(index+1)); err != nil {
			return err
		}
		l = r.lease(key)
		return nil
	})
	return l, unavailable("allocate", err)
}

func (b *Bolt) Touch(ctx context.Context, key string, index uint64, now time.Time, selected []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := b.db.Update(func(tx *bolt.Tx) error {
		leases := tx.Bucket(boltLeases)
		v := leases.Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		r, err := decodeRecord(key, v)
		if err != nil {
			return err
		}
		if r.Index != index {
			return ErrNotFound
		}
		return leases.Put([]byte(key), r.touched(now, selected).encode())
	})
	return unavailable("touch", err)
}

func (b *Bolt) Release(ctx context.Context, key string, idleBefore time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	released := false
	err := b.db.Update(func(tx *bolt.Tx) error {
		leases, slotB := tx.Bucket(boltLeases), tx.Bucket(boltSlots)
		v := leases.Get([]byte(key))
		if v == nil {
			return nil
		}
		r, err := decodeRecord(key, v)
		if err != nil {
			return err
		}
		if !r.idle(idleBefore) {
			return nil
		}
		if err := leases.Delete([]byte(key)); err != nil {
			return err
		}
		// The slot is ours unless the store was edited by hand; never free
		// another key's slot.
		if string(slotB.Get(slotKey(r.Index))) == key {
			if err := slotB.Delete(slotKey(r.Index)); err != nil {
				return err
			}
		}
		released = true
		return nil
	})
	return released, unavailable("release", err)
}

func (b *Bolt) Idle(ctx context.Context, idleBefore time.Time) ([]Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var idle []Lease
	err := b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(boltLeases).ForEach(func(k, v []byte) error {
			r, err := decodeRecord(string(k), v)
			if err != nil {
				return err
			}
			if r.idle(idleBefore) {
				idle = append(idle, r.lease(string(k)))
			}
			return nil
		})
	})
	return idle, unavailable("list idle", err)
}
