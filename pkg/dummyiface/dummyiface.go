// Package dummyiface builds a test gateway's interfaces for a domain (docs/protocol.md
// §6): wg-X with a fresh key and a listen port, the link-local
// address derived from its own public key, and vx-X (VXLAN id 99 over wg-X)
// with fe80::1/64. Kernel WireGuard when the kernel has it, otherwise
// userspace WireGuard in this process.
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

// VXLANID is the VNI of the mesh VXLAN; GatewayAddress is the gateway's
// address on it.
const VXLANID = 99

// GatewayAddress is the address on vx-X that nodes ping.
var GatewayAddress = netip.MustParsePrefix("fe80::1/64")

// Options describe one domain's gateway interfaces.
type Options struct {
	Interfaces wgkex.Interfaces
	ListenPort int
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
	LinkAddress netip.Addr
	// Userspace is the in-process WireGuard device, nil for kernel
	// WireGuard. It lives as long as this process.
	Userspace *wgdevice.Device
	// Existed is true when the interfaces were there already (nothing made).
	Existed bool
}

// Create makes the interfaces. When wg-X already exists it only reports
// it, so running twice is harmless.
func Create(k *kernel.Conn, wg *wgctrl.Client, o Options) (*Gateway, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ifs := o.Interfaces
	g := &Gateway{Interfaces: ifs}
	if dev, err := wg.Device(ifs.WireGuard); err == nil {
		g.Existed, g.PublicKey, g.ListenPort = true, dev.PublicKey, dev.ListenPort
		g.LinkAddress = wgkex.LinkLocal(dev.PublicKey.String())
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
	if err := k.CreateVXLAN(kernel.VXLAN{Name: ifs.VXLAN, ID: VXLANID, Local: g.LinkAddress, Dev: wgIndex}); err != nil {
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
	return g, nil
}

// Close removes what Create made (nothing when the interfaces existed).
func (g *Gateway) Close(k *kernel.Conn) error {
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
