package wgkex

import (
	"net"
	"regexp"
	"strings"
	"testing"
)

var keyRE = regexp.MustCompile(keyPattern)

func TestValidKey(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want bool
	}{
		{"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", true},
		{"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=", true},
		{"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", true},
		{"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2h=", false}, // non-canonical last char
		{"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g", false},  // 43 chars
		{"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2gA", false}, // no '='
		{"TszFS3oFRdhsJP3K0VOlklGMGYZy-oFCtlaghXJqW2g=", false}, // URL alphabet
		{"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g==", false},
		{"", false},
		{"public_key", false},
		{strings.Repeat("A", 43) + "\n", false},
	} {
		if got := ValidKey(tc.key); got != tc.want {
			t.Errorf("ValidKey(%q) = %v, want %v", tc.key, got, tc.want)
		}
		if got := keyRE.MatchString(tc.key); got != tc.want {
			t.Errorf("pattern disagrees on %q: %v", tc.key, got)
		}
	}
}

func FuzzValidKey(f *testing.F) {
	f.Add("TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=")
	f.Add("TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2h=")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		got := ValidKey(s)
		// The Python original uses this regexp with re.match (no multiline),
		// where $ also matches before a final newline; Go's $ does not, and
		// we deliberately refuse a trailing newline.
		if want := keyRE.MatchString(s); got != want {
			t.Fatalf("ValidKey(%q) = %v, regexp says %v", s, got, want)
		}
		if got {
			if _, err := parseKey(s); err != nil {
				t.Fatalf("valid key %q does not decode: %v", s, err)
			}
		}
	})
}

func TestLinkLocalVectors(t *testing.T) {
	if got := linkLocalPrefix("public_key").String(); got != "fe80::282:6eff:fe9d:ecd3/128" {
		t.Errorf("LinkLocal(public_key) = %s, want fe80::282:6eff:fe9d:ecd3/128", got)
	}
	mac, _ := net.ParseMAC("c4:91:0c:b2:c5:a0")
	if got := macLinkLocal(mac).String(); got != "fe80::c691:cff:feb2:c5a0" {
		t.Errorf("MACLinkLocal = %s, want fe80::c691:cff:feb2:c5a0", got)
	}
	// The U/L bit is set, not flipped: a MAC starting 02 keeps 02.
	mac2, _ := net.ParseMAC("02:00:00:00:00:01")
	if got := macLinkLocal(mac2).String(); got != "fe80::200:ff:fe00:1" {
		t.Errorf("MACLinkLocal(02:..) = %s, want fe80::200:ff:fe00:1", got)
	}
	if macLinkLocal(net.HardwareAddr{1, 2}).IsValid() {
		t.Error("MACLinkLocal of a short MAC should be invalid")
	}
}

func TestInterfacesFor(t *testing.T) {
	p := []string{"ffmuc_", "ffwert_"}
	ifs, err := InterfacesFor("ffmuc_welt", p)
	if err != nil || ifs.WireGuard != "wg-welt" || ifs.VXLAN != "vx-welt" {
		t.Fatalf("InterfacesFor(ffmuc_welt) = %+v, %v", ifs, err)
	}
	if ifs, err := InterfacesFor("ffwert_city", p); err != nil || ifs.WireGuard != "wg-city" {
		t.Fatalf("InterfacesFor(ffwert_city) = %+v, %v", ifs, err)
	}
	for _, bad := range []string{"ffdon_x", "ffmuc_", "ffmuc_abcdefghijklm", "ffmuc_a/b", "ffmuc_a b"} {
		if _, err := InterfacesFor(bad, p); err == nil {
			t.Errorf("InterfacesFor(%q) accepted", bad)
		}
	}
	if ifs, err := InterfacesFor("ffmuc_abcdefghijkl", p); err != nil || len(ifs.WireGuard) != 15 {
		t.Errorf("15-byte name refused: %v", err)
	}
}

