package cmd_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/freifunkMUC/wgkex/internal/eventually"
	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/internal/testdns"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// gluonNode replays what a deployed Gluon node does with wgkex (package
// ffmuc-mesh-vpn-wireguard-vxlan: the checkuplink script and its reply
// parser; docs/protocol.md §2). The rules are restated here in our own
// code, from that script's behaviour; a change to them is a change of what
// deployed nodes accept.
type gluonNode struct {
	host *nsHost
	wg   string // the node's WireGuard interface
	key  string // its public key
	seed string // the site's domain_seed
}

// gluonParse is parse-wgkex-response.lua: the reply must be JSON; a reply
// with Message == "OK" is a v1 reply and yields nothing (ok, no lines);
// otherwise Endpoint, .Address, .Port, .PublicKey and .AllowedIPs[0] must
// all be there, and come out as four lines.
func gluonParse(body []byte) (lines []string, err error) {
	var data map[string]any
	if err := json.Unmarshal(body, &data); err != nil || data == nil {
		return nil, fmt.Errorf("parser: reply is not a JSON object: %q", body)
	}
	if data["Message"] == "OK" {
		return nil, nil
	}
	ep, ok := data["Endpoint"].(map[string]any)
	if !ok {
		return nil, errors.New("parser: assertion failed: Endpoint")
	}
	field := func(name string) (string, error) {
		switch v := ep[name].(type) {
		case string:
			return v, nil
		case float64: // Lua prints a JSON number as it is
			return fmt.Sprint(v), nil
		}
		return "", fmt.Errorf("parser: assertion failed: Endpoint.%s", name)
	}
	for _, name := range []string{"Address", "Port", "PublicKey"} {
		v, err := field(name)
		if err != nil {
			return nil, err
		}
		lines = append(lines, v)
	}
	ips, _ := ep["AllowedIPs"].([]any)
	if len(ips) == 0 {
		return nil, errors.New("parser: assertion failed: Endpoint.AllowedIPs[1]")
	}
	first, ok := ips[0].(string)
	if !ok {
		return nil, errors.New("parser: assertion failed: Endpoint.AllowedIPs[1]")
	}
	return append(lines, first), nil
}

// register is the node's key exchange in load-balancing (v2) mode: the
// body exactly as the script writes it, posted as uclient-fetch posts it
// (form content type, chunked, no Content-Length). uclient-fetch prints a
// body only for 200 and 204.
func (n *gluonNode) register(broker, domain string) ([]byte, error) {
	body := `{"domain": "` + domain + `","public_key": "` + n.key + `"}`
	req, _ := http.NewRequest("POST", broker+"/api/v2/wg/key/exchange", io.MultiReader(strings.NewReader(body)))
	req.ContentLength = -1 // unknown length: chunked, as uclient-fetch sends it
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("User-Agent", "gluon/v2023.2.5 (test-board) OpenWrt/23.05 (kernel/5.15; x86/64) firmware/test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 && resp.StatusCode != 204 {
		return nil, fmt.Errorf("uclient-fetch: HTTP %d (no output): %s", resp.StatusCode, reply)
	}
	return reply, nil
}

// nslookupAddress matches the answer lines of busybox nslookup (not the
// server line, which has a tab after "Address:").
var (
	nslookupAddress = regexp.MustCompile(`^Address ?[0-9]*:? (.*)$`)
	dottedQuad      = regexp.MustCompile(`[0-9]{1,3}(\.[0-9]{1,3}){3}`)
)

// resolve is the script's resolve_host: busybox nslookup of the name, the
// "Address" answer lines, IPv6 ones only when the node has an IPv6 default
// route in table 1 (else IPv4 only), the first of them. An IP literal makes
// busybox ask for a PTR record, which prints no Address line: it fails.
func (n *gluonNode) resolve(t *testing.T, name string) (string, error) {
	t.Helper()
	if name == "" {
		return "", errors.New("resolve_host: empty host name")
	}
	out, _ := n.host.try("busybox", "nslookup", name)
	routes, _ := n.host.try("ip", "-6", "route", "show", "table", "1")
	v6 := strings.Contains(routes, "default via")
	for _, line := range strings.Split(out, "\n") {
		m := nslookupAddress.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		addr := strings.TrimSpace(m[1])
		if isV4 := dottedQuad.MatchString(addr); isV4 != v6 {
			return addr, nil
		}
	}
	return "", fmt.Errorf("resolve_host %q: no usable Address line in nslookup output:\n%s", name, out)
}

