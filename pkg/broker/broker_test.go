package broker

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/freifunkMUC/wgkex/internal/httpjson"
)

const testKey = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="

type published struct {
	topic, payload string
	qos            byte
	retain         bool
}

type fakePublisher struct {
	mu   sync.Mutex
	msgs []published
	err  error
}

func (f *fakePublisher) Publish(_ context.Context, topic string, payload []byte, qos byte, retain bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.msgs = append(f.msgs, published{topic, string(payload), qos, retain})
	return nil
}

func newTestBroker(pub Publisher) *Broker {
	return New(Options{
		Domains:   []string{"ffmuc_welt", "ffmuc_nord"},
		Publisher: pub,
		KeyQoS:    1,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

func do(t *testing.T, h http.Handler, method, path, ctype, body string) (*http.Response, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	var m map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
			t.Fatalf("%s %s: reply is not JSON: %v: %q", method, path, err, rec.Body.String())
		}
	}
	return resp, m
}

func errMsg(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	s, _ := e["message"].(string)
	return s
}

func body(domain, key string) string {
	b, _ := json.Marshal(map[string]string{"domain": domain, "public_key": key})
	return string(b)
}

func TestV1(t *testing.T) {
	pub := &fakePublisher{}
	b := newTestBroker(pub)
	for _, tc := range []struct{ method, ctype string }{
		{"POST", "application/json"},
		{"POST", "application/x-www-form-urlencoded"}, // Gluon's wget
		{"POST", ""},
		{"GET", "application/json"}, // requests.get(..., json=...)
	} {
		resp, m := do(t, b, tc.method, "/api/v1/wg/key/exchange", tc.ctype, body("ffmuc_welt", testKey))
		if resp.StatusCode != 200 || m["Message"] != "OK" {
			t.Errorf("%s %q: %d %v", tc.method, tc.ctype, resp.StatusCode, m)
		}
	}
	if len(pub.msgs) != 4 {
		t.Fatalf("published %d, want 4", len(pub.msgs))
	}
	if p := pub.msgs[0]; p != (published{"wireguard/ffmuc_welt/all", testKey, 1, false}) {
		t.Errorf("published %+v", p)
	}
}

// announceGW04 is gw04 coming online for ffmuc_welt with peers connected
// peers and its interface data, link address linkAddr.
func announceGW04(b *Broker, peers, linkAddr string) {
	b.HandleMessage("wireguard-worker/gw04/status", []byte("1"))
	b.HandleMessage("wireguard-metrics/ffmuc_welt/gw04/connected_peers", []byte(peers))
	b.HandleMessage("wireguard-worker/gw04/ffmuc_welt/data",
		[]byte(`{"ExternalAddress":"gw04.ext.ffmuc.net","Port":40011,"PublicKey":"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=","LinkAddress":"`+linkAddr+`"}`))
}

func TestV2(t *testing.T) {
	pub := &fakePublisher{}
	b := newTestBroker(pub)
	announceGW04(b, "12", "fe80::27c:16ff:fec0:6c74")

	resp, m := do(t, b, "POST", "/api/v2/wg/key/exchange", "application/x-www-form-urlencoded", body("ffmuc_welt", testKey))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %v", resp.StatusCode, m)
	}
	ep := m["Endpoint"].(map[string]any)
	want := map[string]any{
		"Address": "gw04.ext.ffmuc.net", "Port": "40011", "PublicKey": "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=",
		"LinkAddress": "fe80::27c:16ff:fec0:6c74",
	}
	for k, v := range want {
		if ep[k] != v {
			t.Errorf("Endpoint.%s = %v, want %v", k, ep[k], v)
		}
	}
	if ips := ep["AllowedIPs"].([]any); len(ips) != 1 || ips[0] != "fe80::27c:16ff:fec0:6c74" {
		t.Errorf("AllowedIPs = %v", ips)
	}
	// Exactly one top-level key: deployed Gluon nodes take a reply with
	// "Message": "OK" for a v1 reply and ignore its Endpoint.
	if len(m) != 1 {
		t.Errorf("v2 reply has top-level keys %v, want only Endpoint", keys(m))
	}
	if len(ep) != 5 {
		t.Errorf("Endpoint has keys %v, want Address, Port, AllowedIPs, PublicKey, LinkAddress", keys(ep))
	}
	if resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("Content-Type = %q", resp.Header.Get("Content-Type"))
	}
	if got := b.state.snapshot()[0].Peers["ffmuc_welt"]; got != 13 {
		t.Errorf("local peer count = %d, want 13", got)
	}
}