func TestTopics(t *testing.T) {
	for _, tc := range []struct {
		topic string
		want  Topic
	}{
		{KeyTopic("ffmuc_welt"), Topic{Kind: TopicKey, Domain: "ffmuc_welt"}},
		{StatusTopic("gw04"), Topic{Kind: TopicStatus, Worker: "gw04"}},
		{DataTopic("gw04.in", "ffmuc_welt"), Topic{Kind: TopicData, Worker: "gw04.in", Domain: "ffmuc_welt"}},
		{ConnectedPeersTopic("ffmuc_welt", "gw04"), Topic{Kind: TopicMetric, Worker: "gw04", Domain: "ffmuc_welt", Metric: "connected_peers"}},
		{BrokerStatusTopic("broker1.ffmuc.net"), Topic{Kind: TopicBrokerStatus, Broker: "broker1.ffmuc.net"}},
	} {
		got, err := ParseTopic(tc.topic)
		if err != nil || got != tc.want {
			t.Errorf("ParseTopic(%q) = %+v, %v; want %+v", tc.topic, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "foo", "wireguard//all", "wireguard-worker//status", "wireguard-worker/a/b/c/data",
		"wireguard-metrics/d/w", "wireguard-worker/a/+/data", "other/a/b",
		"wireguard-broker//status", "wireguard-broker/+/status", "wireguard-broker/b/other", "wireguard-broker/b/x/status"} {
		if _, err := ParseTopic(bad); err == nil {
			t.Errorf("ParseTopic(%q) accepted", bad)
		}
	}
	if KeyFilter("d") != "wireguard/d/+" {
		t.Error(KeyFilter("d"))
	}
	if BrokerStatusTopic("b1") != "wireguard-broker/b1/status" || FilterBrokerStatus != "wireguard-broker/+/status" {
		t.Error(BrokerStatusTopic("b1"), FilterBrokerStatus)
	}
}

func TestPayloads(t *testing.T) {
	if on, err := ParseStatus([]byte("1")); err != nil || !on {
		t.Error("status 1")
	}
	if on, err := ParseStatus([]byte("0")); err != nil || on {
		t.Error("status 0")
	}
	if _, err := ParseStatus([]byte("yes")); err == nil {
		t.Error("status yes accepted")
	}
	for in, want := range map[string]int{"0": 0, "17": 17, "-1": -1, " 5\n": 5} {
		if n, err := ParseConnectedPeers([]byte(in)); err != nil || n != want {
			t.Errorf("ParseConnectedPeers(%q) = %d, %v", in, n, err)
		}
	}
	for _, bad := range []string{"", "x", "1.5", "-2", "99999999999999999999999"} {
		if _, err := ParseConnectedPeers([]byte(bad)); err == nil {
			t.Errorf("ParseConnectedPeers(%q) accepted", bad)
		}
	}
	good := `{"ExternalAddress": "gw04.ext.ffmuc.net", "Port": 40011, "PublicKey": "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", "LinkAddress": "fe80::27c:16ff:fec0:6c74"}`
	d, err := ParseWorkerData([]byte(good))
	if err != nil || d.Port != 40011 || d.ExternalAddress != "gw04.ext.ffmuc.net" {
		t.Fatalf("ParseWorkerData = %+v, %v", d, err)
	}
	for _, bad := range []string{`{}`, `[]`, `null`, `{"ExternalAddress":"a","Port":"40011","PublicKey":"x","LinkAddress":"fe80::1"}`,
		`{"ExternalAddress":"a","Port":0,"PublicKey":"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=","LinkAddress":"fe80::1"}`,
		`{"ExternalAddress":"a","Port":1,"PublicKey":"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=","LinkAddress":"10.0.0.1"}`} {
		if _, err := ParseWorkerData([]byte(bad)); err == nil {
			t.Errorf("ParseWorkerData(%s) accepted", bad)
		}
	}
}

func FuzzParsers(f *testing.F) {
	f.Add("wireguard-worker/gw/ffmuc_welt/data", []byte(`{"ExternalAddress":"a","Port":1,"PublicKey":"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=","LinkAddress":"fe80::1"}`))
	f.Add("wireguard-metrics/ffmuc_welt/gw/connected_peers", []byte("12"))
	f.Add("wireguard-worker/gw/status", []byte("1"))
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		tp, err := ParseTopic(topic)
		if err == nil && tp.Kind == TopicUnknown {
			t.Fatal("accepted topic of unknown kind")
		}
		if d, err := ParseWorkerData(payload); err == nil && d.Validate() != nil {
			t.Fatal("accepted invalid data")
		}
		if n, err := ParseConnectedPeers(payload); err == nil && n < -1 {
			t.Fatal("accepted negative count")
		}
		_, _ = ParseStatus(payload)
	})
}

func TestVXLANIDFromSeed(t *testing.T) {
	// Vectors of docs/protocol.md §2 (computed by Gluon's own Lua).
	for _, tc := range []struct {
		seed string
		id   uint32
	}{
		{strings.Repeat("0", 64), 13306706},
		{"00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff", 8911352},
		{"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", 8911352},
	} {
		id, err := VXLANIDFromSeed(tc.seed)
		if err != nil || id != tc.id {
			t.Errorf("VXLANIDFromSeed(%q) = %d, %v; want %d", tc.seed, id, err, tc.id)
		}
		if id > MaxVXLANID {
			t.Errorf("VXLANIDFromSeed(%q) = %d, over 24 bits", tc.seed, id)
		}
	}
	for _, bad := range []string{"", "xyz", "0", "00 11"} {
		if _, err := VXLANIDFromSeed(bad); err == nil {
			t.Errorf("VXLANIDFromSeed(%q): no error", bad)
		}
	}
}

func TestDomainSeedBytesLength(t *testing.T) {
	// Longer outputs chain several MD5 blocks; each prefix is stable.
	seed := strings.Repeat("ab", 32)
	long, err := domainSeedBytes(seed, "gluon-mesh-vpn-vxlan", 40)
	if err != nil || len(long) != 80 {
		t.Fatalf("len %d, %v", len(long), err)
	}
	short, _ := domainSeedBytes(seed, "gluon-mesh-vpn-vxlan", 3)
	if !strings.HasPrefix(long, short) {
		t.Errorf("%q is not a prefix of %q", short, long)
	}
}
