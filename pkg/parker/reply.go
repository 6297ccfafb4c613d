package parker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/freifunkMUC/wgkex/internal/text"
)

// config is the reply's JSON. The field order is upstream wgkex's (its
// dataclass order); nodes parse JSON and do not care, but a fixed order
// keeps replies comparable across servers. The node's "id" is its slot
// number, as Braunschweig's server sends it; upstream sends the key string.
// Both are non-null, which is all a node checks.
type config struct {
	Nonce         string         `json:"nonce"`
	Time          int64          `json:"time"`
	ID            uint64         `json:"id"`
	MTU           int            `json:"mtu"`
	Concentrators []concentrator `json:"concentrators"`
	Range6        string         `json:"range6"`
	Address6      string         `json:"address6"`
	// XLATRange6 is present only in XLAT mode: FFMUC's node package
	// switches to IPv6-only tunnels when it sees it.
	XLATRange6  string `json:"xlat_range6,omitempty"`
	Range4      string `json:"range4"`
	Address4    string `json:"address4"`
	WGKeepalive int    `json:"wg_keepalive"`
	Retry       int    `json:"retry"`
}

type concentrator struct {
	Address4  string `json:"address4"`
	Address6  string `json:"address6"`
	Endpoint  string `json:"endpoint"`
	PublicKey string `json:"pubkey"`
	ID        uint32 `json:"id"`
}

// encodeConfig returns the JSON on one line followed by "\n": exactly the
// bytes the signature covers.
func encodeConfig(c config) ([]byte, error) {
	if c.Concentrators == nil {
		c.Concentrators = []concentrator{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(c); err != nil { // Encode adds the "\n"
		return nil, fmt.Errorf("encode config: %w", err)
	}
	return buf.Bytes(), nil
}

// concentratorJSON checks g and returns it as the node wants it, or why
// it cannot be listed.
func concentratorJSON(g Concentrator) (concentrator, error) {
	switch {
	case !g.Address4.Is4():
		// The node concatenates it into "ip -4 addr add ... peer <it>".
		return concentrator{}, fmt.Errorf("no IPv4 address4 configured for it")
	case !g.Address6.Is6():
		return concentrator{}, fmt.Errorf("no IPv6 link address")
	case g.Host == "" || g.Port <= 0 || g.Port > 65535:
		return concentrator{}, fmt.Errorf("no endpoint (host %q, port %d)", text.Truncate(g.Host, 64), g.Port)
	case g.PublicKey == "":
		return concentrator{}, fmt.Errorf("no public key")
	}
	host := g.Host
	// A worker may publish its external address as a v6 literal with a
	// zone or in brackets; JoinHostPort adds the brackets once.
	if a, err := netip.ParseAddr(trimBrackets(host)); err == nil {
		host = a.WithZone("").String()
	}
	return concentrator{
		Address4:  g.Address4.String(),
		Address6:  g.Address6.WithZone("").String(),
		Endpoint:  net.JoinHostPort(host, strconv.Itoa(g.Port)),
		PublicKey: g.PublicKey,
		ID:        g.ID,
	}, nil
}

func trimBrackets(s string) string {
	if len(s) > 1 && s[0] == '[' && s[len(s)-1] == ']' {
		return s[1 : len(s)-1]
	}
	return s
}