func TestV2Errors(t *testing.T) {
	pub := &fakePublisher{}
	b := newTestBroker(pub)
	resp, m := do(t, b, "POST", "/api/v2/wg/key/exchange", "", body("ffmuc_welt", testKey))
	if resp.StatusCode != 400 || errMsg(m) != "no gateway online for this domain, please check the domain value and try again later" {
		t.Errorf("no gateway: %d %v", resp.StatusCode, m)
	}
	b.HandleMessage("wireguard-worker/gw04/status", []byte("1"))
	b.HandleMessage("wireguard-metrics/ffmuc_welt/gw04/connected_peers", []byte("0"))
	resp, m = do(t, b, "POST", "/api/v2/wg/key/exchange", "", body("ffmuc_welt", testKey))
	if resp.StatusCode != 500 || errMsg(m) != "could not get gateway data" {
		t.Errorf("no data: %d %v", resp.StatusCode, m)
	}
	if len(pub.msgs) != 2 {
		t.Errorf("the key must be published even when v2 fails: %d publishes", len(pub.msgs))
	}
	b.HandleMessage("wireguard-worker/gw04/status", []byte("0"))
	if resp, _ = do(t, b, "POST", "/api/v2/wg/key/exchange", "", body("ffmuc_welt", testKey)); resp.StatusCode != 400 {
		t.Errorf("offline worker chosen: %d", resp.StatusCode)
	}
}

func TestBadRequests(t *testing.T) {
	pub := &fakePublisher{}
	b := newTestBroker(pub)
	for _, tc := range []struct {
		name, body, want string
		code             int
	}{
		{"bad JSON", `{"domain": "ffmuc_welt",`, "invalid JSON body", 400},
		{"form body", `domain=ffmuc_welt&public_key=x`, "invalid JSON body", 400},
		{"wrong types", `{"domain": 1, "public_key": []}`, "invalid JSON body", 400},
		{"empty", ``, "invalid JSON body", 400},
		{"bad key", body("ffmuc_welt", "not-a-key"), "invalid public key", 400},
		{"non-canonical key", body("ffmuc_welt", "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2h="), "invalid public key", 400},
		{"missing key", `{"domain":"ffmuc_welt"}`, `missing "public_key"`, 400},
		{"unknown domain", body("ffmuc_mars", testKey), `unknown domain "ffmuc_mars"`, 400},
		{"missing domain", `{"public_key":"` + testKey + `"}`, `missing "domain"`, 400},
		{"too large", `{"domain":"ffmuc_welt","public_key":"` + testKey + `","pad":"` + strings.Repeat("x", 5000) + `"}`, "request body over 4096 bytes", 413},
	} {
		for _, path := range []string{"/api/v1/wg/key/exchange", "/api/v2/wg/key/exchange"} {
			resp, m := do(t, b, "POST", path, "application/json", tc.body)
			if resp.StatusCode != tc.code || !strings.Contains(errMsg(m), tc.want) {
				t.Errorf("%s %s: %d %q, want %d %q", tc.name, path, resp.StatusCode, errMsg(m), tc.code, tc.want)
			}
		}
	}
	if len(pub.msgs) != 0 {
		t.Errorf("bad requests published %d keys", len(pub.msgs))
	}
	resp, m := do(t, b, "PUT", "/api/v1/wg/key/exchange", "", body("ffmuc_welt", testKey))
	if resp.StatusCode != 405 || errMsg(m) == "" || resp.Header.Get("Allow") == "" {
		t.Errorf("PUT: %d %v", resp.StatusCode, m)
	}
	resp, m = do(t, b, "GET", "/api/v3/nothing", "", "")
	if resp.StatusCode != 404 || errMsg(m) == "" {
		t.Errorf("404: %d %v", resp.StatusCode, m)
	}
}