// connect runs the node's whole reconnect: key exchange, parse, resolve,
// WireGuard peer, VXLAN link with the VNI derived from the site's domain
// seed, then the liveness check (HTTP to the gateway's link address).
func (n *gluonNode) connect(t *testing.T, broker, domain string) (gatewayLL string, err error) {
	t.Helper()
	reply, err := n.register(broker, domain)
	if err != nil {
		return "", fmt.Errorf("v2 request failed; the node falls back to v1 and its static peers: %w", err)
	}
	lines, err := gluonParse(reply)
	if err != nil {
		return "", fmt.Errorf("v2 reply unusable; the node falls back to v1 and its static peers: %w (reply %s)", err, reply)
	}
	if lines == nil {
		// What checkuplink does next: the parser printed nothing, so the
		// host is empty and resolving it ends the script (exit 5).
		lines = []string{"", "", "", ""}
		t.Logf("v2 reply %s carries Message == \"OK\": the node reads it as a v1 reply and gets no gateway", reply)
	}
	host, port, peerKey, peerLL := lines[0], lines[1], lines[2], lines[3]
	ip, err := n.resolve(t, host)
	if err != nil {
		return "", err
	}
	ll := wgkex.LinkLocal(n.key).String()
	endpoint := ip + ":" + port
	if strings.Contains(ip, ":") {
		endpoint = "[" + ip + "]:" + port
	}
	vni, err := wgkex.VXLANIDFromSeed(n.seed)
	if err != nil {
		return "", err
	}
	steps := [][]string{
		{"ip", "address", "add", ll + "/64", "dev", n.wg},
		{"wg", "set", n.wg, "peer", peerKey, "persistent-keepalive", "25", "allowed-ips", peerLL + "/128", "endpoint", endpoint},
		{"ip", "link", "add", "mesh-vpn", "type", "vxlan", "id", fmt.Sprint(vni), "local", ll, "remote", peerLL, "dstport", "8472", "dev", n.wg},
		{"ip", "link", "set", "up", "dev", "mesh-vpn"},
	}
	for _, s := range steps {
		if out, ok := n.host.try(s...); !ok {
			return "", fmt.Errorf("%v: %s", s, out)
		}
	}
	return peerLL, nil
}

// alive is the script's is_connected: an HTTP GET of the gateway's link
// address through the WireGuard interface, 5 s timeout, success (200/204)
// only. (The timeout comes from timeout(1): Debian's busybox 1.35 wget
// crashes on -T.)
func (n *gluonNode) alive(gatewayLL string) (string, bool) {
	return n.host.try("timeout", "5", "busybox", "wget", "-q", "-O", "/dev/null", "http://["+gatewayLL+"%"+n.wg+"]/")
}

// testSeed is a site's domain_seed (its VNI is 8911352, a vector of
// docs/protocol.md §2).
const testSeed = "00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff"

