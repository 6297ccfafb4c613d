package keylist

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// benchWatcher watches a list of n keys, half of them with a reason, and
// an allow list of n keys for one domain.
func benchWatcher(b *testing.B, n int, perDomain bool) *Watcher {
	b.Helper()
	var src strings.Builder
	if perDomain {
		src.WriteString("domains:\n  ffmuc_welt:\n")
	} else {
		src.WriteString("keys:\n")
	}
	for i := 0; i < n; i++ {
		fmt.Fprintf(&src, "    - key: %q\n", key(i))
		if i%2 == 0 {
			fmt.Fprintf(&src, "      reason: \"ticket %d\"\n", i)
		}
	}
	f := filepath.Join(b.TempDir(), "list.yaml")
	if err := os.WriteFile(f, []byte(src.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	w, err := Start(context.Background(), Options{Name: "bench", File: f, PerDomain: perDomain, CheckInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Close)
	if w.List().Len() != n {
		b.Fatalf("loaded %d keys, want %d", w.List().Len(), n)
	}
	return w
}

// BenchmarkContains is the broker's per-request block list check.
func BenchmarkContains(b *testing.B) {
	w := benchWatcher(b, 10000, false)
	hit, miss := key(1234), key(60000)
	b.Run("hit", func(b *testing.B) {
		for b.Loop() {
			if !w.Contains(hit) {
				b.Fatal("miss")
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		for b.Loop() {
			if w.Contains(miss) {
				b.Fatal("hit")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				w.Contains(miss)
			}
		})
	})
}

// BenchmarkAllowed is the broker's per-request allow list check.
func BenchmarkAllowed(b *testing.B) {
	w := benchWatcher(b, 10000, true)
	k := key(4321)
	for b.Loop() {
		if !w.Allowed("ffmuc_welt", k) {
			b.Fatal("refused")
		}
	}
}

// BenchmarkLoad is a reload of a 10 000-key list.
func BenchmarkLoad(b *testing.B) {
	w := benchWatcher(b, 10000, false)
	for b.Loop() {
		if err := w.Reload(); err != nil {
			b.Fatal(err)
		}
	}
}
