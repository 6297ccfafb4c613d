package wgkex

import (
	"fmt"
	"strings"
)

// maxIfNameLen is the longest interface name Linux accepts (IFNAMSIZ - 1).
const maxIfNameLen = 15

// Interface name prefixes of a domain's WireGuard and VXLAN links.
const (
	wireGuardPrefix = "wg-"
	vxlanPrefix     = "vx-"
)

// Interfaces are the kernel links that serve one domain.
type Interfaces struct {
	WireGuard string // e.g. wg-welt
	VXLAN     string // e.g. vx-welt
}

// stripPrefix returns domain without the first of prefixes it starts with,
// and whether one matched.
func stripPrefix(domain string, prefixes []string) (string, bool) {
	for _, p := range prefixes {
		if p != "" && strings.HasPrefix(domain, p) {
			return domain[len(p):], true
		}
	}
	return "", false
}

// InterfacesFor names the interfaces of domain: "wg-"/"vx-" plus the domain
// without its prefix (ffmuc_welt -> wg-welt, vx-welt).
func InterfacesFor(domain string, prefixes []string) (Interfaces, error) {
	short, ok := stripPrefix(domain, prefixes)
	if !ok {
		return Interfaces{}, fmt.Errorf("domain %q starts with none of the domain prefixes %q", domain, prefixes)
	}
	if short == "" {
		return Interfaces{}, fmt.Errorf("domain %q is only a prefix", domain)
	}
	ifs := Interfaces{WireGuard: wireGuardPrefix + short, VXLAN: vxlanPrefix + short}
	if len(ifs.WireGuard) > maxIfNameLen {
		return Interfaces{}, fmt.Errorf("domain %q gives interface name %q of %d bytes, Linux allows %d",
			domain, ifs.WireGuard, len(ifs.WireGuard), maxIfNameLen)
	}
	if !validIfName(short) {
		return Interfaces{}, fmt.Errorf("domain %q gives interface name %q with characters Linux refuses", domain, ifs.WireGuard)
	}
	return ifs, nil
}

func validIfName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c == '/' || c == ':' || c >= 0x7f {
			return false
		}
	}
	return true
}

// ValidName reports whether s can stand as one level of an MQTT topic: a
// domain or worker name. It must be non-empty, printable and free of the
// topic separator and wildcards.
func ValidName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c == 0x7f || c == '/' || c == '+' || c == '#' {
			return false
		}
	}
	return true
}
