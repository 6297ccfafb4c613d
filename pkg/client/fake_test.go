package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// fakeOS is everything outside the package as a transcript: every change,
// push and health check is recorded as a readable line (plain reads are
// not). It keeps just enough state to answer reads, answers pushes and
// health checks from scripts, and ticks when the test says so.
type fakeOS struct {
	mu         sync.Mutex
	calls      []string
	links      map[string]int
	nextIndex  int
	wg         map[string]bool // WireGuard devices
	userspace  map[string]*fakeDevice
	noKernelWG bool   // the kernel has no WireGuard: devices fall back to userspace
	failOn     string // the first change whose line starts with this fails

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
	return &fakeOS{links: map[string]int{"lo": 1}, nextIndex: 10, wg: map[string]bool{}, userspace: map[string]*fakeDevice{},
		ticks: make(chan time.Time), idle: make(chan struct{}, 1)}
}

func (f *fakeOS) system() system {
	return system{links: f, wg: f, newDevice: f.newDevice, push: f.push, ping: f.ping, newTicker: f.newTicker}
}

// change records line, or fails it when it matches failOn.
func (f *fakeOS) change(format string, args ...any) error {
	line := fmt.Sprintf(format, args...)
	if f.failOn != "" && strings.HasPrefix(line, f.failOn) {
		f.calls = append(f.calls, line+" -> FAIL")
		return errors.New("refused: " + line)
	}
	f.calls = append(f.calls, line)
	return nil
}

func (f *fakeOS) rec(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeOS) transcript() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeOS) name(index int) string {
	for n, i := range f.links {
		if i == index {
			return n
		}
	}
	return fmt.Sprintf("#%d", index)
}

func (f *fakeOS) addLink(name string) {
	f.links[name] = f.nextIndex
	f.nextIndex++
}

func (f *fakeOS) LinkIndex(name string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i, ok := f.links[name]; ok {
		return i, nil
	}
	return 0, fmt.Errorf("interface %s: no such network interface", name)
}

func (f *fakeOS) AddAddr(index int, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.change("addr add %s dev %s", p, f.name(index))
}

func (f *fakeOS) SetUp(index int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.change("link set %s up", f.name(index))
}

func (f *fakeOS) ReplaceRoute(dev int, dst netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.change("route replace %s dev %s", dst, f.name(dev))
}

func (f *fakeOS) CreateVXLAN(v kernel.VXLAN) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	line := fmt.Sprintf("link add %s type vxlan id %d local %s", v.Name, v.ID, v.Local)
	if v.Remote.IsValid() {
		line += " remote " + v.Remote.String()
	}
	line += " dev " + f.name(v.Dev)
	if v.DstPort != 0 {
		line += fmt.Sprintf(" dstport %d", v.DstPort)
	}
	if err := f.change("%s", line); err != nil {
		return err
	}
	if _, ok := f.links[v.Name]; !ok { // as the kernel package: an existing link is left
		f.addLink(v.Name)
	}
	return nil
}

func (f *fakeOS) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.change("link del %s", name); err != nil {
		return err
	}
	delete(f.links, name)
	delete(f.wg, name)
	return nil
}

func (f *fakeOS) Device(name string) (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.wg[name] {
		return nil, errors.New("no such WireGuard device")
	}
	return &wgtypes.Device{Name: name}, nil
}

func (f *fakeOS) ConfigureDevice(name string, cfg wgtypes.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	line := "wg set " + name
	if cfg.PrivateKey != nil {
		line += " private-key " + keyName(*cfg.PrivateKey)
	}
	if cfg.ReplacePeers {
		line += " replace-peers"
	}
	for _, p := range cfg.Peers {
		line += " peer " + keyName(p.PublicKey)
		if p.Endpoint != nil {
			line += " endpoint " + p.Endpoint.String()
		}
		if p.PersistentKeepaliveInterval != nil {
			line += fmt.Sprintf(" persistent-keepalive %d", int(p.PersistentKeepaliveInterval.Seconds()))
		}
		var ips []string
		for _, ip := range p.AllowedIPs {
			ips = append(ips, ip.String())
		}
		line += " allowed-ips " + strings.Join(ips, ",")
	}
	return f.change("%s", line)
}

