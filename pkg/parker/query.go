package parker

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/freifunkMUC/wgkex/internal/text"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// Bounds of the query parameters.
const (
	// DefaultV6MTU is assumed when a node sends no v6mtu (as upstream).
	DefaultV6MTU = 1280
	// minV6MTU is IPv6's minimum link MTU: the kernel turns IPv6 off on a
	// link below it, so a node cannot report less.
	minV6MTU = 1280
	maxV6MTU = 65535
	// maxNonceLen bounds the nonce: nodes send 32 hex digits.
	maxNonceLen = 64
)

// request is a node's validated GET /config query.
type request struct {
	key   string
	nonce string
	v6mtu int
	// ignored are the other parameters (version, tc_ingress, ...), kept
	// for the debug log.
	ignored []string
}

// parseQuery reads the query of GET /config. It works on the raw query
// rather than url.ParseQuery, which decodes a literal "+" as a space: nodes
// encode only "+" (as %2B) and leave "/" and "=" raw, but a client that
// sends "+" unencoded must still be understood, and base64 has no spaces.
func parseQuery(raw string) (request, error) {
	var req request
	seen := map[string]bool{}
	v6mtu := ""
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		rawName, rawValue, _ := strings.Cut(part, "=")
		name, err := url.PathUnescape(rawName)
		if err != nil {
			return req, fmt.Errorf("query: bad escape in parameter name %q", text.Truncate(rawName, 64))
		}
		value, err := url.PathUnescape(rawValue)
		if err != nil {
			return req, fmt.Errorf("%s: bad escape in %q", text.Truncate(name, 64), text.Truncate(rawValue, 64))
		}
		switch name {
		case "pubkey", "nonce", "v6mtu":
			if seen[name] {
				return req, fmt.Errorf("%s: given more than once", name)
			}
			seen[name] = true
		default:
			req.ignored = append(req.ignored, text.Truncate(name, 64)+"="+text.Truncate(value, 64))
			continue
		}
		switch name {
		case "pubkey":
			req.key = value
		case "nonce":
			req.nonce = value
		case "v6mtu":
			v6mtu = value
		}
	}

	if !seen["pubkey"] || req.key == "" {
		return req, fmt.Errorf("pubkey: missing (want the node's WireGuard public key, base64 with %%2B for +)")
	}
	if !wgkex.ValidKey(req.key) {
		return req, fmt.Errorf("pubkey: invalid public key %q: want 44 characters of base64 (a WireGuard public key)", text.Truncate(req.key, 64))
	}
	if !seen["nonce"] || req.nonce == "" {
		return req, fmt.Errorf("nonce: missing")
	}
	if !validNonce(req.nonce) {
		return req, fmt.Errorf("nonce: invalid %q: want 1 to %d characters of A-Z a-z 0-9 - . _ ~", text.Truncate(req.nonce, 64), maxNonceLen)
	}
	req.v6mtu = DefaultV6MTU
	// An empty value counts as absent: a node without IPv6 on its WAN
	// bridge has no /proc/sys/net/ipv6/conf/br-wan/mtu to read.
	if v6mtu != "" {
		n, err := strconv.Atoi(v6mtu)
		if err != nil || n < minV6MTU || n > maxV6MTU {
			return req, fmt.Errorf("v6mtu: invalid %q: want an integer from %d to %d", text.Truncate(v6mtu, 64), minV6MTU, maxV6MTU)
		}
		req.v6mtu = n
	}
	return req, nil
}

// validNonce accepts what a node may send and the reply can echo byte for
// byte: nodes send 32 lower-case hex digits; any RFC 3986 unreserved
// characters up to maxNonceLen are taken, so other clients have room, and
// nothing that JSON would escape (or the node's shell would mangle) gets in.
func validNonce(s string) bool {
	if len(s) == 0 || len(s) > maxNonceLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}
