package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgdevice"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// keepaliveInterval is the persistent keepalive Gluon nodes set on their
// gateway peer.
const keepaliveInterval = 25 * time.Second

// ticker is a time.Ticker.
type ticker interface {
	C() <-chan time.Time
	Stop()
}

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

// system is everything outside this package a node touches, so that tests
// can replace it with fakes.
type system struct {
	links     wgdevice.Links
	wg        wgdevice.WireGuard
	newDevice wgdevice.Maker
	push      func(ctx context.Context, o PushOptions) (*Result, error)
	// ping checks that addr answers through iface, until ctx ends.
	ping      func(ctx context.Context, addr netip.Addr, iface string) error
	newTicker func(d time.Duration) ticker
}

// realSystem is the machine behind the kernel handles k and wg, the
// broker over HTTP and the wall clock.
func realSystem(k *kernel.Conn, wg wgdevice.WireGuard) system {
	return system{
		links:     k,
		wg:        wg,
		newDevice: wgdevice.Creator(k),
		push:      Push,
		ping:      ping,
		newTicker: func(d time.Duration) ticker { return realTicker{time.NewTicker(d)} },
	}
}

// ConnectOptions describe the node side of a mesh link.
type ConnectOptions struct {
	Push      PushOptions // Broker, Domain, timeouts; PublicKey and API are filled in
	WireGuard string      // interface name, e.g. wg-mesh
	VXLAN     string      // e.g. vx-mesh
	// VXLANID is the mesh VNI: the one the site's nodes derive from its
	// domain seed (wgkex.VXLANIDFromSeed); 0 means wgkex.DefaultVXLANID.
	VXLANID   uint32
	KeyFile   string // private key; created (0600) when absent
	Userspace bool   // skip kernel WireGuard
	// Watch checks the link every Interval (default 1 min) and registers
	// again when it is down.
	Watch    bool
	Interval time.Duration
	// Out receives the "connected: ..." line.
	Out    io.Writer
	Logger *slog.Logger
}

// Run joins the mesh as a Gluon node does and prints a "connected: ..."
// line. With Watch, or with userspace WireGuard, it then stays until ctx
// ends or the userspace interface is removed from outside; a userspace
// node's interfaces are removed on the way out (kernel ones stay up).
func Run(ctx context.Context, k *kernel.Conn, wg *wgctrl.Client, o ConnectOptions) error {
	return run(ctx, realSystem(k, wg), o)
}

func run(ctx context.Context, sys system, o ConnectOptions) error {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Interval <= 0 {
		o.Interval = time.Minute
	}
	log := o.Logger
	l, err := connect(ctx, sys, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "connected: %s -> %s:%s (gateway %s, link address %s); own link address %s; vxlan %s id %d remote %s\n",
		o.WireGuard, l.endpoint.Address, l.endpoint.Port, l.endpoint.PublicKey, l.gatewayLL, l.ownLL, o.VXLAN, l.vxlanID, l.gatewayLL)
	if !o.Watch && l.device == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	var watcher sync.WaitGroup
	if l.device != nil {
		// Our userspace device is gone (client disconnect, ip link del):
		// there is nothing left to keep up.
		watcher.Go(func() {
			select {
			case <-l.device.Done():
				log.Warn("WireGuard interface removed from outside; exiting", "interface", o.WireGuard)
				cancel()
			case <-ctx.Done():
			}
		})
	}
	if o.Watch {
		l.watch(ctx)
	} else {
		log.Info("userspace WireGuard running; Ctrl-C (SIGINT/SIGTERM) removes the interfaces")
		<-ctx.Done()
	}
	cancel()
	watcher.Wait()
	if l.device != nil {
		if err := disconnect(sys.links, o.WireGuard, o.VXLAN); err != nil {
			log.Warn("remove interfaces", "err", err)
		}
		l.device.Close()
	}
	return nil
}

// link is a node's mesh link to a gateway.
type link struct {
	sys       system
	o         ConnectOptions
	publicKey wgtypes.Key
	ownLL     netip.Addr
	device    wgdevice.Running // nil with kernel WireGuard

	// From the last registration:
	endpoint  wgkex.Endpoint
	gatewayLL netip.Addr
	vxlanID   uint32
}

