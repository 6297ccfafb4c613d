// Package dummyiface builds a test gateway's interfaces for a domain
// (docs/protocol.md §6): wg-X with a fresh key and a listen port, the
// link-local address derived from its own public key, and vx-X (VXLAN over
// wg-X, id 99 or the site's) with fe80::1/64. Kernel WireGuard when the
// kernel has it, otherwise userspace WireGuard in this process. Optionally it
// answers Gluon's liveness check (HTTP on the gateway's link address), as a
// real gateway's web server does.
package dummyiface

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgdevice"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// GatewayAddress is the address on vx-X that nodes ping.
var GatewayAddress = netip.MustParsePrefix("fe80::1/64")

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
	Interfaces  wgkex.Interfaces
	PublicKey   wgtypes.Key
	ListenPort  int
	VXLANID     uint32
	LinkAddress netip.Addr
	// Userspace is the in-process WireGuard device, nil for kernel
	// WireGuard. It lives as long as this process.
	Userspace *wgdevice.Device
	// Existed is true when the interfaces were there already (nothing made).
	Existed bool
	// liveness is the HTTP server of Options.LivenessHTTP, nil without it.
	liveness *livenessServer
}

// Create makes the interfaces. When wg-X already exists it only reports
// it, so running twice is harmless.
func Create(k *kernel.Conn, wg *wgctrl.Client, o Options) (*Gateway, error) {
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
	g := &Gateway{Interfaces: ifs, VXLANID: o.VXLANID}
	if dev, err := wg.Device(ifs.WireGuard); err == nil {
		g.Existed, g.PublicKey, g.ListenPort = true, dev.PublicKey, dev.ListenPort
		g.LinkAddress = wgkex.LinkLocal(dev.PublicKey.String())
		if o.LivenessHTTP {
			if g.liveness, err = serveLiveness(g.LinkAddress, ifs.WireGuard, o.Logger); err != nil {
				return nil, err
			}
		}
		return g, nil
	}
	if _, err := net.InterfaceByName(ifs.WireGuard); err == nil {
		return nil, fmt.Errorf("%s exists but is not a WireGuard device", ifs.WireGuard)
	}

	key := o.PrivateKey
	if key == nil {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return nil, err
		}
		key = &k
	}
	dev, err := wgdevice.Create(k, ifs.WireGuard, o.Userspace, o.Logger)
	if err != nil {
		return nil, err
	}
	g.Userspace = dev
	fail := func(err error) (*Gateway, error) {
		g.Close(k)
		return nil, err
	}
	port := o.ListenPort
	if err := wg.ConfigureDevice(ifs.WireGuard, wgtypes.Config{PrivateKey: key, ListenPort: &port}); err != nil {
		return fail(fmt.Errorf("configure %s: %w", ifs.WireGuard, err))
	}
	wdev, err := wg.Device(ifs.WireGuard)
	if err != nil {
		return fail(fmt.Errorf("read %s: %w", ifs.WireGuard, err))
	}
	g.PublicKey, g.ListenPort = wdev.PublicKey, wdev.ListenPort
	g.LinkAddress = wgkex.LinkLocal(wdev.PublicKey.String())

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
	if err := k.AddAddr(vxIndex, GatewayAddress); err != nil {
		return fail(err)
	}
	if err := k.SetUp(vxIndex); err != nil {
		return fail(err)
	}
	if o.LivenessHTTP {
		if g.liveness, err = serveLiveness(g.LinkAddress, ifs.WireGuard, o.Logger); err != nil {
			return fail(err)
		}
	}
	return g, nil
}

// Running reports whether this process must stay up for the gateway to
// work: it runs userspace WireGuard or the liveness server.
func (g *Gateway) Running() bool { return g.Userspace != nil || g.liveness != nil }

// Close stops the liveness server and removes what Create made (nothing
// when the interfaces existed).
func (g *Gateway) Close(k *kernel.Conn) error {
	if g.liveness != nil {
		g.liveness.close()
	}
	if g.Existed {
		return nil
	}
	return Delete(k, g.Interfaces, g.Userspace)
}

// Delete removes a domain's interfaces: vx-X, then wg-X.
func Delete(k *kernel.Conn, ifs wgkex.Interfaces, userspace *wgdevice.Device) error {
	err := k.DeleteLink(ifs.VXLAN)
	if userspace != nil {
		userspace.Close() // closing the TUN removes the link
	}
	return errors.Join(err, k.DeleteLink(ifs.WireGuard))
}
