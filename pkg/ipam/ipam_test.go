package ipam

import (
	"net/netip"
	"testing"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// ffbs is Braunschweig's layout: etcd-tools etcdconfigweb/config.go
// (V4_BASE 10<<24, V4_RANGE_SIZE 10, V6_BASE_HIGH 0x20010bf70381<<16).
var ffbs = Config{Pool4: mustPrefix("10.0.0.0/8"), Pool6: mustPrefix("2001:bf7:381::/48")}

// ffmuc is München's layout as in upstream's example configuration.
var ffmuc = Config{XLAT: true, Pool6: mustPrefix("2001:db8:ed0::/56"), CLAT4: mustPrefix("10.80.96.0/22")}

func derived(t *testing.T, cfg Config, index uint64) (Assignment, uint64) {
	t.Helper()
	n, err := cfg.validate()
	if err != nil {
		t.Fatal(err)
	}
	return cfg.derive(index), n
}

func TestDerivePerNodeMatchesFFBS(t *testing.T) {
	// The values of etcd-tools' own tests (config_test.go).
	for _, c := range []struct {
		id                           uint64
		addr4, range4, addr6, range6 string
	}{
		{30, "10.0.120.1", "10.0.120.0/22", "2001:bf7:381:1e::1", "2001:bf7:381:1e::/64"},
		{16383, "10.255.252.1", "10.255.252.0/22", "2001:bf7:381:3fff::1", "2001:bf7:381:3fff::/64"},
		{1, "10.0.4.1", "10.0.4.0/22", "2001:bf7:381:1::1", "2001:bf7:381:1::/64"},
	} {
		as, slots := derived(t, ffbs, c.id)
		if got := as.Address4.String(); got != c.addr4 {
			t.Errorf("id %d: address4 %s, want %s", c.id, got, c.addr4)
		}
		if got := as.Range4.String(); got != c.range4 {
			t.Errorf("id %d: range4 %s, want %s", c.id, got, c.range4)
		}
		if got := as.Address6.String(); got != c.addr6 {
			t.Errorf("id %d: address6 %s, want %s", c.id, got, c.addr6)
		}
		if got := as.Range6.String(); got != c.range6 {
			t.Errorf("id %d: range6 %s, want %s", c.id, got, c.range6)
		}
		if as.Prefix6 != as.Range6 || as.XLATRange6.IsValid() {
			t.Errorf("id %d: prefix6 %v, xlat_range6 %v; want range6 and none", c.id, as.Prefix6, as.XLATRange6)
		}
		if got := as.Routes(); len(got) != 2 || got[0] != as.Range4 || got[1] != as.Range6 {
			t.Errorf("id %d: routes %v", c.id, got)
		}
		// 14 bits of /22s in a /8: FFBS's highest id is 16383.
		if slots != 16384 {
			t.Errorf("slots %d, want 16384", slots)
		}
	}
}

func TestDeriveXLAT(t *testing.T) {
	as, slots := derived(t, ffmuc, 1)
	want := map[string]string{
		"prefix6":     "2001:db8:ed0:2::/63",
		"range6":      "2001:db8:ed0:2::/64",
		"xlat_range6": "2001:db8:ed0:3::/64",
		"address6":    "2001:db8:ed0:2::1",
		"range4":      "10.80.96.0/22",
		"address4":    "10.80.96.1",
	}
	got := map[string]string{
		"prefix6":     as.Prefix6.String(),
		"range6":      as.Range6.String(),
		"xlat_range6": as.XLATRange6.String(),
		"address6":    as.Address6.String(),
		"range4":      as.Range4.String(),
		"address4":    as.Address4.String(),
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %s, want %s", k, got[k], w)
		}
	}
	if slots != 128 {
		t.Errorf("a /56 holds %d /63s, want 128", slots)
	}
	if r := as.Routes(); len(r) != 1 || r[0] != as.Prefix6 {
		t.Errorf("routes %v, want only the /63", r)
	}
	last, _ := derived(t, ffmuc, 127)
	if last.XLATRange6.String() != "2001:db8:ed0:ff::/64" {
		t.Errorf("last slot xlat_range6 %v", last.XLATRange6)
	}
	// Every node shares the CLAT range.
	other, _ := derived(t, ffmuc, 77)
	if other.Range4 != as.Range4 || other.Address4 != as.Address4 {
		t.Errorf("slot 77 range4 %v address4 %v, want the shared %v %v", other.Range4, other.Address4, as.Range4, as.Address4)
	}

	// A shorter allocation still puts range6 and xlat_range6 first.
	wide := ffmuc
	wide.Length6 = 60
	as, _ = derived(t, wide, 3)
	if as.Prefix6.String() != "2001:db8:ed0:30::/60" || as.Range6.String() != "2001:db8:ed0:30::/64" ||
		as.XLATRange6.String() != "2001:db8:ed0:31::/64" {
		t.Errorf("/60: %v %v %v", as.Prefix6, as.Range6, as.XLATRange6)
	}
}

