package client

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// ping sends ICMPv6 echo requests to addr (a link-local address on iface)
// until one is answered or ctx ends. It needs CAP_NET_RAW.
func ping(ctx context.Context, addr netip.Addr, iface string) error {
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return fmt.Errorf("open ICMPv6 socket: %w", err)
	}
	defer c.Close()
	dst := &net.IPAddr{IP: net.IP(addr.AsSlice()), Zone: iface}
	id := os.Getpid() & 0xffff
	buf := make([]byte, 1500)
	for seq := 1; ; seq++ {
		msg := icmp.Message{Type: ipv6.ICMPTypeEchoRequest, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("wgkex")}}
		wire, _ := msg.Marshal(nil)
		if _, err := c.WriteTo(wire, dst); err != nil {
			return fmt.Errorf("ping %s%%%s: %w", addr, iface, err)
		}
		deadline := time.Now().Add(time.Second)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		c.SetReadDeadline(deadline)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break // timeout: next request
			}
			m, err := icmp.ParseMessage(58, buf[:n])
			if err != nil || m.Type != ipv6.ICMPTypeEchoReply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id {
				if ip, ok := from.(*net.IPAddr); ok && ip.IP.Equal(dst.IP) {
					return nil
				}
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("ping %s%%%s: no answer", addr, iface)
		}
	}
}
