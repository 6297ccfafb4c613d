package dummyiface

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// fakeOS is the machine as a transcript: every change is recorded as a
// readable line (reads are not), and it keeps just enough state (links,
// WireGuard devices) to answer reads.
type fakeOS struct {
	mu         sync.Mutex
	calls      []string
	links      map[string]int
	nextIndex  int
	wg         map[string]wgtypes.Device // configured WireGuard devices
	userspace  map[string]*fakeDevice
	noKernelWG bool   // the kernel has no WireGuard: devices fall back to userspace
	failOn     string // the first change whose line starts with this fails
	keys       int    // private keys handed out
}

func newFakeOS() *fakeOS {
	return &fakeOS{links: map[string]int{"lo": 1}, nextIndex: 10, wg: map[string]wgtypes.Device{}, userspace: map[string]*fakeDevice{}}
}

func (f *fakeOS) system() system {
	return system{links: f, wg: f, newDevice: f.newDevice, newKey: f.newKey, serveLiveness: f.serveLiveness}
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
	if _, ok := f.links[v.Name]; !ok {
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
	d, ok := f.wg[name]
	if !ok {
		return nil, errors.New("no such WireGuard device")
	}
	return &d, nil
}

func (f *fakeOS) ConfigureDevice(name string, cfg wgtypes.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	line := "wg set " + name
	if cfg.PrivateKey != nil {
		line += " private-key " + keyName(*cfg.PrivateKey)
	}
	if cfg.ListenPort != nil {
		line += fmt.Sprintf(" listen-port %d", *cfg.ListenPort)
	}
	if err := f.change("%s", line); err != nil {
		return err
	}
	d := f.wg[name]
	if cfg.PrivateKey != nil {
		d.PrivateKey, d.PublicKey = *cfg.PrivateKey, cfg.PrivateKey.PublicKey()
	}
	if cfg.ListenPort != nil {
		d.ListenPort = *cfg.ListenPort
	}
	f.wg[name] = d
	return nil
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
	f.wg[name] = wgtypes.Device{Name: name}
	if !userspace {
		return nil, nil
	}
	d := &fakeDevice{f: f, name: name, done: make(chan struct{})}
	f.userspace[name] = d
	return d, nil
}

func (f *fakeOS) newKey() (wgtypes.Key, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys++
	return testKey(f.keys), nil
}

func (f *fakeOS) serveLiveness(addr netip.Addr, iface string, _ *slog.Logger) (func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	url := fmt.Sprintf("http://[%s%%%s]:80/", addr, iface)
	if err := f.change("liveness up %s", url); err != nil {
		return nil, err
	}
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.change("liveness down %s", url)
	}, nil
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
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	d.f.change("userspace %s closed", d.name)
	d.stop()
}

// removeFromOutside is ip link del by someone else.
func (d *fakeDevice) removeFromOutside() {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	d.f.change("(outside) link del %s", d.name)
	d.stop()
}

func (d *fakeDevice) stop() {
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

// keyName names test keys in transcripts: key3 is testKey(3).
func keyName(k wgtypes.Key) string {
	for i := 1; i < 20; i++ {
		if k == testKey(i) {
			return fmt.Sprintf("key%d", i)
		}
	}
	return "unknown-key"
}

func pub(i int) wgtypes.Key { return testKey(i).PublicKey() }

// ll is the link address of testKey(i)'s public key.
func ll(i int) string { return wgkex.LinkLocal(pub(i).String()).String() }

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

func diff(t *testing.T, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("transcript:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}
