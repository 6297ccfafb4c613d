package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgdevice"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// KeepaliveInterval is the persistent keepalive Gluon nodes set on their
// gateway peer.
const KeepaliveInterval = 25 * time.Second

// ConnectOptions describe the node side of a mesh link.
type ConnectOptions struct {
	Push      PushOptions // Broker, Domain, API (v2), timeouts; PublicKey is filled in
	WireGuard string      // interface name, e.g. wg-mesh
	VXLAN     string      // e.g. vx-mesh
	// VXLANID is the mesh VNI: the one the site's nodes derive from its
	// domain seed (wgkex.VXLANIDFromSeed); 0 means wgkex.DefaultVXLANID.
	VXLANID   uint32
	KeyFile   string // private key; created (0600) when absent
	Userspace bool   // skip kernel WireGuard
	Logger    *slog.Logger
}

// Link is a node's mesh link to a gateway.
type Link struct {
	Endpoint    wgkex.Endpoint
	GatewayLL   netip.Addr
	OwnLL       netip.Addr
	PublicKey   wgtypes.Key
	GatewayKey  wgtypes.Key
	VXLANID     uint32
	Userspace   *wgdevice.Device // nil with kernel WireGuard
	ConnectedAt time.Time
}

// LoadOrCreateKey reads a base64 private key from path, or makes one and
// stores it there with mode 0600.
func LoadOrCreateKey(path string) (wgtypes.Key, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		k, err := wgtypes.ParseKey(strings.TrimSpace(string(data)))
		if err != nil {
			return wgtypes.Key{}, fmt.Errorf("private key file %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return wgtypes.Key{}, fmt.Errorf("private key file: %w", err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return wgtypes.Key{}, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("create private key file: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(k.String() + "\n"); err != nil {
		return wgtypes.Key{}, fmt.Errorf("write private key file: %w", err)
	}
	return k, nil
}

// Connect creates (or reuses) the WireGuard interface, registers its key,
// and points the interface and a VXLAN link at the gateway the broker
// chose, as a Gluon node does.
func Connect(ctx context.Context, k *kernel.Conn, wg *wgctrl.Client, o ConnectOptions) (*Link, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	priv, err := LoadOrCreateKey(o.KeyFile)
	if err != nil {
		return nil, err
	}
	l := &Link{PublicKey: priv.PublicKey()}
	l.OwnLL = wgkex.LinkLocal(l.PublicKey.String())

	if _, err := wg.Device(o.WireGuard); err != nil {
		if l.Userspace, err = wgdevice.Create(k, o.WireGuard, o.Userspace, o.Logger); err != nil {
			return nil, err
		}
	}
	fail := func(err error) (*Link, error) {
		if l.Userspace != nil {
			l.Userspace.Close()
		}
		return nil, err
	}
	if err := wg.ConfigureDevice(o.WireGuard, wgtypes.Config{PrivateKey: &priv}); err != nil {
		return fail(fmt.Errorf("configure %s: %w", o.WireGuard, err))
	}
	if err := l.register(ctx, k, wg, o); err != nil {
		return fail(err)
	}
	return l, nil
}

// register pushes the key and (re)points the peer and VXLAN link at the
// gateway in the answer.
func (l *Link) register(ctx context.Context, k *kernel.Conn, wg *wgctrl.Client, o ConnectOptions) error {
	po := o.Push
	po.PublicKey = l.PublicKey.String()
	po.API = "v2"
	res, err := Push(ctx, po)
	if err != nil {
		return err
	}
	if res.Endpoint == nil {
		return fmt.Errorf("broker %s gave a v1 answer (no gateway named): a node cannot connect without v2", po.Broker)
	}
	ep := *res.Endpoint
	gwLL, err := parseLinkAddress(ep.AllowedIPs[0])
	if err != nil {
		return fmt.Errorf("gateway AllowedIPs[0]: %w", err)
	}
	gwKey, err := wgtypes.ParseKey(ep.PublicKey)
	if err != nil {
		return fmt.Errorf("gateway PublicKey: %w", err)
	}
	udp, err := resolve(ctx, ep.Address, ep.Port)
	if err != nil {
		return err
	}
	keepalive := KeepaliveInterval
	if err := wg.ConfigureDevice(o.WireGuard, wgtypes.Config{ReplacePeers: true, Peers: []wgtypes.PeerConfig{{
		PublicKey: gwKey, Endpoint: udp, PersistentKeepaliveInterval: &keepalive, ReplaceAllowedIPs: true,
		AllowedIPs: []net.IPNet{{IP: net.IP(gwLL.AsSlice()), Mask: net.CIDRMask(128, 128)}},
	}}}); err != nil {
		return fmt.Errorf("set gateway peer on %s: %w", o.WireGuard, err)
	}
	wgIndex, err := k.LinkIndex(o.WireGuard)
	if err != nil {
		return err
	}
	if err := k.AddAddr(wgIndex, netip.PrefixFrom(l.OwnLL, 128)); err != nil {
		return err
	}
	if err := k.SetUp(wgIndex); err != nil {
		return err
	}
	if err := k.ReplaceRoute(wgIndex, netip.PrefixFrom(gwLL, 128)); err != nil {
		return err
	}
	if l.GatewayLL != gwLL {
		// A new gateway: the VXLAN's remote changes with it.
		if err := k.DeleteLink(o.VXLAN); err != nil {
			return err
		}
	}
	vni := o.VXLANID
	if vni == 0 {
		vni = wgkex.DefaultVXLANID
	}
	if err := k.CreateVXLAN(kernel.VXLAN{Name: o.VXLAN, ID: vni, Local: l.OwnLL, Remote: gwLL, Dev: wgIndex, DstPort: wgkex.VXLANPort}); err != nil {
		return err
	}
	vxIndex, err := k.LinkIndex(o.VXLAN)
	if err != nil {
		return err
	}
	if err := k.SetUp(vxIndex); err != nil {
		return err
	}
	l.Endpoint, l.GatewayLL, l.GatewayKey, l.VXLANID, l.ConnectedAt = ep, gwLL, gwKey, vni, time.Now()
	o.Logger.Info("connected", "gateway", ep.Address+":"+ep.Port, "gateway_key", ep.PublicKey,
		"gateway_ll", gwLL, "own_ll", l.OwnLL, "wireguard", o.WireGuard, "vxlan", o.VXLAN)
	return nil
}

// Healthy reports whether the gateway answers on the link: an ICMPv6 echo
// to its link address through the WireGuard interface, as the Gluon job
// checks it with an HTTP request to the same address.
func (l *Link) Healthy(ctx context.Context, iface string) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return Ping(ctx, l.GatewayLL, iface) == nil
}

// Watch checks the link every interval, as the Gluon job does every
// minute, and registers again after two failed checks in a row, until ctx
// ends.
func (l *Link) Watch(ctx context.Context, k *kernel.Conn, wg *wgctrl.Client, o ConnectOptions, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if l.Healthy(ctx, o.WireGuard) {
			failures = 0
			continue
		}
		if failures++; failures < 2 || ctx.Err() != nil {
			continue
		}
		o.Logger.Warn("mesh link down; registering again", "gateway", l.Endpoint.Address)
		if err := l.register(ctx, k, wg, o); err != nil {
			o.Logger.Error("register", "err", err)
			continue
		}
		failures = 0
	}
}

// Disconnect removes the VXLAN and WireGuard interfaces.
func Disconnect(k *kernel.Conn, wgIface, vxIface string) error {
	return errors.Join(k.DeleteLink(vxIface), k.DeleteLink(wgIface))
}

func parseLinkAddress(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

func resolve(ctx context.Context, host, port string) (*net.UDPAddr, error) {
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", strings.Trim(host, "[]"))
	if err != nil || len(addrs) == 0 {
		return nil, fmt.Errorf("resolve gateway %s: %w", host, err)
	}
	p, err := net.LookupPort("udp", port)
	if err != nil {
		return nil, fmt.Errorf("gateway port %q: %w", port, err)
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(addrs[0].Unmap(), uint16(p))), nil
}
