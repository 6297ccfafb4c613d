package parker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/ipam"
	"github.com/freifunkMUC/wgkex/pkg/signify"
)

var (
	// keyPlus has both "+" and "/": the characters query encoding mangles.
	keyPlus  = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32))
	keyOther = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x11}, 32))
	gwKey    = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x22}, 32))
	nonce    = "0123456789abcdef0123456789abcdef"
	now      = time.Unix(1700000000, 0)
)

var (
	ffmuc = ipam.Config{XLAT: true, Pool6: netip.MustParsePrefix("2001:db8:ed0::/56"), CLAT4: netip.MustParsePrefix("10.80.96.0/22")}
	ffbs  = ipam.Config{Pool4: netip.MustParsePrefix("10.0.0.0/8"), Pool6: netip.MustParsePrefix("2001:bf7:381::/48")}
)

// fakeGateways hands out its list and records what it was asked.
type fakeGateways struct {
	mu       sync.Mutex
	list     []Concentrator
	err      error
	previous [][]string
}

func (f *fakeGateways) Concentrators(_ context.Context, _ string, previous []string) ([]Concentrator, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.previous = append(f.previous, slices.Clone(previous))
	return f.list, f.err
}

func gw04() Concentrator {
	return Concentrator{
		Name: "gw04", ID: 4,
		Address4: netip.MustParseAddr("10.80.96.254"), Address6: netip.MustParseAddr("fe80::27c:16ff:fec0:6c74"),
		Host: "gw04.ext.ffmuc.net", Port: 40011, PublicKey: gwKey,
	}
}

func gw07() Concentrator {
	return Concentrator{
		Name: "gw07", ID: 7,
		Address4: netip.MustParseAddr("10.80.96.253"), Address6: netip.MustParseAddr("fe80::7"),
		Host: "2001:db8::7", Port: 51820, PublicKey: gwKey,
	}
}

type fixture struct {
	h     *Handler
	alloc *ipam.Allocator
	gws   *fakeGateways
	key   *signify.PrivateKey
	reg   *prometheus.Registry
	dir   string
}

