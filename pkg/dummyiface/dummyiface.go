// Package dummyiface builds a test gateway's interfaces for a domain
// (docs/protocol.md §6): wg-X with a fresh key and a listen port, the
// link-local address derived from its own public key, and vx-X (VXLAN over
// wg-X, id 99 or the site's) with fe80::1/64. Kernel WireGuard when the
// kernel has it, otherwise userspace WireGuard in this process. Optionally it
// answers Gluon's liveness check (HTTP on the gateway's link address), as a
// real gateway's web server does.
//
// Everything that reaches the operating system goes through a system value,
// so that tests can replace it with a fake; Create, Close and Run are the
// entry points with the real kernel handles.
package dummyiface

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgdevice"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// gatewayAddress is the address on vx-X that nodes ping.
var gatewayAddress = netip.MustParsePrefix("fe80::1/64")

// system is the machine as this package sees it.
type system struct {
	links     wgdevice.Links
	wg        wgdevice.WireGuard
	newDevice wgdevice.Maker
	newKey    func() (wgtypes.Key, error)
	// serveLiveness starts answering Gluon's liveness check on
	// [addr%iface]:80; stop stops it.
	serveLiveness func(addr netip.Addr, iface string, log *slog.Logger) (stop func(), err error)
}

// realSystem is the machine behind the kernel handles k and wg.
func realSystem(k *kernel.Conn, wg wgdevice.WireGuard) system {
	return system{
		links:     k,
		wg:        wg,
		newDevice: wgdevice.Creator(k),
		newKey:    wgtypes.GeneratePrivateKey,
		serveLiveness: func(addr netip.Addr, iface string, log *slog.Logger) (func(), error) {
			s, err := serveLiveness(addr, iface, log)
			if err != nil {
				return nil, err
			}
			return s.close, nil
		},
	}
}

// Options describe one domain's gateway interfaces.
type Options struct {
	Interfaces wgkex.Interfaces
	ListenPort int
	// VXLANID is the VNI of vx-X; 0 means wgkex.DefaultVXLANID.
	VXLANID uint32
	// LivenessHTTP serves HTTP 200 on port 80 of the link address of wg-X,
	// which Gluon nodes probe before they trust a gateway.
	LivenessHTTP bool
	// PrivateKey, when set, is used instead of a fresh key.
	PrivateKey *wgtypes.Key
	// Userspace skips kernel WireGuard even when it is there.
	Userspace bool
	Logger    *slog.Logger
}

// Gateway is what Create made.
type Gateway struct {
	PublicKey   wgtypes.Key
	LinkAddress netip.Addr

	interfaces wgkex.Interfaces
	listenPort int
	vxlanID    uint32
	// existed is true when wg-X was there already (nothing made).
	existed bool
	// device is the in-process WireGuard device, nil for kernel WireGuard.
	device wgdevice.Running
	// stopLiveness stops the server of Options.LivenessHTTP, nil without.
	stopLiveness func()
}

// Create makes the interfaces with the real kernel handles. When wg-X
// already exists it only reports it, so running twice is harmless.
func Create(k *kernel.Conn, wg *wgctrl.Client, o Options) (*Gateway, error) {
	return create(realSystem(k, wg), o)
}

