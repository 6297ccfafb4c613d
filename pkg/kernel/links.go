package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/jsimonetti/rtnetlink/v2/driver"
	"golang.org/x/sys/unix"
)

// VXLAN describes a VXLAN link to create.
type VXLAN struct {
	Name    string
	ID      uint32
	Local   netip.Addr // IPv6 source address
	Remote  netip.Addr // default remote; invalid for none (FDB entries only)
	Dev     int        // index of the underlying device (wg-X)
	DstPort uint16     // 0: the kernel default (8472 on Linux)
}

// CreateVXLAN creates the link (an existing link of that name is left as
// it is: callers delete first when they want a fresh one).
func (k *Conn) CreateVXLAN(v VXLAN) error {
	if _, err := net.InterfaceByName(v.Name); err == nil {
		return nil
	}
	id, dev, port := v.ID, uint32(v.Dev), v.DstPort
	learning := false
	data := &driver.Vxlan{ID: &id, Local6: net.IP(v.Local.AsSlice()), Link: &dev, Learning: &learning}
	if port != 0 {
		data.Port = &port
	}
	if v.Remote.IsValid() {
		data.Group6 = net.IP(v.Remote.AsSlice()) // IFLA_VXLAN_GROUP6 is the unicast remote, too
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	err := k.conn.Link.New(&rtnetlink.LinkMessage{
		Family: unix.AF_UNSPEC,
		Attributes: &rtnetlink.LinkAttributes{
			Name: v.Name,
			Info: &rtnetlink.LinkInfo{Kind: "vxlan", Data: data},
		},
	})
	if err != nil {
		return fmt.Errorf("create vxlan %s: %w", v.Name, err)
	}
	return nil
}

// SetUp brings the link up.
func (k *Conn) SetUp(index int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	err := k.conn.Link.Set(&rtnetlink.LinkMessage{
		Family: unix.AF_UNSPEC,
		Index:  uint32(index),
		Flags:  unix.IFF_UP,
		Change: unix.IFF_UP,
	})
	if err != nil {
		return fmt.Errorf("set link %d up: %w", index, err)
	}
	return nil
}

// DeleteLink removes the named link; an absent one is success.
func (k *Conn) DeleteLink(name string) error {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.conn.Link.Delete(uint32(ifi.Index)); err != nil && !isGone(err) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// AddAddr adds an address (without duplicate address detection: these are
// link-local addresses on point-to-point and overlay links) to the link;
// an existing one is success.
func (k *Conn) AddAddr(index int, p netip.Prefix) error {
	family, scope := unix.AF_INET6, unix.RT_SCOPE_UNIVERSE
	if p.Addr().Is4() {
		family = unix.AF_INET
	}
	if p.Addr().IsLinkLocalUnicast() {
		scope = unix.RT_SCOPE_LINK
	}
	ip := net.IP(p.Addr().AsSlice())
	k.mu.Lock()
	defer k.mu.Unlock()
	err := k.conn.Address.New(&rtnetlink.AddressMessage{
		Family:       uint8(family),
		PrefixLength: uint8(p.Bits()),
		Scope:        uint8(scope),
		Index:        uint32(index),
		Flags:        unix.IFA_F_NODAD,
		Attributes:   &rtnetlink.AddressAttributes{Address: ip, Local: ip, Flags: unix.IFA_F_NODAD | unix.IFA_F_PERMANENT},
	})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add address %s to link %d: %w", p, index, err)
	}
	return nil
}

// SetAddrGenModeNone stops the kernel from giving the link an IPv6
// link-local address of its own (ip link set dev X addrgenmode none), so
// that the address derived from the WireGuard key is the only one. Set it
// before the link goes up.
func SetAddrGenModeNone(name string) error {
	path := "/proc/sys/net/ipv6/conf/" + name + "/addr_gen_mode"
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("set addrgenmode none on %s: %w", name, err)
	}
	return nil
}

// NewLink creates a link from a raw message (for link kinds without a
// helper here, such as kernel WireGuard).
func (k *Conn) NewLink(m *rtnetlink.LinkMessage) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.conn.Link.New(m); err != nil {
		return fmt.Errorf("create link %s: %w", m.Attributes.Name, err)
	}
	return nil
}