func newFixture(t *testing.T, cfg ipam.Config, o Options) *fixture {
	t.Helper()
	dir := t.TempDir()
	store, err := ipam.OpenBolt(filepath.Join(dir, "ipam.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	cfg.Now = func() time.Time { return now }
	alloc, err := ipam.New(cfg, store)
	if err != nil {
		t.Fatal(err)
	}
	key, err := signify.WriteKeyPair(filepath.Join(dir, "parker.sec"), filepath.Join(dir, "parker.pub"), "")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{alloc: alloc, gws: &fakeGateways{list: []Concentrator{gw04()}}, key: key, reg: prometheus.NewRegistry(), dir: dir}
	if o.IPAM == nil {
		o.IPAM = alloc
	}
	o.Gateways, o.Key, o.Registry, o.Logger = f.gws, key, f.reg, testbus.Quiet()
	o.Now = func() time.Time { return now }
	if f.h, err = New(o); err != nil {
		t.Fatal(err)
	}
	return f
}

// get sends the raw query (as a node would, nothing re-encoded).
func (f *fixture) get(t *testing.T, rawQuery string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/config?"+rawQuery, nil)
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

// nodeQuery encodes key as nodeconfig.sh does: only "+" becomes %2B.
func nodeQuery(key, nonce string, rest string) string {
	return "pubkey=" + strings.ReplaceAll(key, "+", "%2B") + "&nonce=" + nonce + rest
}

// split parses a reply the way the node does: the last line is the
// signature, everything before it (with the JSON's "\n") the message.
func split(t *testing.T, body string) (msg, sig string) {
	t.Helper()
	i := strings.LastIndexByte(body, '\n')
	if i < 0 {
		t.Fatalf("reply has one line: %q", body)
	}
	msg, sig = body[:i+1], body[i+1:]
	if strings.Count(msg, "\n") != 1 {
		t.Fatalf("JSON is not on one line: %q", msg)
	}
	return msg, sig
}

func okReply(t *testing.T, f *fixture, w *httptest.ResponseRecorder) (msg string, fields map[string]any) {
	t.Helper()
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "text/plain" {
		t.Errorf("Content-Type %q, want text/plain", ct)
	}
	body := w.Body.String()
	if strings.HasSuffix(body, "\n") {
		t.Errorf("reply ends in a newline")
	}
	msg, sig := split(t, body)
	if err := f.key.Public().Verify([]byte(msg), sig); err != nil {
		t.Fatalf("signature: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(msg))
	dec.UseNumber()
	if err := dec.Decode(&fields); err != nil {
		t.Fatal(err)
	}
	return msg, fields
}

func TestReplyExactXLAT(t *testing.T) {
	f := newFixture(t, ffmuc, Options{})
	msg, _ := okReply(t, f, f.get(t, nodeQuery(keyPlus, nonce, "&v6mtu=1500&version=v2025.1")))
	want := `{"nonce":"0123456789abcdef0123456789abcdef","time":1700000000,"id":1,"mtu":1375,` +
		`"concentrators":[{"address4":"10.80.96.254","address6":"fe80::27c:16ff:fec0:6c74","endpoint":"gw04.ext.ffmuc.net:40011","pubkey":"` + gwKey + `","id":4}],` +
		`"range6":"2001:db8:ed0:2::/64","address6":"2001:db8:ed0:2::1","xlat_range6":"2001:db8:ed0:3::/64",` +
		`"range4":"10.80.96.0/22","address4":"10.80.96.1","wg_keepalive":25,"retry":120}` + "\n"
	if msg != want {
		t.Errorf("reply\n got %s\nwant %s", msg, want)
	}
	if got, want := testutil.ToFloat64(f.h.metrics.allocations), 1.0; got != want {
		t.Errorf("allocations %v, want %v", got, want)
	}
}

func TestReplyExactPerNode(t *testing.T) {
	f := newFixture(t, ffbs, Options{MTU: 1400, Keepalive: 15, Retry: 300})
	f.gws.list = []Concentrator{gw04(), gw07()}
	msg, _ := okReply(t, f, f.get(t, nodeQuery(keyOther, "n", "&v6mtu=1500")))
	want := `{"nonce":"n","time":1700000000,"id":1,"mtu":1400,"concentrators":[` +
		`{"address4":"10.80.96.254","address6":"fe80::27c:16ff:fec0:6c74","endpoint":"gw04.ext.ffmuc.net:40011","pubkey":"` + gwKey + `","id":4},` +
		`{"address4":"10.80.96.253","address6":"fe80::7","endpoint":"[2001:db8::7]:51820","pubkey":"` + gwKey + `","id":7}],` +
		`"range6":"2001:bf7:381:1::/64","address6":"2001:bf7:381:1::1",` +
		`"range4":"10.0.4.0/22","address4":"10.0.4.1","wg_keepalive":15,"retry":300}` + "\n"
	if msg != want {
		t.Errorf("reply\n got %s\nwant %s", msg, want)
	}
}

func TestTypes(t *testing.T) {
	f := newFixture(t, ffmuc, Options{})
	_, fields := okReply(t, f, f.get(t, nodeQuery(keyPlus, nonce, "")))
	for _, name := range []string{"time", "id", "mtu", "wg_keepalive", "retry"} {
		if _, ok := fields[name].(json.Number); !ok {
			t.Errorf("%s is %T, want a number", name, fields[name])
		}
	}
	for _, name := range []string{"nonce", "range6", "address6", "xlat_range6", "range4", "address4"} {
		if _, ok := fields[name].(string); !ok {
			t.Errorf("%s is %T, want a string", name, fields[name])
		}
	}
	c := fields["concentrators"].([]any)[0].(map[string]any)
	if _, ok := c["id"].(json.Number); !ok {
		t.Errorf("concentrator id is %T, want a number", c["id"])
	}
	for _, name := range []string{"address4", "address6", "endpoint", "pubkey"} {
		if _, ok := c[name].(string); !ok {
			t.Errorf("concentrator %s is %T, want a string", name, c[name])
		}
	}
}

func TestMTU(t *testing.T) {
	for _, tc := range []struct {
		cap   int
		query string
		want  string
	}{
		{0, "", "1280"},               // no v6mtu: upstream's default 1280
		{0, "&v6mtu=", "1280"},        // empty counts as absent
		{0, "&v6mtu=1300", "1300"},    // below the cap: as the node says
		{0, "&v6mtu=1500", "1375"},    // default cap
		{0, "&v6mtu=65535", "1375"},   // largest accepted
		{1420, "&v6mtu=9000", "1420"}, // configured cap
		{1420, "&v6mtu=1280", "1280"},
	} {
		f := newFixture(t, ffmuc, Options{MTU: tc.cap})
		_, fields := okReply(t, f, f.get(t, nodeQuery(keyPlus, nonce, tc.query)))
		if got := fields["mtu"].(json.Number).String(); got != tc.want {
			t.Errorf("cap %d, %q: mtu %s, want %s", tc.cap, tc.query, got, tc.want)
		}
	}
}

func TestNonceEchoed(t *testing.T) {
	f := newFixture(t, ffmuc, Options{})
	for _, n := range []string{nonce, "ffffffffffffffffffffffffffffffff", "a", strings.Repeat("Z", 64), "A-._~z"} {
		_, fields := okReply(t, f, f.get(t, nodeQuery(keyPlus, n, "")))
		if fields["nonce"] != n {
			t.Errorf("nonce %q echoed as %v", n, fields["nonce"])
		}
	}
}

func TestSameKeySamePrefixes(t *testing.T) {
	f := newFixture(t, ffmuc, Options{})
	pick := func(key, n string) []any {
		_, fields := okReply(t, f, f.get(t, nodeQuery(key, n, "")))
		return []any{fields["id"], fields["range6"], fields["address6"], fields["xlat_range6"], fields["range4"], fields["address4"]}
	}
	first := pick(keyPlus, "1")
	other := pick(keyOther, "2")
	again := pick(keyPlus, "3")
	if !slices.Equal(first, again) {
		t.Errorf("second poll %v, first %v", again, first)
	}
	if first[1] == other[1] || first[0] == other[0] {
		t.Errorf("two keys share a prefix: %v %v", first, other)
	}
	if got := testutil.ToFloat64(f.h.metrics.allocations); got != 2 {
		t.Errorf("allocations %v, want 2 (two keys)", got)
	}
}

func TestRememberOnlyChanges(t *testing.T) {
	f := newFixture(t, ffmuc, Options{})
	f.gws.list = []Concentrator{gw04(), gw07()}
	okReply(t, f, f.get(t, nodeQuery(keyPlus, "1", "")))
	okReply(t, f, f.get(t, nodeQuery(keyPlus, "2", "")))
	f.gws.list = []Concentrator{gw07()}
	okReply(t, f, f.get(t, nodeQuery(keyPlus, "3", "")))
	okReply(t, f, f.get(t, nodeQuery(keyPlus, "4", "")))
	want := [][]string{nil, {"gw04", "gw07"}, {"gw04", "gw07"}, {"gw07"}}
	if len(f.gws.previous) != len(want) {
		t.Fatalf("asked %d times", len(f.gws.previous))
	}
	for i := range want {
		if len(want[i]) == 0 && len(f.gws.previous[i]) == 0 {
			continue
		}
		if !slices.Equal(f.gws.previous[i], want[i]) {
			t.Errorf("poll %d: previous %v, want %v", i+1, f.gws.previous[i], want[i])
		}
	}
}

func TestPlusInKey(t *testing.T) {
	f := newFixture(t, ffmuc, Options{})
	enc := strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D").Replace(keyPlus)
	var ids []any
	for _, q := range []string{
		"pubkey=" + strings.ReplaceAll(keyPlus, "+", "%2B"), // nodeconfig.sh
		"pubkey=" + keyPlus, // "+" not encoded
		"pubkey=" + enc,     // everything encoded
	} {
		_, fields := okReply(t, f, f.get(t, q+"&nonce=x"))
		ids = append(ids, fields["id"])
	}
	if ids[0] != ids[1] || ids[1] != ids[2] {
		t.Errorf("one key, three ids: %v", ids)
	}

	// Through a real server and client, raw query untouched.
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/config?pubkey=" + keyPlus + "&nonce=x&v6mtu=1500")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"id":`+fmt.Sprint(ids[0])+`,`) {
		t.Errorf("over HTTP: %d %s", resp.StatusCode, body)
	}
}

func TestBadRequests(t *testing.T) {
	f := newFixture(t, ffmuc, Options{})
	for _, tc := range []struct{ query, want string }{
		{"nonce=" + nonce, "pubkey: missing"},
		{"pubkey=&nonce=" + nonce, "pubkey: missing"},
		{"pubkey=abc&nonce=" + nonce, `pubkey: invalid public key "abc"`},
		{"pubkey=" + strings.ReplaceAll(keyPlus, "+", "%20") + "&nonce=x", "pubkey: invalid"},
		{"pubkey=" + keyOther + "%0A&nonce=x", "pubkey: invalid"},
		{"pubkey=%zz&nonce=x", "pubkey: bad escape"},
		{nodeQuery(keyPlus, "", ""), "nonce: missing"},
		{"pubkey=" + keyOther, "nonce: missing"},
		{nodeQuery(keyPlus, strings.Repeat("a", 65), ""), "nonce: invalid"},
		{nodeQuery(keyPlus, "a%20b", ""), "nonce: invalid"},
		{nodeQuery(keyPlus, "a%22b", ""), "nonce: invalid"},
		{nodeQuery(keyPlus, nonce, "&nonce=2"), "nonce: given more than once"},
		{nodeQuery(keyPlus, nonce, "&pubkey="+keyOther), "pubkey: given more than once"},
		{nodeQuery(keyPlus, nonce, "&v6mtu=abc"), `v6mtu: invalid "abc"`},
		{nodeQuery(keyPlus, nonce, "&v6mtu=1279"), "v6mtu: invalid"},
		{nodeQuery(keyPlus, nonce, "&v6mtu=65536"), "v6mtu: invalid"},
		{nodeQuery(keyPlus, nonce, "&v6mtu=-1"), "v6mtu: invalid"},
		{nodeQuery(keyPlus, nonce, "&v6mtu=1500&v6mtu=1500"), "v6mtu: given more than once"},
	} {
		w := f.get(t, tc.query)
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
			t.Errorf("%q: body %q: %v", tc.query, w.Body, err)
		}
		if w.Code != http.StatusBadRequest || !strings.HasPrefix(e.Error.Message, tc.want) {
			t.Errorf("%q: %d %q, want 400 %q", tc.query, w.Code, e.Error.Message, tc.want)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("%q: Content-Type %q", tc.query, ct)
		}
	}
	if got := testutil.ToFloat64(f.h.metrics.result(resultBadRequest)); got != 18 {
		t.Errorf("bad_request counted %v times, want 18", got)
	}
	if got := testutil.ToFloat64(f.h.metrics.allocations); got != 0 {
		t.Errorf("a bad request leased %v prefixes", got)
	}

	r := httptest.NewRequest(http.MethodPost, "/config?"+nodeQuery(keyPlus, nonce, ""), nil)
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET" {
		t.Errorf("POST: %d, Allow %q", w.Code, w.Header().Get("Allow"))
	}
}

func errorMessage(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var e struct {
		Error struct{ Message string } `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("body %q: %v", w.Body, err)
	}
	return e.Error.Message
}

func TestPoolExhausted(t *testing.T) {
	// A /62 holds two /63s; the first is reserved: room for one node.
	cfg := ffmuc
	cfg.Pool6 = netip.MustParsePrefix("2001:db8:ed0::/62")
	f := newFixture(t, cfg, Options{})
	okReply(t, f, f.get(t, nodeQuery(keyPlus, nonce, "")))
	w := f.get(t, nodeQuery(keyOther, nonce, ""))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(errorMessage(t, w), "pool exhausted") {
		t.Errorf("second key: %d %s", w.Code, w.Body)
	}
	// The node that holds a slot keeps being served.
	okReply(t, f, f.get(t, nodeQuery(keyPlus, nonce, "")))
	if got := testutil.ToFloat64(f.h.metrics.result(resultPoolExhausted)); got != 1 {
		t.Errorf("pool_exhausted %v, want 1", got)
	}
}

// brokenIPAM fails every call with err.
type brokenIPAM struct{ err error }

func (b brokenIPAM) Assign(context.Context, string) (ipam.Assignment, error) {
	return ipam.Assignment{}, b.err
}
func (b brokenIPAM) Remember(context.Context, string, []string) error { return b.err }

func TestStoreErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
		want string
	}{
		{fmt.Errorf("ipam: get: %w: etcd down", ipam.ErrUnavailable), http.StatusServiceUnavailable, "address store unavailable"},
		{errors.New("disk on fire"), http.StatusInternalServerError, "could not assign addresses"},
	} {
		f := newFixture(t, ffmuc, Options{IPAM: brokenIPAM{tc.err}})
		w := f.get(t, nodeQuery(keyPlus, nonce, ""))
		if w.Code != tc.code || !strings.Contains(errorMessage(t, w), tc.want) {
			t.Errorf("%v: %d %s, want %d %q", tc.err, w.Code, w.Body, tc.code, tc.want)
		}
	}
}

func TestConcentratorProblems(t *testing.T) {
	f := newFixture(t, ffmuc, Options{})
	f.gws.list, f.gws.err = nil, ErrNoConcentrator
	w := f.get(t, nodeQuery(keyPlus, nonce, ""))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(errorMessage(t, w), "no concentrator") {
		t.Errorf("none online: %d %s", w.Code, w.Body)
	}

	f.gws.err = errors.New("state broken")
	if w := f.get(t, nodeQuery(keyPlus, nonce, "")); w.Code != http.StatusInternalServerError {
		t.Errorf("source error: %d %s", w.Code, w.Body)
	}

	// A concentrator without address4 is never listed: the node's Lua
	// would fail on it.
	noV4 := gw04()
	noV4.Address4 = netip.Addr{}
	f.gws.list, f.gws.err = []Concentrator{noV4}, nil
	if w := f.get(t, nodeQuery(keyPlus, nonce, "")); w.Code != http.StatusServiceUnavailable {
		t.Errorf("only one without address4: %d %s", w.Code, w.Body)
	}
	f.gws.list = []Concentrator{noV4, gw07()}
	_, fields := okReply(t, f, f.get(t, nodeQuery(keyPlus, nonce, "")))
	cs := fields["concentrators"].([]any)
	if len(cs) != 1 || cs[0].(map[string]any)["id"].(json.Number).String() != "7" {
		t.Errorf("concentrators %v, want gw07 alone", cs)
	}
}

func TestConcentratorEndpoint(t *testing.T) {
	for host, want := range map[string]string{
		"gw.example.net":     "gw.example.net:1",
		"192.0.2.1":          "192.0.2.1:1",
		"2001:db8::1":        "[2001:db8::1]:1",
		"[2001:db8::1]":      "[2001:db8::1]:1",
		"fe80::1%eth0":       "[fe80::1]:1",
		"2001:DB8:0:0::0001": "[2001:db8::1]:1",
	} {
		g := gw04()
		g.Host, g.Port = host, 1
		c, err := concentratorJSON(g)
		if err != nil || c.Endpoint != want {
			t.Errorf("%q: %q %v, want %q", host, c.Endpoint, err, want)
		}
	}
	g := gw04()
	g.Address6 = netip.MustParseAddr("fe80::1%wg-welt")
	if c, _ := concentratorJSON(g); c.Address6 != "fe80::1" {
		t.Errorf("address6 %q keeps its zone", c.Address6)
	}
}

// TestSignifyVerifies checks the whole reply with OpenBSD's signify, split as
// a node splits it, and that a changed body is refused.
func TestSignifyVerifies(t *testing.T) {
	bin, err := exec.LookPath("signify-openbsd")
	if err != nil {
		testbus.Missing(t, "signify-openbsd not installed (Debian package signify-openbsd): %v", err)
		return
	}
	f := newFixture(t, ffmuc, Options{})
	w := f.get(t, nodeQuery(keyPlus, nonce, "&v6mtu=1500"))
	if w.Code != http.StatusOK {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	msg, sig := split(t, w.Body.String())
	verify := func(msg string) error {
		dir := t.TempDir()
		m, s := filepath.Join(dir, "config.json"), filepath.Join(dir, "config.json.sig")
		if err := os.WriteFile(m, []byte(msg), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s, []byte("untrusted comment: parker reply\n"+sig+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "-V", "-p", filepath.Join(f.dir, "parker.pub"), "-x", s, "-m", m).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	if err := verify(msg); err != nil {
		t.Errorf("signify refuses the reply: %v", err)
	}
	changed := strings.Replace(msg, `"mtu":1375`, `"mtu":1376`, 1)
	if changed == msg {
		t.Fatal("test did not change the body")
	}
	if err := verify(changed); err == nil {
		t.Error("signify accepts a changed body")
	}
	if _, err := f.key.Public().VerifyReply(w.Body.Bytes()); err != nil {
		t.Errorf("VerifyReply: %v", err)
	}
}

func TestMetricsRegistered(t *testing.T) {
	f := newFixture(t, ffmuc, Options{})
	okReply(t, f, f.get(t, nodeQuery(keyPlus, nonce, "")))
	f.get(t, "nonce=x")
	n, err := testutil.GatherAndCount(f.reg, "wgkex_broker_parker_requests_total", "wgkex_broker_parker_allocations_total")
	if err != nil || n != len(results)+1 {
		t.Errorf("%d series (%v), want %d", n, err, len(results)+1)
	}
	if got := testutil.ToFloat64(f.h.metrics.result(resultOK)); got != 1 {
		t.Errorf("ok %v", got)
	}
	// A second handler on the same registry is refused, not a panic.
	if _, err := New(Options{IPAM: f.alloc, Gateways: f.gws, Key: f.key, Registry: f.reg}); err == nil {
		t.Error("second registration accepted")
	}
}

func TestNewChecksOptions(t *testing.T) {
	f := newFixture(t, ffmuc, Options{})
	base := Options{IPAM: f.alloc, Gateways: f.gws, Key: f.key}
	for name, mod := range map[string]func(*Options){
		"no ipam":      func(o *Options) { o.IPAM = nil },
		"no gateways":  func(o *Options) { o.Gateways = nil },
		"no key":       func(o *Options) { o.Key = nil },
		"mtu 1000":     func(o *Options) { o.MTU = 1000 },
		"keepalive -1": func(o *Options) { o.Keepalive = -1 },
		"retry -1":     func(o *Options) { o.Retry = -1 },
	} {
		o := base
		mod(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New(base); err != nil {
		t.Errorf("valid options: %v", err)
	}
}

func TestPublish(t *testing.T) {
	var got []string
	fail := false
	f := newFixture(t, ffmuc, Options{Publish: func(_ context.Context, key string, asg ipam.Assignment, chosen []Concentrator) error {
		if fail {
			return errors.New("mqtt down")
		}
		for _, c := range chosen {
			got = append(got, key+" "+asg.Prefix6.String()+" "+c.Name)
		}
		return nil
	}})
	f.gws.list = []Concentrator{gw04(), gw07()}
	okReply(t, f, f.get(t, nodeQuery(keyPlus, nonce, "")))
	want := []string{keyPlus + " 2001:db8:ed0:2::/63 gw04", keyPlus + " 2001:db8:ed0:2::/63 gw07"}
	if !slices.Equal(got, want) {
		t.Errorf("published %q, want %q", got, want)
	}
	fail = true
	w := f.get(t, nodeQuery(keyPlus, nonce, ""))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(errorMessage(t, w), "could not be handed") {
		t.Errorf("publish failure: %d %s", w.Code, w.Body)
	}
}
