package wgkex

import (
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/freifunkMUC/wgkex/internal/text"
)

// Mesh link parameters of Gluon's wireguard-vxlan mesh VPN
// (docs/protocol.md §2, §6).
const (
	// DefaultVXLANID is the VNI our test tooling uses when no site's domain
	// seed is given. Real sites derive theirs with VXLANIDFromSeed.
	DefaultVXLANID = 99
	// VXLANPort is the UDP port of the mesh VXLAN on a node.
	VXLANPort = 8472
	// MaxVXLANID is the largest VNI (24 bits).
	MaxVXLANID = 1<<24 - 1
)

// vxlanSeedKey is the key Gluon's mesh VXLAN derives its VNI with.
const vxlanSeedKey = "gluon-mesh-vpn-vxlan"

// domainSeedBytes returns the first 2n hex digits that Gluon's
// domain_seed_bytes(key, n) derives from a site's domain_seed: the chain
// v_i = md5hex(v_{i-1} || key || lower(seed) || decimal(i)), i = 1, 2, ...,
// concatenated. Gluon computes it on every node, so the gateways of a site
// must use the same function to agree with them.
func domainSeedBytes(seed, key string, n int) (string, error) {
	if err := validSeed(seed); err != nil {
		return "", err
	}
	seed = strings.ToLower(seed)
	var out, v []byte
	for i := 1; len(out) < 2*n; i++ {
		sum := md5.Sum([]byte(string(v) + key + seed + strconv.Itoa(i)))
		v = []byte(hex.EncodeToString(sum[:]))
		out = append(out, v...)
	}
	return string(out[:2*n]), nil
}

// VXLANIDFromSeed is the VNI a Gluon node of a site with this domain_seed
// uses for its mesh VXLAN: domain_seed_bytes("gluon-mesh-vpn-vxlan", 3)
// read as a hexadecimal number.
func VXLANIDFromSeed(seed string) (uint32, error) {
	h, err := domainSeedBytes(seed, vxlanSeedKey, 3)
	if err != nil {
		return 0, err
	}
	id, err := strconv.ParseUint(h, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("domain seed bytes %q: %w", h, err) // unreachable: md5hex is hex
	}
	return uint32(id), nil
}

// validSeed accepts what Gluon's site.conf takes as domain_seed: hex text
// (64 digits in every site we know; other lengths are accepted, since
// Gluon only lower-cases and hashes it).
func validSeed(seed string) error {
	if seed == "" {
		return errors.New("empty domain seed")
	}
	if _, err := hex.DecodeString(seed); err != nil || len(seed)%2 != 0 {
		return fmt.Errorf("domain seed %q: want hexadecimal digits, as in site.conf's domain_seed", text.Truncate(seed, 80))
	}
	return nil
}