// TestGluonNode replays a deployed Gluon node against broker, worker and a
// test gateway: the gateway has a DNS name (served by a DNS server in the
// test, read by busybox nslookup through the node's own resolv.conf), uses
// the VNI the site's domain seed gives, and answers the liveness check; the
// node registers, builds its tunnel and reaches the gateway across VXLAN.
func TestGluonNode(t *testing.T) {
	m := newMesh(t)
	for _, b := range []string{"busybox"} {
		if _, ok := m.node1.try("sh", "-c", "command -v "+b); !ok {
			testbus.Missing(t, "%s is not installed", b)
		}
	}
	dns, err := testdns.Listen("10.99.0.254:53")
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	dns.Set("gw1.mesh.test", netip.MustParseAddr(m.gw1.ip))
	m.node1.useResolver(t, m.dir, "10.99.0.254")

	m.startMosquitto(t)
	bus := "WGKEX_MQTT_BROKER_URL=10.99.0.1"
	m.broker.start(t, []string{bus}, "broker", "--config", m.cfg)
	m.gw1.start(t, nil, "dummy-iface", "--config", m.cfg, "--listen-port", "51820", "--domain-seed", testSeed, "--http")
	eventually.True(t, waitTimeout, "gw1 interfaces", func() bool { _, ok := m.gw1.try("ip", "link", "show", "vx-welt"); return ok })
	if out := m.gw1.run(t, "ip", "-d", "link", "show", "vx-welt"); !strings.Contains(out, "vxlan id 8911352 ") {
		t.Fatalf("gateway vx-welt does not use the seed's VNI 8911352:\n%s", out)
	}
	m.gw1.start(t, []string{bus, "WGKEX_EXTERNALNAME=gw1.mesh.test"}, "worker", "--config", m.cfg, "--name", "gw1")
	eventually.True(t, waitTimeout, "gw1 online", func() bool { return gatewaysReady(1) })

	// The node's WireGuard interface wg-node with its private key (made
	// with dummy-iface; its vx-node and /128 address are not the node's).
	m.node1.start(t, []string{"WGKEX_DOMAINS=ffmuc_node"}, "dummy-iface", "--config", m.cfg, "--listen-port", "51900")
	var key string
	eventually.True(t, waitTimeout, "node interface", func() bool {
		out, _ := m.node1.try("wg", "show", "wg-node", "public-key")
		key = strings.TrimSpace(out)
		_, up := m.node1.try("ip", "link", "show", "vx-node")
		return wgkex.ValidKey(key) && up
	})
	m.node1.run(t, "ip", "link", "del", "vx-node")
	m.node1.run(t, "ip", "address", "del", wgkex.LinkLocal(key).String()+"/128", "dev", "wg-node")
	node := &gluonNode{host: m.node1, wg: "wg-node", key: key, seed: testSeed}

	// busybox nslookup cannot use an IP literal: the rule the DNS name is for.
	if ip, err := node.resolve(t, m.gw1.ip); err == nil {
		t.Errorf("resolve of an IP literal gave %q; busybox nslookup makes a PTR query and prints no Address line", ip)
	}

	gatewayLL, err := node.connect(t, "http://10.99.0.1:5000", "ffmuc_welt")
	if err != nil {
		t.Fatalf("the Gluon node could not use the broker's reply: %v", err)
	}
	eventually.True(t, waitTimeout, "node key on gw1", func() bool { return installed(m.gw1, key) })
	var out string
	alive := false
	for range 50 {
		if out, alive = node.alive(gatewayLL); alive {
			break
		}
	}
	if !alive {
		diag, _ := m.node1.try("sh", "-c", "wg show all; ip -6 addr; ip -6 route")
		t.Fatalf("liveness check (HTTP GET of http://[%s%%%s]/) failed: %s\n%s", gatewayLL, node.wg, out, diag)
	}
	pingable(t, m.node1, "fe80::1%mesh-vpn")
	pingable(t, m.gw1, vxlanLL(t, m.node1, "mesh-vpn")+"%vx-welt")

	// wgkex client push, human-readable and --json, shows the same gateway
	// and the exact v2 reply (no "Message").
	out = m.node1.run(t, bin, "client", "push", "--broker", "http://10.99.0.1:5000", "--domain", "ffmuc_welt", "--public-key", key)
	for _, want := range []string{"key registered (v2)", "gateway:      gw1.mesh.test", "port:         51820", "link address: " + gatewayLL} {
		if !strings.Contains(out, want) {
			t.Errorf("client push output lacks %q:\n%s", want, out)
		}
	}
	out = m.node1.run(t, bin, "client", "push", "--broker", "http://10.99.0.1:5000", "--domain", "ffmuc_welt", "--public-key", key, "--json")
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil || len(raw) != 1 || raw["Endpoint"] == nil {
		t.Errorf("client push --json: want exactly {\"Endpoint\": ...}: %v %s", err, out)
	}
	if out, ok := m.node1.try(bin, "client", "push", "--broker", "http://10.99.0.1:5000", "--domain", "ffmuc_mars", "--public-key", key); ok ||
		!strings.Contains(out, `broker answered 400: unknown domain "ffmuc_mars"`) {
		t.Errorf("client push to an unknown domain: ok=%v %s", ok, out)
	}
}

// TestGluonParse pins the parser rules the node test relies on.
func TestGluonParse(t *testing.T) {
	v2 := `{"Endpoint":{"Address":"gw1.mesh.test","Port":"51820","AllowedIPs":["fe80::1"],"PublicKey":"k","LinkAddress":"fe80::1"}}`
	if lines, err := gluonParse([]byte(v2)); err != nil || strings.Join(lines, " ") != "gw1.mesh.test 51820 k fe80::1" {
		t.Errorf("v2: %v %v", lines, err)
	}
	withMessage := strings.TrimSuffix(v2, "}") + `,"Message":"OK"}`
	if lines, err := gluonParse([]byte(withMessage)); err != nil || lines != nil {
		t.Errorf("v2 with Message OK must read as v1 (no lines): %v %v", lines, err)
	}
	for _, bad := range []string{``, `[]`, `{}`, `{"Endpoint":{"Address":"a","Port":"1","PublicKey":"k","AllowedIPs":[]}}`,
		`{"Endpoint":{"Port":"1","PublicKey":"k","AllowedIPs":["fe80::1"]}}`} {
		if _, err := gluonParse([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