func TestPublishFailure(t *testing.T) {
	b := newTestBroker(&fakePublisher{err: errors.New("not connected")})
	for _, path := range []string{"/api/v1/wg/key/exchange", "/api/v2/wg/key/exchange"} {
		resp, m := do(t, b, "POST", path, "", body("ffmuc_welt", testKey))
		if resp.StatusCode != 503 || !strings.Contains(errMsg(m), "MQTT") {
			t.Errorf("%s: %d %v", path, resp.StatusCode, m)
		}
	}
}

func TestIndex(t *testing.T) {
	b := newTestBroker(&fakePublisher{})
	b.HandleMessage("wireguard-worker/gw<script>/status", []byte("1"))
	req := httptest.NewRequest("GET", "/", nil)
	rec := httptest.NewRecorder()
	b.ServeHTTP(rec, req)
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	page := rec.Body.String()
	if !strings.Contains(page, "wgkex") || !strings.Contains(page, "ffmuc_nord") || strings.Contains(page, "<script>") {
		t.Errorf("page: %s", page)
	}
}

func TestHandleMessageDropsBadInput(t *testing.T) {
	b := newTestBroker(&fakePublisher{})
	b.HandleMessage("wireguard-worker/gw/status", []byte("1"))
	b.HandleMessage("wireguard-metrics/ffmuc_welt/gw/connected_peers", []byte("5"))
	for _, m := range []struct{ topic, payload string }{
		{"wireguard-metrics/ffmuc_welt/gw/connected_peers", "lots"},
		{"wireguard-metrics/ffmuc_mars/gw/connected_peers", "1"},
		{"wireguard-worker/gw/ffmuc_welt/data", "{not json"},
		{"wireguard-worker/gw/ffmuc_welt/data", `{"ExternalAddress":"x","Port":99999}`},
		{"wireguard-worker/gw/status", "online"},
		{"garbage", "1"},
		{"wireguard-metrics/ffmuc_welt/gw/other_metric", "7"},
	} {
		b.HandleMessage(m.topic, []byte(m.payload))
	}
	snap := b.state.snapshot()
	if len(snap) != 1 || !snap[0].Online || snap[0].Peers["ffmuc_welt"] != 5 || len(snap[0].Data) != 0 || len(snap[0].Peers) != 1 {
		t.Fatalf("state changed by bad input: %+v", snap)
	}
	// An empty retained payload clears; -1 removes.
	b.HandleMessage("wireguard-metrics/ffmuc_welt/gw/connected_peers", []byte("-1"))
	if _, ok := b.state.snapshot()[0].Peers["ffmuc_welt"]; ok {
		t.Error("-1 did not remove the domain")
	}
	b.HandleMessage("wireguard-worker/gw/status", nil)
	if b.state.snapshot()[0].Online {
		t.Error("cleared status still online")
	}
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(body("ffmuc_welt", testKey)))
	f.Add([]byte(`{"domain":"ffmuc_welt","public_key":null}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"domain":"\u0000","public_key":"` + testKey + `"}`))
	known := func(d string) bool { return d == "ffmuc_welt" }
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := decodeRequest(in, known)
		if err == nil && (req.Domain != "ffmuc_welt" || len(req.PublicKey) != 44) {
			t.Fatalf("accepted %q as %+v", in, req)
		}
	})
}