func TestAddOffsetCarries(t *testing.T) {
	// A slot offset that crosses the 64-bit halves of an IPv6 address.
	got := addOffset(netip.MustParseAddr("2001:db8::"), 1, 64)
	if got.String() != "2001:db8:0:1::" {
		t.Errorf("got %v", got)
	}
	got = addOffset(netip.MustParseAddr("2001:db8:0:0:ffff:ffff:ffff:ffff"), 1, 0)
	if got.String() != "2001:db8:0:1::" {
		t.Errorf("carry: got %v", got)
	}
	got = addOffset(netip.MustParseAddr("2001:db8::"), 3, 65)
	if got.String() != "2001:db8:0:6::" {
		t.Errorf("shift 65: got %v", got)
	}
	// Bits of one offset on both sides of the halves.
	got = addOffset(netip.MustParseAddr("2001:db8::"), 3, 63)
	if got.String() != "2001:db8:0:1:8000::" {
		t.Errorf("shift 63 across halves: got %v", got)
	}
	got = addOffset(netip.MustParseAddr("2001::"), 1<<20, 63)
	if got.String() != "2001:0:8::" {
		t.Errorf("shift 63: got %v", got)
	}
}

func TestConfigRefuses(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no pool6":             {XLAT: true, CLAT4: mustPrefix("10.80.96.0/22")},
		"v4 pool6":             {XLAT: true, Pool6: mustPrefix("10.0.0.0/8"), CLAT4: mustPrefix("10.80.96.0/22")},
		"host bits":            {XLAT: true, Pool6: mustPrefix("2001:db8:ed0::1/56"), CLAT4: mustPrefix("10.80.96.0/22")},
		"xlat /64":             {XLAT: true, Pool6: mustPrefix("2001:db8::/56"), Length6: 64, CLAT4: mustPrefix("10.80.96.0/22")},
		"xlat no clat":         {XLAT: true, Pool6: mustPrefix("2001:db8::/56")},
		"xlat clat /31":        {XLAT: true, Pool6: mustPrefix("2001:db8::/56"), CLAT4: mustPrefix("10.80.96.0/31")},
		"xlat pool too small":  {XLAT: true, Pool6: mustPrefix("2001:db8::/63"), CLAT4: mustPrefix("10.80.96.0/22")},
		"xlat one slot":        {XLAT: true, Pool6: mustPrefix("2001:db8::/62"), Length6: 62, CLAT4: mustPrefix("10.80.96.0/22")},
		"per-node no pool4":    {Pool6: mustPrefix("2001:db8::/48")},
		"per-node /63":         {Pool6: mustPrefix("2001:db8::/48"), Pool4: mustPrefix("10.0.0.0/8"), Length6: 63},
		"per-node length4 /8":  {Pool6: mustPrefix("2001:db8::/48"), Pool4: mustPrefix("10.0.0.0/8"), Length4: 8},
		"per-node length4 /31": {Pool6: mustPrefix("2001:db8::/48"), Pool4: mustPrefix("10.0.0.0/8"), Length4: 31},
		"per-node v6 pool4":    {Pool6: mustPrefix("2001:db8::/48"), Pool4: mustPrefix("2001:db8::/48")},
	} {
		if _, err := cfg.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Per-node capacity is the smaller pool's.
	cfg := Config{Pool6: mustPrefix("2001:db8::/56"), Pool4: mustPrefix("10.0.0.0/8")}
	if n, err := cfg.validate(); err != nil || n != 256 {
		t.Errorf("/56 and 10/8 by /22: %d slots (%v), want 256", n, err)
	}
}