// loadOrCreateKey reads a base64 private key from path, or makes one and
// stores it there with mode 0600.
func loadOrCreateKey(path string) (wgtypes.Key, error) {
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

// connect creates (or reuses) the WireGuard interface, registers its key,
// and points the interface and a VXLAN link at the gateway the broker
// chose, as a Gluon node does.
func connect(ctx context.Context, sys system, o ConnectOptions) (*link, error) {
	priv, err := loadOrCreateKey(o.KeyFile)
	if err != nil {
		return nil, err
	}
	l := &link{sys: sys, o: o, publicKey: priv.PublicKey()}
	l.ownLL = wgkex.LinkLocal(l.publicKey.String())

	if _, err := sys.wg.Device(o.WireGuard); err != nil {
		if l.device, err = sys.newDevice(o.WireGuard, o.Userspace, o.Logger); err != nil {
			return nil, err
		}
	}
	fail := func(err error) (*link, error) {
		if l.device != nil {
			l.device.Close()
		}
		return nil, err
	}
	if err := sys.wg.ConfigureDevice(o.WireGuard, wgtypes.Config{PrivateKey: &priv}); err != nil {
		return fail(fmt.Errorf("configure %s: %w", o.WireGuard, err))
	}
	if err := l.register(ctx); err != nil {
		return fail(err)
	}
	return l, nil
}

// register pushes the key and (re)points the peer and VXLAN link at the
// gateway in the answer.
func (l *link) register(ctx context.Context) error {
	o, k := l.o, l.sys.links
	po := o.Push
	po.PublicKey = l.publicKey.String()
	po.API = "v2"
	res, err := l.sys.push(ctx, po)
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
	keepalive := keepaliveInterval
	if err := l.sys.wg.ConfigureDevice(o.WireGuard, wgtypes.Config{ReplacePeers: true, Peers: []wgtypes.PeerConfig{{
		PublicKey: gwKey, Endpoint: udp, PersistentKeepaliveInterval: &keepalive, ReplaceAllowedIPs: true,
		AllowedIPs: []net.IPNet{{IP: net.IP(gwLL.AsSlice()), Mask: net.CIDRMask(128, 128)}},
	}}}); err != nil {
		return fmt.Errorf("set gateway peer on %s: %w", o.WireGuard, err)
	}
	wgIndex, err := k.LinkIndex(o.WireGuard)
	if err != nil {
		return err
	}
	if err := k.AddAddr(wgIndex, netip.PrefixFrom(l.ownLL, 128)); err != nil {
		return err
	}
	if err := k.SetUp(wgIndex); err != nil {
		return err
	}
	if err := k.ReplaceRoute(wgIndex, netip.PrefixFrom(gwLL, 128)); err != nil {
		return err
	}
	if l.gatewayLL != gwLL {
		// A new gateway: the VXLAN's remote changes with it.
		if err := k.DeleteLink(o.VXLAN); err != nil {
			return err
		}
	}
	vni := o.VXLANID
	if vni == 0 {
		vni = wgkex.DefaultVXLANID
	}
	if err := k.CreateVXLAN(kernel.VXLAN{Name: o.VXLAN, ID: vni, Local: l.ownLL, Remote: gwLL, Dev: wgIndex, DstPort: wgkex.VXLANPort}); err != nil {
		return err
	}
	vxIndex, err := k.LinkIndex(o.VXLAN)
	if err != nil {
		return err
	}
	if err := k.SetUp(vxIndex); err != nil {
		return err
	}
	l.endpoint, l.gatewayLL, l.vxlanID = ep, gwLL, vni
	o.Logger.Info("connected", "gateway", ep.Address+":"+ep.Port, "gateway_key", ep.PublicKey,
		"gateway_ll", gwLL, "own_ll", l.ownLL, "wireguard", o.WireGuard, "vxlan", o.VXLAN)
	return nil
}

// healthy reports whether the gateway answers on the link: an ICMPv6 echo
// to its link address through the WireGuard interface, as the Gluon job
// checks it with an HTTP request to the same address.
func (l *link) healthy(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return l.sys.ping(ctx, l.gatewayLL, l.o.WireGuard) == nil
}

// watch checks the link every Interval, as the Gluon job does every
// minute, and registers again after two failed checks in a row (and on
// every failed check after that until a registration succeeds), until ctx
// ends.
func (l *link) watch(ctx context.Context) {
	t := l.sys.newTicker(l.o.Interval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		if l.healthy(ctx) {
			failures = 0
			continue
		}
		if failures++; failures < 2 || ctx.Err() != nil {
			continue
		}
		l.o.Logger.Warn("mesh link down; registering again", "gateway", l.endpoint.Address)
		if err := l.register(ctx); err != nil {
			l.o.Logger.Error("register", "err", err)
			continue
		}
		failures = 0
	}
}

// Disconnect removes the VXLAN and WireGuard interfaces.
func Disconnect(k *kernel.Conn, wgIface, vxIface string) error {
	return disconnect(k, wgIface, vxIface)
}

func disconnect(k wgdevice.Links, wgIface, vxIface string) error {
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
	if err == nil && len(addrs) == 0 {
		err = errors.New("no address")
	}
	if err != nil {
		return nil, fmt.Errorf("resolve gateway %s: %w", host, err)
	}
	p, err := net.LookupPort("udp", port)
	if err != nil {
		return nil, fmt.Errorf("gateway port %q: %w", port, err)
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(addrs[0].Unmap(), uint16(p))), nil
}
