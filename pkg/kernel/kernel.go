// Package kernel talks rtnetlink to the Linux kernel: links, addresses,
// routes and VXLAN FDB entries. WireGuard devices are configured elsewhere,
// over wgctrl; this package only creates and removes links.
//
// Every change is idempotent: adding what exists and removing what is gone
// both succeed.
package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/jsimonetti/rtnetlink/v2"
	mdnetlink "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// routeProtocol marks the routes wgkex installs (rtm_protocol), so that
// repair and cleanup can tell them from the operator's; 129 is what other
// Freifunk tooling uses for this.
const routeProtocol = 129

// dumpRetries bounds the retries of a dump the kernel marked inconsistent
// (NLM_F_DUMP_INTR: the table changed while it was being read).
const dumpRetries = 5

// errDumpInterrupted is returned when every retry of a dump was interrupted.
var errDumpInterrupted = errors.New("netlink dump kept being interrupted by concurrent changes")

// Conn does routes, FDB entries and addresses through one rtnetlink
// socket. It is safe for concurrent use.
type Conn struct {
	mu   sync.Mutex
	conn *rtnetlink.Conn
}

// Dial opens the rtnetlink socket of the current network namespace.
func Dial() (*Conn, error) {
	c, err := rtnetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink: %w", err)
	}
	return &Conn{conn: c}, nil
}

// Close closes the socket.
func (k *Conn) Close() error { return k.conn.Close() }

// LinkIndex returns the index of the named interface.
func (k *Conn) LinkIndex(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return ifi.Index, nil
}

func (k *Conn) routeMessage(dev int, dst netip.Prefix) *rtnetlink.RouteMessage {
	return &rtnetlink.RouteMessage{
		Family:    unix.AF_INET6,
		DstLength: uint8(dst.Bits()),
		Table:     unix.RT_TABLE_MAIN,
		Protocol:  routeProtocol,
		Scope:     unix.RT_SCOPE_UNIVERSE,
		Type:      unix.RTN_UNICAST,
		Attributes: rtnetlink.RouteAttributes{
			Dst:      net.IP(dst.Addr().AsSlice()),
			OutIface: uint32(dev),
			Table:    unix.RT_TABLE_MAIN,
		},
	}
}

// ReplaceRoute installs dst via dev (ip route replace ... proto 129).
func (k *Conn) ReplaceRoute(dev int, dst netip.Prefix) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.conn.Route.Replace(k.routeMessage(dev, dst)); err != nil {
		return fmt.Errorf("replace route %s dev %d: %w", dst, dev, err)
	}
	return nil
}

// DeleteRoute removes our route to dst via dev; an absent one is success.
func (k *Conn) DeleteRoute(dev int, dst netip.Prefix) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	err := k.conn.Route.Delete(k.routeMessage(dev, dst))
	if err != nil && !isGone(err) {
		return fmt.Errorf("delete route %s dev %d: %w", dst, dev, err)
	}
	return nil
}

// Routes lists the IPv6 routes via dev that carry routeProtocol.
func (k *Conn) Routes(dev int) ([]netip.Prefix, error) {
	msgs, err := k.dump(&rtnetlink.RouteMessage{Family: unix.AF_INET6}, unix.RTM_GETROUTE, unix.AF_INET6)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []netip.Prefix
	for _, m := range msgs {
		r, ok := m.(*rtnetlink.RouteMessage)
		if !ok || r.Protocol != routeProtocol || int(r.Attributes.OutIface) != dev || r.Family != unix.AF_INET6 {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Attributes.Dst)
		if !ok {
			continue
		}
		out = append(out, netip.PrefixFrom(a, int(r.DstLength)))
	}
	return out, nil
}

var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

func fdbMessage(vx int, dst netip.Addr, via int) *rtnetlink.NeighMessage {
	return &rtnetlink.NeighMessage{
		Family: unix.AF_BRIDGE,
		Index:  uint32(vx),
		State:  unix.NUD_PERMANENT | unix.NUD_NOARP,
		Flags:  unix.NTF_SELF,
		Attributes: &rtnetlink.NeighAttributes{
			Address:   net.IP(dst.AsSlice()),
			LLAddress: zeroMAC,
			IfIndex:   uint32(via),
		},
	}
}

