package client

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/internal/fakekernel"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// fakeOS is everything outside the package as a transcript: the machine
// (fakekernel), and every push and health check recorded as a readable
// line. It answers pushes and health checks from scripts, and ticks when
// the test says so.
type fakeOS struct {
	*fakekernel.OS

	mu      sync.Mutex
	answers []pushAnswer // the broker's next answers
	pings   []bool       // the next health checks: true answers

	ticks chan time.Time // the test ticks
	idle  chan struct{}  // cap 1: the watch loop waits for a tick
}

type pushAnswer struct {
	ep  *wgkex.Endpoint
	err error
}

func newFakeOS() *fakeOS {
	return &fakeOS{OS: fakekernel.New(), ticks: make(chan time.Time), idle: make(chan struct{}, 1)}
}

func (f *fakeOS) system() system {
	return system{links: f, wg: f, newDevice: f.NewDevice, push: f.push, ping: f.ping, newTicker: f.newTicker}
}

func (f *fakeOS) push(_ context.Context, o PushOptions) (*Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	line := fmt.Sprintf("push %s %s %s (%s)", o.Broker, o.Domain, keyName(mustKey(o.PublicKey)), o.API)
	if len(f.answers) == 0 {
		f.Record("%s -> no answer scripted", line)
		return nil, errors.New("no answer scripted")
	}
	a := f.answers[0]
	f.answers = f.answers[1:]
	if a.err != nil {
		f.Record("%s -> FAIL", line)
		return nil, a.err
	}
	f.Record("%s", line)
	if a.ep == nil {
		return &Result{API: "v1", Message: "OK"}, nil
	}
	return &Result{API: "v2", Endpoint: a.ep}, nil
}

func (f *fakeOS) ping(_ context.Context, addr netip.Addr, iface string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ok := len(f.pings) > 0 && f.pings[0]
	if len(f.pings) > 0 {
		f.pings = f.pings[1:]
	}
	if !ok {
		f.Record("ping %s%%%s -> no answer", addr, iface)
		return errors.New("no answer")
	}
	f.Record("ping %s%%%s -> ok", addr, iface)
	return nil
}

func (f *fakeOS) newTicker(d time.Duration) ticker {
	f.Record("ticker every %s", d)
	return fakeTicker{f}
}

// fakeTicker ticks when the test sends on f.ticks. Each wait for a tick
// is an event on f.idle: the work of the tick before is done.
type fakeTicker struct{ f *fakeOS }

func (t fakeTicker) C() <-chan time.Time {
	select {
	case t.f.idle <- struct{}{}:
	default:
	}
	return t.f.ticks
}

func (t fakeTicker) Stop() { t.f.Record("ticker stopped") }

// awaitIdle waits until the watch loop waits for a tick.
func (f *fakeOS) awaitIdle(t *testing.T) {
	t.Helper()
	select {
	case <-f.idle:
	case <-time.After(10 * time.Second): // a guard against hanging, not a timing assertion
		t.Fatal("the watch loop does not wait for a tick")
	}
}

// tick ticks once and waits until the watch loop has done its work.
func (f *fakeOS) tick(t *testing.T) {
	t.Helper()
	f.ticks <- time.Time{}
	f.awaitIdle(t)
}

func testKey(i int) wgtypes.Key { return fakekernel.TestKey(i) }

func pub(i int) wgtypes.Key { return testKey(i).PublicKey() }

// ll is the link address of testKey(i)'s public key.
func ll(i int) string { return wgkex.LinkLocal(pub(i).String()).String() }

func keyName(k wgtypes.Key) string { return fakekernel.KeyName(k) }

func mustKey(s string) wgtypes.Key {
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		panic(err)
	}
	return k
}

// keyFile writes testKey(1) to a fresh private key file.
func keyFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "wg-mesh.key")
	if err := os.WriteFile(p, []byte(testKey(1).String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
