// Package wgkex holds the wire protocol shared by the broker, the worker and
// the client: key validation, link-local address derivation, interface names,
// MQTT topics and payloads. It does no I/O.
package wgkex

import (
	"crypto/md5"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"

	"github.com/freifunkMUC/wgkex/internal/text"
)

// keyLen is the length of a base64-encoded WireGuard public key.
const keyLen = 44

// keyPattern is the pattern of a valid public key, as the Python original and
// docs/protocol.md §2 define it. ValidKey implements it without a regexp.
const keyPattern = `^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw480]=$`

// ValidKey reports whether s is the base64 text of a 32-byte WireGuard key in
// the canonical form the original accepts (see keyPattern).
func ValidKey(s string) bool {
	if len(s) != keyLen || s[43] != '=' {
		return false
	}
	for i := 0; i < 42; i++ {
		if !isBase64Char(s[i]) {
			return false
		}
	}
	// The last character before '=' carries only 4 significant bits; the two
	// low bits must be zero for the encoding to be canonical.
	switch s[42] {
	case 'A', 'E', 'I', 'M', 'Q', 'U', 'Y', 'c', 'g', 'k', 'o', 's', 'w', '4', '8', '0':
		return true
	}
	return false
}

func isBase64Char(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/'
}

// parseKey validates s and returns the 32 key bytes.
func parseKey(s string) ([32]byte, error) {
	var k [32]byte
	if !ValidKey(s) {
		return k, fmt.Errorf("invalid public key %q: want 44 characters of base64 (32 bytes)", text.Truncate(s, 64))
	}
	if _, err := base64.StdEncoding.Decode(k[:], []byte(s)); err != nil {
		return k, fmt.Errorf("invalid public key %q: %w", s, err)
	}
	return k, nil
}

// LinkLocal derives the IPv6 link-local address a node with public key key
// uses on the mesh link (docs/protocol.md §5): the MD5 of the ASCII key followed by
// a newline gives the MAC 02:b1:b2:b3:b4:b5, whose EUI-64 interface ID (with
// the U/L bit set, not flipped) follows fe80::.
func LinkLocal(key string) netip.Addr {
	h := md5.New()
	h.Write([]byte(key))
	h.Write([]byte{'\n'})
	var sum [md5.Size]byte
	h.Sum(sum[:0])
	mac := [6]byte{0x02, sum[0], sum[1], sum[2], sum[3], sum[4]}
	return macLinkLocal(mac[:])
}

// macLinkLocal returns the fe80:: address with the EUI-64 interface ID of mac,
// with the U/L bit set (OR 0x02), as the original computes it.
func macLinkLocal(mac net.HardwareAddr) netip.Addr {
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	if len(mac) != 6 {
		return netip.Addr{}
	}
	a[8] = mac[0] | 0x02
	a[9], a[10] = mac[1], mac[2]
	a[11], a[12] = 0xff, 0xfe
	a[13], a[14], a[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(a)
}

// linkLocalPrefix is LinkLocal as a host prefix (/128), the form in which it
// becomes a WireGuard allowed IP and a route.
func linkLocalPrefix(key string) netip.Prefix {
	return netip.PrefixFrom(LinkLocal(key), 128)
}

// isIPv6Text reports whether s is an IPv6 address, optionally with a /prefix
// length (the Python worker publishes "fe80::1/64" style values on some
// versions; nodes only use the address).
func isIPv6Text(s string) bool {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Is6()
	}
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6()
}