// AppendFDB adds the zero-MAC entry "dst <dst> via <via>" on the VXLAN
// device vx (bridge fdb append 00:00:00:00:00:00 dev vx dst dst via via).
// Several zero-MAC entries coexist, so this appends (rtnetlink's
// NeighService.New would ask for an exclusive create and fail with EEXIST
// on the second node).
func (k *Conn) AppendFDB(vx int, dst netip.Addr, via int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, err := k.conn.Execute(fdbMessage(vx, dst, via), unix.RTM_NEWNEIGH,
		mdnetlink.Request|mdnetlink.Acknowledge|mdnetlink.Create|mdnetlink.Append)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("append fdb entry dst %s on dev %d: %w", dst, vx, err)
	}
	return nil
}

// DeleteFDB removes the zero-MAC entry for dst on vx; an absent one is
// success.
func (k *Conn) DeleteFDB(vx int, dst netip.Addr, via int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, err := k.conn.Execute(fdbMessage(vx, dst, via), unix.RTM_DELNEIGH, mdnetlink.Request|mdnetlink.Acknowledge)
	if err != nil && !isGone(err) {
		return fmt.Errorf("delete fdb entry dst %s on dev %d: %w", dst, vx, err)
	}
	return nil
}

// FDBEntry is a zero-MAC VXLAN forwarding entry.
type FDBEntry struct {
	Dst netip.Addr
	Via int // the NDA_IFINDEX of the remote, 0 when unset
}

// FDB lists the zero-MAC entries on the VXLAN device vx.
func (k *Conn) FDB(vx int) ([]FDBEntry, error) {
	msgs, err := k.dump(&rtnetlink.NeighMessage{Family: unix.AF_BRIDGE, Index: uint32(vx)}, unix.RTM_GETNEIGH, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("list fdb of dev %d: %w", vx, err)
	}
	var out []FDBEntry
	for _, m := range msgs {
		n, ok := m.(*rtnetlink.NeighMessage)
		if !ok || int(n.Index) != vx || n.Attributes == nil || n.Attributes.LLAddress.String() != zeroMAC.String() {
			continue
		}
		a, ok := netip.AddrFromSlice(n.Attributes.Address)
		if !ok {
			continue
		}
		out = append(out, FDBEntry{Dst: a.Unmap(), Via: int(n.Attributes.IfIndex)})
	}
	return out, nil
}

// Addrs lists the IPv6 addresses on dev, in the kernel's order.
func (k *Conn) Addrs(dev int) ([]netip.Prefix, error) {
	msgs, err := k.dump(&rtnetlink.AddressMessage{Family: unix.AF_INET6}, unix.RTM_GETADDR, unix.AF_INET6)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []netip.Prefix
	for _, m := range msgs {
		a, ok := m.(*rtnetlink.AddressMessage)
		if !ok || int(a.Index) != dev || a.Family != unix.AF_INET6 || a.Attributes == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.Attributes.Address)
		if !ok {
			continue
		}
		out = append(out, netip.PrefixFrom(ip, int(a.PrefixLength)))
	}
	return out, nil
}

// dump reads a whole dump (every part of a multi-part answer) and retries
// it when the kernel flags it as interrupted.
func (k *Conn) dump(req rtnetlink.Message, typ uint16, family uint16) ([]rtnetlink.Message, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for attempt := 0; attempt < dumpRetries; attempt++ {
		if _, err := k.conn.Send(req, typ, mdnetlink.Request|mdnetlink.Dump); err != nil {
			return nil, err
		}
		msgs, raw, err := k.conn.Receive()
		if err != nil {
			return nil, err
		}
		interrupted := false
		for _, r := range raw {
			if r.Header.Flags&mdnetlink.DumpInterrupted != 0 {
				interrupted = true
			}
		}
		if !interrupted {
			return msgs, nil
		}
	}
	return nil, errDumpInterrupted
}

// isGone reports errors that mean "there was nothing to remove".
func isGone(err error) bool {
	return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}
