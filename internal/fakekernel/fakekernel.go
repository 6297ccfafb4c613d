// Package fakekernel is the machine as a transcript, for the unit tests of
// the packages that build mesh links: every change to links, addresses,
// routes and WireGuard devices is recorded as a readable line (reads are
// not), and it keeps just enough state to answer reads. It implements
// wgdevice.Links, wgdevice.WireGuard and (NewDevice) wgdevice.Maker.
package fakekernel

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgdevice"
	"testing"
)

// OS is the fake machine. Set NoKernelWG and FailOn before handing it out.
type OS struct {
	// NoKernelWG says the kernel has no WireGuard: devices fall back to
	// userspace.
	NoKernelWG bool
	// FailOn makes the first change whose line starts with it fail.
	FailOn string

	mu        sync.Mutex
	calls     []string
	links     map[string]int
	nextIndex int
	wg        map[string]wgtypes.Device // configured WireGuard devices
	userspace map[string]*Device
}

// New returns a machine with only lo.
func New() *OS {
	return &OS{links: map[string]int{"lo": 1}, nextIndex: 10, wg: map[string]wgtypes.Device{}, userspace: map[string]*Device{}}
}

// Change records a change line, or fails it when it matches FailOn.
func (f *OS) Change(format string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.change(format, args...)
}

func (f *OS) change(format string, args ...any) error {
	line := fmt.Sprintf(format, args...)
	if f.FailOn != "" && strings.HasPrefix(line, f.FailOn) {
		f.calls = append(f.calls, line+" -> FAIL")
		return errors.New("refused: " + line)
	}
	f.calls = append(f.calls, line)
	return nil
}

// Record records a line that cannot fail.
func (f *OS) Record(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

// Transcript returns the lines recorded so far.
func (f *OS) Transcript() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// Forget clears the transcript.
func (f *OS) Forget() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// AddLink makes a link exist, as if someone else had created it.
func (f *OS) AddLink(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addLink(name)
}

// AddWireGuard makes a WireGuard device exist (its link too).
func (f *OS) AddWireGuard(d wgtypes.Device) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addLink(d.Name)
	f.wg[d.Name] = d
}

// Userspace returns the userspace device name, nil if there is none.
func (f *OS) Userspace(name string) *Device {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.userspace[name]
}

func (f *OS) name(index int) string {
	for n, i := range f.links {
		if i == index {
			return n
		}
	}
	return fmt.Sprintf("#%d", index)
}

func (f *OS) addLink(name string) {
	f.links[name] = f.nextIndex
	f.nextIndex++
}

func (f *OS) LinkIndex(name string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i, ok := f.links[name]; ok {
		return i, nil
	}
	return 0, fmt.Errorf("interface %s: no such network interface", name)
}

func (f *OS) AddAddr(index int, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.change("addr add %s dev %s", p, f.name(index))
}

func (f *OS) SetUp(index int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.change("link set %s up", f.name(index))
}

func (f *OS) ReplaceRoute(dev int, dst netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.change("route replace %s dev %s", dst, f.name(dev))
}

func (f *OS) CreateVXLAN(v kernel.VXLAN) error {
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

func (f *OS) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.change("link del %s", name); err != nil {
		return err
	}
	delete(f.links, name)
	delete(f.wg, name)
	return nil
}

func (f *OS) Device(name string) (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.wg[name]
	if !ok {
		return nil, errors.New("no such WireGuard device")
	}
	return &d, nil
}

func (f *OS) ConfigureDevice(name string, cfg wgtypes.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	line := "wg set " + name
	if cfg.PrivateKey != nil {
		line += " private-key " + KeyName(*cfg.PrivateKey)
	}
	if cfg.ListenPort != nil {
		line += fmt.Sprintf(" listen-port %d", *cfg.ListenPort)
	}
	if cfg.ReplacePeers {
		line += " replace-peers"
	}
	for _, p := range cfg.Peers {
		line += " peer " + KeyName(p.PublicKey)
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

// NewDevice is wgdevice.Create: a kernel device unless forceUserspace or
// NoKernelWG.
func (f *OS) NewDevice(name string, forceUserspace bool, _ *slog.Logger) (wgdevice.Running, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	userspace := forceUserspace || f.NoKernelWG
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
	d := &Device{f: f, name: name, done: make(chan struct{})}
	f.userspace[name] = d
	return d, nil
}

// Device is a userspace WireGuard device: closing it, or removing its link
// from outside, stops it.
type Device struct {
	f    *OS
	name string
	done chan struct{}
	once sync.Once
}

func (d *Device) Done() <-chan struct{} { return d.done }

func (d *Device) Close() {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	d.f.calls = append(d.f.calls, "userspace "+d.name+" closed")
	d.stop()
}

// RemoveFromOutside is ip link del (or wgkex client disconnect) by someone
// else.
func (d *Device) RemoveFromOutside() {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	d.f.calls = append(d.f.calls, "(outside) link del "+d.name)
	d.stop()
}

func (d *Device) stop() {
	delete(d.f.links, d.name)
	delete(d.f.wg, d.name)
	d.once.Do(func() { close(d.done) })
}

// TestKey returns the i-th test private key (distinct after clamping,
// which clears the low bits of the first byte).
func TestKey(i int) wgtypes.Key {
	var b [32]byte
	b[0], b[1] = 0xA8, byte(i)
	return wgtypes.Key(b)
}

// KeyName names test keys in transcripts: key3 is TestKey(3), pub3 its
// public key.
func KeyName(k wgtypes.Key) string {
	for i := 1; i < 20; i++ {
		switch k {
		case TestKey(i):
			return fmt.Sprintf("key%d", i)
		case TestKey(i).PublicKey():
			return fmt.Sprintf("pub%d", i)
		}
	}
	return "unknown-key"
}

// Diff fails t when a transcript is not the one wanted, showing both.
func Diff(t testing.TB, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("transcript:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}
