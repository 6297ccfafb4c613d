package ratelimit

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// clientAddr is the address r comes from: the connection's peer, unless the
// peer is a trusted proxy; then the right-most X-Forwarded-For entry that is
// not itself a trusted proxy, else X-Real-IP, else the peer. The invalid
// Addr means the peer's address is unknown (not an IP connection).
//
// A trusted proxy must append to X-Forwarded-For (nginx:
// $proxy_add_x_forwarded_for) or overwrite X-Real-IP: anything a client put
// in front of that is never reached.
func (l *Limiter) clientAddr(r *http.Request) netip.Addr {
	peer := parseRemoteAddr(r.RemoteAddr)
	if !peer.IsValid() || !l.isTrusted(peer) {
		return peer
	}
	if a, ok := l.forwardedFor(r.Header.Values("X-Forwarded-For"), peer); ok {
		return a
	}
	if a := parseAddr(strings.TrimSpace(r.Header.Get("X-Real-IP"))); a.IsValid() {
		return a
	}
	return peer
}

// forwardedFor walks the X-Forwarded-For entries from the right (the one
// the peer appended) to the first that is not a trusted proxy. An entry that
// is not an address stops the walk at the proxy that wrote it: what lies
// beyond cannot be told apart from a client's invention. ok is false when
// the header holds no entries.
func (l *Limiter) forwardedFor(values []string, peer netip.Addr) (addr netip.Addr, ok bool) {
	reporter := peer // the trusted hop that appended the entry being read
	for i := len(values) - 1; i >= 0; i-- {
		list := values[i]
		for list != "" {
			item := list
			if c := strings.LastIndexByte(list, ','); c >= 0 {
				item, list = list[c+1:], list[:c]
			} else {
				list = ""
			}
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			ok = true
			a := parseAddr(item)
			if !a.IsValid() {
				return reporter, true
			}
			if !l.isTrusted(a) {
				return a, true
			}
			reporter = a
		}
	}
	// Empty, or every hop is a proxy of ours: the left-most is the origin.
	return reporter, ok
}

func (l *Limiter) isTrusted(a netip.Addr) bool {
	for _, p := range l.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseRemoteAddr reads http.Request.RemoteAddr, "ip:port" on TCP.
func parseRemoteAddr(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return normalize(ap.Addr())
	}
	return parseAddr(s)
}

// parseAddr reads an address as proxies write it: bare, in brackets, or
// with a port.
func parseAddr(s string) netip.Addr {
	if a, err := netip.ParseAddr(s); err == nil {
		return normalize(a)
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return normalize(ap.Addr())
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil {
			return normalize(a)
		}
	}
	return netip.Addr{}
}

// normalize makes one client one address: IPv4 on a dual-stack socket
// arrives as ::ffff:a.b.c.d, and a zone names our interface, not the client.
func normalize(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

func normalizePrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr()
	if a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return netip.PrefixFrom(a.WithZone(""), p.Bits()).Masked()
}

// keyOf is the bucket a client address belongs to: IPv4 per address, IPv6
// per /64, since a node (or a household) gets a whole /64. IPv6 link-local
// addresses are per address: every link shares fe80::/64.
func keyOf(a netip.Addr) clientKey {
	a = normalize(a)
	switch {
	case a.Is4(), a.IsLinkLocalUnicast():
		return a.As16()
	case a.Is6():
		k := a.As16()
		clear(k[8:])
		return k
	}
	return unknownKey
}

// ParseTrustedProxies reads a list of proxy addresses or CIDR prefixes
// ("192.0.2.10", "10.0.0.0/8", "2001:db8::/48") for Config.TrustedProxies.
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: not an address or CIDR prefix", s)
			}
			out = append(out, normalizePrefix(p))
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("trusted proxy %q: not an address or CIDR prefix", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}
