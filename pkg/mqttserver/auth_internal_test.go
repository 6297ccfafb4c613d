package mqttserver

import (
	"crypto/pbkdf2"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"testing"
)

func TestCovers(t *testing.T) {
	for _, tc := range []struct {
		filter, sub string
		want        bool
	}{
		{"wireguard/#", "wireguard/d/all", true},
		{"wireguard/#", "wireguard", true},
		{"wireguard/#", "wireguard/+/+", true},
		{"wireguard/#", "wireguard/#", true},
		{"wireguard/#", "wireguard-worker/x/status", false},
		{"wireguard/#", "#", false},
		{"wireguard-worker/gw1/#", "wireguard-worker/gw1/status", true},
		{"wireguard-worker/gw1/#", "wireguard-worker/gw2/status", false},
		{"wireguard-worker/gw1/#", "wireguard-worker/+/status", false},
		{"wireguard-worker/gw1/#", "wireguard-worker/gw10/status", false},
		{"wireguard-metrics/+/gw1/#", "wireguard-metrics/d/gw1/connected_peers", true},
		{"wireguard-metrics/+/gw1/#", "wireguard-metrics/+/gw1/connected_peers", true},
		{"wireguard-metrics/+/gw1/#", "wireguard-metrics/#", false},
		{"wireguard-metrics/+/gw1/#", "wireguard-metrics/d/gw2/connected_peers", false},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/b", "a/b", true},
	} {
		if got := covers(tc.filter, tc.sub); got != tc.want {
			t.Errorf("covers(%q, %q) = %v, want %v", tc.filter, tc.sub, got, tc.want)
		}
	}
}

func TestRules(t *testing.T) {
	w := WorkerRules("gw1")
	for _, topic := range []string{"wireguard-worker/gw1/status", "wireguard-worker/gw1/d/data",
		"wireguard-metrics/d/gw1/connected_peers", "parker/wireguard-worker/gw1/status"} {
		if !allows(w.Write, topic) {
			t.Errorf("worker gw1 may not write %s", topic)
		}
	}
	for _, topic := range []string{"wireguard-worker/gw2/status", "wireguard/d/all", "parker/wireguard/all",
		"wireguard-broker/gw1/status", "wireguard-metrics/gw1/gw2/connected_peers"} {
		if allows(w.Write, topic) {
			t.Errorf("worker gw1 may write %s", topic)
		}
	}
	b := BrokerRules()
	for _, topic := range []string{"wireguard/d/all", "parker/wireguard/all", "wireguard-broker/b/status", "parker/wireguard-broker/b/status"} {
		if !allows(b.Write, topic) {
			t.Errorf("broker may not write %s", topic)
		}
	}
	if allows(b.Write, "wireguard-worker/gw1/status") {
		t.Error("broker may write a worker's status")
	}
}

func TestParseHash(t *testing.T) {
	salt := []byte("0123456789ab")
	key, err := pbkdf2.Key(sha512.New, "pw", salt, 101, 64)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString
	p, err := parseHash(fmt.Sprintf("$7$101$%s$%s", b64(salt), b64(key)))
	if err != nil {
		t.Fatal(err)
	}
	if !p.verify([]byte("pw")) || p.verify([]byte("pW")) || p.verify(nil) {
		t.Error("$7$ verification wrong")
	}
	d := sha512.Sum512(append([]byte("pw"), salt...))
	p, err = parseHash(fmt.Sprintf("$6$%s$%s", b64(salt), b64(d[:])))
	if err != nil {
		t.Fatal(err)
	}
	if !p.verify([]byte("pw")) || p.verify([]byte("pw2")) {
		t.Error("$6$ verification wrong")
	}
	for _, bad := range []string{"pw", "$7$0$c2FsdA==$aGFzaA==", "$7$99999999$c2FsdA==$aGFzaA==",
		"$7$x$c2FsdA==$aGFzaA==", "$7$101$c2FsdA==$", "$6$c2FsdA==$aGFzaA==", "$5$a$b", "$7$101$%%%$aGFzaA=="} {
		if _, err := parseHash(bad); err == nil {
			t.Errorf("parseHash(%q) accepted", bad)
		}
	}
}
