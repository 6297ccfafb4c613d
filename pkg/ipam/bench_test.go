package ipam

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// bigPool holds 2^31 /63s: benchmarks never run out.
var bigPool = Config{XLAT: true, Pool6: mustPrefix("2001:db8::/32"), CLAT4: mustPrefix("10.80.96.0/22")}

// benchStores gives each benchmark its allocators: one for bolt (one
// broker per file), two brokers on one etcd.
var benchStores = []struct {
	name string
	open func(b *testing.B) []*Allocator
}{
	{"bolt", func(b *testing.B) []*Allocator {
		s, err := OpenBolt(filepath.Join(b.TempDir(), "ipam.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		a, err := New(bigPool, s)
		if err != nil {
			b.Fatal(err)
		}
		return []*Allocator{a}
	}},
	{"etcd-2-brokers", func(b *testing.B) []*Allocator {
		srv := startEtcd(b)
		var as []*Allocator
		for range 2 {
			a, err := New(bigPool, srv.Open(b, "/bench/"))
			if err != nil {
				b.Fatal(err)
			}
			as = append(as, a)
		}
		return as
	}},
}

// BenchmarkAllocate: new keys, each Assign leases a slot; 8 goroutines per
// CPU share the allocators.
func BenchmarkAllocate(b *testing.B) {
	for _, kind := range benchStores {
		b.Run(kind.name, func(b *testing.B) {
			allocators := kind.open(b)
			var n, worker atomic.Uint64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				a := allocators[int(worker.Add(1))%len(allocators)]
				for pb.Next() {
					key := fmt.Sprintf("bench-%d", n.Add(1))
					if _, err := a.Assign(context.Background(), key); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
		})
	}
}

// BenchmarkPoll: known keys polling again (no write while fresh).
func BenchmarkPoll(b *testing.B) {
	for _, kind := range benchStores {
		b.Run(kind.name, func(b *testing.B) {
			allocators := kind.open(b)
			const known = 1000
			for i := range known {
				if _, err := allocators[0].Assign(context.Background(), fmt.Sprintf("known-%d", i)); err != nil {
					b.Fatal(err)
				}
			}
			var n, worker atomic.Uint64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				a := allocators[int(worker.Add(1))%len(allocators)]
				for pb.Next() {
					key := fmt.Sprintf("known-%d", n.Add(1)%known)
					if _, err := a.Assign(context.Background(), key); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "polls/s")
		})
	}
}
