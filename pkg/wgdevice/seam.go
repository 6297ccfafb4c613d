package wgdevice

import (
	"log/slog"
	"net/netip"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
)

// The interfaces below are the machine as the packages that build a mesh
// link (client, dummyiface) see it: *kernel.Conn, *wgctrl.Client and
// Create in production, one fake (internal/fakekernel) in their tests.

// Links is the part of rtnetlink (kernel.Conn) that building a mesh link
// uses.
type Links interface {
	LinkIndex(name string) (int, error)
	AddAddr(index int, p netip.Prefix) error
	SetUp(index int) error
	ReplaceRoute(dev int, dst netip.Prefix) error
	CreateVXLAN(v kernel.VXLAN) error
	DeleteLink(name string) error
}

// WireGuard is the part of wgctrl that building a mesh link uses.
type WireGuard interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
}

// Running is a userspace WireGuard device running in this process
// (*Device).
type Running interface {
	// Done is closed when the device stopped, also when its interface was
	// removed from outside.
	Done() <-chan struct{}
	Close()
}

// Maker makes the WireGuard interface name and returns the userspace
// device, or nil for kernel WireGuard.
type Maker func(name string, forceUserspace bool, log *slog.Logger) (Running, error)

// Creator is Create on k as a Maker.
func Creator(k *kernel.Conn) Maker {
	return func(name string, forceUserspace bool, log *slog.Logger) (Running, error) {
		d, err := Create(k, name, forceUserspace, log)
		if d == nil {
			return nil, err // no typed nil in the interface
		}
		return d, err
	}
}