func (f *fakeOS) newDevice(name string, forceUserspace bool, _ *slog.Logger) (device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	userspace := forceUserspace || f.noKernelWG
	mode := "kernel"
	if userspace {
		mode = "userspace"
	}
	if err := f.change("wireguard add %s (%s)", name, mode); err != nil {
		return nil, err
	}
	f.addLink(name)
	f.wg[name] = true
	if !userspace {
		return nil, nil
	}
	d := &fakeDevice{f: f, name: name, done: make(chan struct{})}
	f.userspace[name] = d
	return d, nil
}

func (f *fakeOS) push(_ context.Context, o PushOptions) (*Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	line := fmt.Sprintf("push %s %s %s (%s)", o.Broker, o.Domain, keyName(mustKey(o.PublicKey)), o.API)
	if len(f.answers) == 0 {
		f.calls = append(f.calls, line+" -> no answer scripted")
		return nil, errors.New("no answer scripted")
	}
	a := f.answers[0]
	f.answers = f.answers[1:]
	if a.err != nil {
		f.calls = append(f.calls, line+" -> FAIL")
		return nil, a.err
	}
	f.calls = append(f.calls, line)
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
		f.calls = append(f.calls, fmt.Sprintf("ping %s%%%s -> no answer", addr, iface))
		return errors.New("no answer")
	}
	f.calls = append(f.calls, fmt.Sprintf("ping %s%%%s -> ok", addr, iface))
	return nil
}

func (f *fakeOS) newTicker(d time.Duration) ticker {
	f.rec("ticker every %s", d)
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

func (t fakeTicker) Stop() { t.f.rec("ticker stopped") }

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

// fakeDevice is a userspace WireGuard device: closing it, or removing its
// link from outside, stops it.
type fakeDevice struct {
	f    *fakeOS
	name string
	done chan struct{}
	once sync.Once
}

func (d *fakeDevice) Done() <-chan struct{} { return d.done }

func (d *fakeDevice) Close() {
	d.f.rec("userspace %s closed", d.name)
	d.stop()
}

// removeFromOutside is ip link del (or wgkex client disconnect) by someone
// else.
func (d *fakeDevice) removeFromOutside() {
	d.f.rec("(outside) link del %s", d.name)
	d.stop()
}

func (d *fakeDevice) stop() {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	delete(d.f.links, d.name)
	delete(d.f.wg, d.name)
	d.once.Do(func() { close(d.done) })
}

// testKey returns the i-th test private key (distinct after clamping,
// which clears the low bits of the first byte).
func testKey(i int) wgtypes.Key {
	var b [32]byte
	b[0], b[1] = 0xA8, byte(i)
	return wgtypes.Key(b)
}

func pub(i int) wgtypes.Key { return testKey(i).PublicKey() }

// ll is the link address of testKey(i)'s public key.
func ll(i int) string { return wgkex.LinkLocal(pub(i).String()).String() }

// keyName names test keys in transcripts: key3 is testKey(3), pub3 its
// public key.
func keyName(k wgtypes.Key) string {
	for i := 1; i < 20; i++ {
		switch k {
		case testKey(i):
			return fmt.Sprintf("key%d", i)
		case pub(i):
			return fmt.Sprintf("pub%d", i)
		}
	}
	return "unknown-key"
}

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

// logEvents is a slog handler that hands every message to a channel, so
// that tests can wait for a log line as an event.
type logEvents chan string

func (c logEvents) Enabled(context.Context, slog.Level) bool { return true }
func (c logEvents) Handle(_ context.Context, r slog.Record) error {
	select {
	case c <- r.Message:
	default: // nobody waits for this one
	}
	return nil
}
func (c logEvents) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c logEvents) WithGroup(string) slog.Handler      { return c }

// await waits for a log message starting with prefix.
func (c logEvents) await(t *testing.T, prefix string) {
	t.Helper()
	timeout := time.After(10 * time.Second) // a guard against hanging, not a timing assertion
	for {
		select {
		case m := <-c:
			if strings.HasPrefix(m, prefix) {
				return
			}
		case <-timeout:
			t.Fatalf("no log message %q", prefix)
		}
	}
}

// returned waits for run to return.
func returned(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second): // a guard against hanging, not a timing assertion
		t.Fatal("run did not return")
		return nil
	}
}

func diff(t *testing.T, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("transcript:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}