func create(sys system, o Options) (*Gateway, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.VXLANID == 0 {
		o.VXLANID = wgkex.DefaultVXLANID
	}
	if o.VXLANID > wgkex.MaxVXLANID {
		return nil, fmt.Errorf("VXLAN id %d is over 24 bits", o.VXLANID)
	}
	ifs := o.Interfaces
	g := &Gateway{interfaces: ifs, vxlanID: o.VXLANID}
	if dev, err := sys.wg.Device(ifs.WireGuard); err == nil {
		g.existed, g.PublicKey, g.listenPort = true, dev.PublicKey, dev.ListenPort
		g.LinkAddress = wgkex.LinkLocal(dev.PublicKey.String())
		if o.LivenessHTTP {
			if g.stopLiveness, err = sys.serveLiveness(g.LinkAddress, ifs.WireGuard, o.Logger); err != nil {
				return nil, err
			}
		}
		return g, nil
	}
	if _, err := sys.links.LinkIndex(ifs.WireGuard); err == nil {
		return nil, fmt.Errorf("%s exists but is not a WireGuard device", ifs.WireGuard)
	}

	key := o.PrivateKey
	if key == nil {
		k, err := sys.newKey()
		if err != nil {
			return nil, fmt.Errorf("private key for %s: %w", ifs.WireGuard, err)
		}
		key = &k
	}
	dev, err := sys.newDevice(ifs.WireGuard, o.Userspace, o.Logger)
	if err != nil {
		return nil, err
	}
	g.device = dev
	fail := func(err error) (*Gateway, error) {
		if cerr := g.close(sys.links); cerr != nil {
			o.Logger.Warn("remove what was made", "err", cerr)
		}
		return nil, err
	}
	port := o.ListenPort
	if err := sys.wg.ConfigureDevice(ifs.WireGuard, wgtypes.Config{PrivateKey: key, ListenPort: &port}); err != nil {
		return fail(fmt.Errorf("configure %s: %w", ifs.WireGuard, err))
	}
	wdev, err := sys.wg.Device(ifs.WireGuard)
	if err != nil {
		return fail(fmt.Errorf("read %s: %w", ifs.WireGuard, err))
	}
	g.PublicKey, g.listenPort = wdev.PublicKey, wdev.ListenPort
	g.LinkAddress = wgkex.LinkLocal(wdev.PublicKey.String())

	k := sys.links
	wgIndex, err := k.LinkIndex(ifs.WireGuard)
	if err != nil {
		return fail(err)
	}
	if err := k.AddAddr(wgIndex, netip.PrefixFrom(g.LinkAddress, 128)); err != nil {
		return fail(err)
	}
	if err := k.SetUp(wgIndex); err != nil {
		return fail(err)
	}
	if err := k.CreateVXLAN(kernel.VXLAN{Name: ifs.VXLAN, ID: o.VXLANID, Local: g.LinkAddress, Dev: wgIndex}); err != nil {
		return fail(err)
	}
	vxIndex, err := k.LinkIndex(ifs.VXLAN)
	if err != nil {
		return fail(err)
	}
	if err := k.AddAddr(vxIndex, gatewayAddress); err != nil {
		return fail(err)
	}
	if err := k.SetUp(vxIndex); err != nil {
		return fail(err)
	}
	if o.LivenessHTTP {
		if g.stopLiveness, err = sys.serveLiveness(g.LinkAddress, ifs.WireGuard, o.Logger); err != nil {
			return fail(err)
		}
	}
	return g, nil
}

// running reports whether this process must stay up for the gateway to
// work: it runs userspace WireGuard or the liveness server.
func (g *Gateway) running() bool { return g.device != nil || g.stopLiveness != nil }

// mode says how wg-X came to be, for the line Run prints.
func (g *Gateway) mode() string {
	switch {
	case g.existed:
		return "already there, left as it is"
	case g.device != nil:
		return "userspace (this process)"
	}
	return "kernel"
}

// Close stops the liveness server and removes what Create made (nothing
// when the interfaces existed).
func (g *Gateway) Close(k *kernel.Conn) error { return g.close(k) }

func (g *Gateway) close(k wgdevice.Links) error {
	if g.stopLiveness != nil {
		g.stopLiveness()
		g.stopLiveness = nil
	}
	if g.existed {
		return nil
	}
	return deleteInterfaces(k, g.interfaces, g.device)
}

// deleteInterfaces removes a domain's interfaces: vx-X, then wg-X (and
// the userspace device behind it, when there is one).
func deleteInterfaces(k wgdevice.Links, ifs wgkex.Interfaces, userspace wgdevice.Running) error {
	err := k.DeleteLink(ifs.VXLAN)
	if userspace != nil {
		userspace.Close() // closing the TUN removes the link
	}
	return errors.Join(err, k.DeleteLink(ifs.WireGuard))
}
