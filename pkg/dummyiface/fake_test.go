package dummyiface

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/internal/fakekernel"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// fakeOS is the machine as a transcript (fakekernel), with the key
// generator and the liveness server a gateway also needs.
type fakeOS struct {
	*fakekernel.OS
	mu   sync.Mutex
	keys int // private keys handed out
}

func newFakeOS() *fakeOS { return &fakeOS{OS: fakekernel.New()} }

func (f *fakeOS) system() system {
	return system{links: f, wg: f, newDevice: f.NewDevice, newKey: f.newKey, serveLiveness: f.serveLiveness}
}

func (f *fakeOS) newKey() (wgtypes.Key, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys++
	return testKey(f.keys), nil
}

func (f *fakeOS) serveLiveness(addr netip.Addr, iface string, _ *slog.Logger) (func(), error) {
	url := fmt.Sprintf("http://[%s%%%s]:80/", addr, iface)
	if err := f.Change("liveness up %s", url); err != nil {
		return nil, err
	}
	return func() { f.Change("liveness down %s", url) }, nil
}

func testKey(i int) wgtypes.Key { return fakekernel.TestKey(i) }

func pub(i int) wgtypes.Key { return testKey(i).PublicKey() }

// ll is the link address of testKey(i)'s public key.
func ll(i int) string { return wgkex.LinkLocal(pub(i).String()).String() }
