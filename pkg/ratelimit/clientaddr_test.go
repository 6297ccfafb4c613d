package ratelimit

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestClientAddr(t *testing.T) {
	trusted, err := ParseTrustedProxies([]string{"10.0.0.0/8", "2001:db8:ffff::/48", "192.0.2.53"})
	if err != nil {
		t.Fatal(err)
	}
	l := mustNew(t, Config{TrustedProxies: trusted})
	for _, tc := range []struct {
		name   string
		remote string
		header []string
		want   string // "" for the invalid Addr
	}{
		{"direct peer", "198.51.100.1:4000", nil, "198.51.100.1"},
		{"direct IPv6 peer with zone", "[fe80::1%wg0]:4000", nil, "fe80::1"},
		{"dual-stack mapped IPv4", "[::ffff:198.51.100.1]:4000", nil, "198.51.100.1"},
		{"not a TCP peer", "@", nil, ""},

		// Spoofing: an untrusted peer's headers are never read.
		{"untrusted peer sends X-Forwarded-For", "198.51.100.1:4000",
			[]string{"X-Forwarded-For", "203.0.113.9"}, "198.51.100.1"},
		{"untrusted peer sends X-Real-IP", "198.51.100.1:4000",
			[]string{"X-Real-IP", "203.0.113.9"}, "198.51.100.1"},
		{"untrusted peer claims to be behind a trusted proxy", "198.51.100.1:4000",
			[]string{"X-Forwarded-For", "203.0.113.9, 10.0.0.1"}, "198.51.100.1"},
		{"untrusted peer just outside a trusted prefix", "[2001:db8:fffe::1]:80",
			[]string{"X-Forwarded-For", "203.0.113.9"}, "2001:db8:fffe::1"},

		// Through a trusted proxy.
		{"trusted proxy, one hop", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "203.0.113.9"}, "203.0.113.9"},
		{"client prepends a fake hop; the proxy appended the real one", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "1.1.1.1, 203.0.113.9"}, "203.0.113.9"},
		{"client fakes a trusted hop left of the real one", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "10.9.9.9, 203.0.113.9"}, "203.0.113.9"},
		{"two trusted proxies", "[2001:db8:ffff::1]:80",
			[]string{"X-Forwarded-For", "1.1.1.1, 2001:db8:5:6::7, 10.0.0.2"}, "2001:db8:5:6::7"},
		{"hops over several header lines", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "1.1.1.1, 203.0.113.9", "X-Forwarded-For", "10.0.0.7"}, "203.0.113.9"},
		{"entries with ports and brackets", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "[2001:db8:1::5]:1234,203.0.113.9:80"}, "203.0.113.9"},
		{"bracketed IPv6 entry", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "[2001:db8:1::5]"}, "2001:db8:1::5"},
		{"empty items are skipped", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "203.0.113.9, ,"}, "203.0.113.9"},
		{"garbage stops at the proxy that wrote it", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "203.0.113.9, unknown, 10.0.0.8"}, "10.0.0.8"},
		{"garbage from the peer itself", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "203.0.113.9, not-an-ip"}, "10.1.2.3"},
		{"every hop trusted: the left-most", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "10.0.0.9, 192.0.2.53"}, "10.0.0.9"},
		{"X-Forwarded-For wins over X-Real-IP", "10.1.2.3:5555",
			[]string{"X-Real-IP", "1.1.1.1", "X-Forwarded-For", "203.0.113.9"}, "203.0.113.9"},
		{"X-Real-IP when there is no X-Forwarded-For", "192.0.2.53:5555",
			[]string{"X-Real-IP", " 203.0.113.9 "}, "203.0.113.9"},
		{"empty X-Forwarded-For falls back to X-Real-IP", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", " , ", "X-Real-IP", "203.0.113.9"}, "203.0.113.9"},
		{"unusable X-Real-IP: the proxy itself", "10.1.2.3:5555",
			[]string{"X-Real-IP", "localhost"}, "10.1.2.3"},
		{"trusted proxy, no headers: the proxy itself", "10.1.2.3:5555", nil, "10.1.2.3"},
		{"mapped trusted proxy", "[::ffff:10.1.2.3]:5555",
			[]string{"X-Forwarded-For", "203.0.113.9"}, "203.0.113.9"},
		{"mapped client in the header", "10.1.2.3:5555",
			[]string{"X-Forwarded-For", "::ffff:203.0.113.9"}, "203.0.113.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodPost, "/", nil)
			r.RemoteAddr = tc.remote
			for i := 0; i+1 < len(tc.header); i += 2 {
				r.Header.Add(tc.header[i], tc.header[i+1])
			}
			got := l.clientAddr(r)
			if tc.want == "" {
				if got.IsValid() {
					t.Errorf("got %s, want no address", got)
				}
				return
			}
			if got != netip.MustParseAddr(tc.want) {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

// A spoofing client cannot spread its requests over made-up addresses.
func TestSpoofedHeadersShareTheBucket(t *testing.T) {
	c := newClock()
	l := mustNew(t, Config{PerClient: 1, PerClientBurst: 2, Global: -1, Now: c.Now})
	h := l.Wrap(&okHandler{})
	serve(h, request("198.51.100.1:1", "X-Forwarded-For", "203.0.113.1"))
	serve(h, request("198.51.100.1:2", "X-Real-IP", "203.0.113.2"))
	refusal(t, serve(h, request("198.51.100.1:3", "X-Forwarded-For", "203.0.113.3")))
}

func TestParseTrustedProxies(t *testing.T) {
	got, err := ParseTrustedProxies([]string{"192.0.2.1", " 10.1.2.3/8 ", "2001:db8::1", "::ffff:192.0.2.0/120"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.1/32", "10.0.0.0/8", "2001:db8::1/128", "192.0.2.0/24"}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("entry %d: %s, want %s", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"", "gw1.example.net", "10.0.0.0/33", "fe80::1%eth0", "1.2.3.4:80"} {
		if _, err := ParseTrustedProxies([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