func FuzzHandleMessage(f *testing.F) {
	f.Add("wireguard-worker/gw/ffmuc_welt/data", []byte(`{"ExternalAddress":"a","Port":1,"PublicKey":"`+testKey+`","LinkAddress":"fe80::1"}`))
	f.Add("wireguard-metrics/ffmuc_welt/gw/connected_peers", []byte("3"))
	f.Add("wireguard-worker/gw/status", []byte("1"))
	b := newTestBroker(&fakePublisher{})
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		b.HandleMessage(topic, payload) // must not panic
		for _, w := range b.state.snapshot() {
			for d, n := range w.Peers {
				if n < 0 || d != "ffmuc_welt" && d != "ffmuc_nord" {
					t.Fatalf("bad state from %q %q: %v", topic, payload, w.Peers)
				}
			}
		}
	})
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// A link address published with a prefix length (the Python worker's
// validator allows it) still gives nodes a bare AllowedIPs[0]: they append
// /128 to it and use it as their VXLAN remote.
func TestV2LinkAddressWithPrefix(t *testing.T) {
	b := newTestBroker(&fakePublisher{})
	announceGW04(b, "0", "fe80::27c:16ff:fec0:6c74/64")
	resp, m := do(t, b, "POST", "/api/v2/wg/key/exchange", "application/json", body("ffmuc_welt", testKey))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %v", resp.StatusCode, m)
	}
	ep := m["Endpoint"].(map[string]any)
	if ips := ep["AllowedIPs"].([]any); len(ips) != 1 || ips[0] != "fe80::27c:16ff:fec0:6c74" || ep["LinkAddress"] != "fe80::27c:16ff:fec0:6c74" {
		t.Errorf("AllowedIPs %v LinkAddress %v, want the bare address", ips, ep["LinkAddress"])
	}
}

// Blocked and not allowed keys get 403 and are never published.
func TestBlockAndAllowLists(t *testing.T) {
	const other = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	pub := &fakePublisher{}
	b := New(Options{
		Domains:   []string{"ffmuc_welt", "ffmuc_nord"},
		Publisher: pub, KeyQoS: 1,
		Blocked: func(k string) bool { return k == other },
		Allowed: func(d, k string) bool { return d != "ffmuc_nord" || k == other },
		Logger:  slog.New(slog.DiscardHandler),
	})
	for _, tc := range []struct {
		api, domain, key string
		code             int
		msg              string
	}{
		{"v1", "ffmuc_welt", other, 403, "key is blocked"},
		{"v2", "ffmuc_welt", other, 403, "key is blocked"},
		{"v1", "ffmuc_nord", testKey, 403, `key is not allowed in domain "ffmuc_nord"`},
		{"v1", "ffmuc_welt", testKey, 200, ""},
	} {
		resp, m := do(t, b, "POST", "/api/"+tc.api+"/wg/key/exchange", "application/json", body(tc.domain, tc.key))
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s %s: status %d, want %d (%v)", tc.api, tc.domain, tc.key, resp.StatusCode, tc.code, m)
		}
		if tc.msg != "" {
			if e, _ := m["error"].(map[string]any); e == nil || e["message"] != tc.msg {
				t.Errorf("%s %s: body %v, want message %q", tc.api, tc.domain, m, tc.msg)
			}
		}
	}
	if len(pub.msgs) != 1 || pub.msgs[0].payload != testKey {
		t.Errorf("published %+v, want only the allowed key", pub.msgs)
	}
}

// Limit wraps the key exchange endpoints and nothing else.
func TestLimitWrapsKeyExchangeOnly(t *testing.T) {
	b := New(Options{
		Domains: []string{"ffmuc_welt"}, Publisher: &fakePublisher{}, KeyQoS: 1,
		Limit: func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				httpjson.Error(w, http.StatusTooManyRequests, "slow down")
			})
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	for path, want := range map[string]int{"/api/v1/wg/key/exchange": 429, "/api/v2/wg/key/exchange": 429, "/healthz": 200, "/api/v1/status": 200} {
		resp, _ := do(t, b, "POST", path, "application/json", body("ffmuc_welt", testKey))
		if path == "/healthz" || path == "/api/v1/status" {
			resp, _ = do(t, b, "GET", path, "", "")
		}
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}
