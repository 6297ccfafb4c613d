package ratelimit

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/freifunkMUC/wgkex/internal/fakeclock"
)

func newClock() *fakeclock.Clock { return fakeclock.New(time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)) }

func mustNew(t testing.TB, cfg Config) *Limiter {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// okHandler counts the requests that reach it.
type okHandler struct {
	mu   sync.Mutex
	seen map[string]int // by RemoteAddr
}

func (h *okHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	if h.seen == nil {
		h.seen = map[string]int{}
	}
	h.seen[r.RemoteAddr]++
	h.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func request(remote string, header ...string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/api/v2/wg/key/exchange", strings.NewReader(`{}`))
	r.RemoteAddr = remote
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	return r
}

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// refusal checks a 429 answer and returns its Retry-After and message.
func refusal(t *testing.T, w *httptest.ResponseRecorder) (int, string) {
	t.Helper()
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429; body %q", w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var body struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	dec := json.NewDecoder(w.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("body not the error shape: %v", err)
	}
	var secs int
	if _, err := fmt.Sscan(w.Header().Get("Retry-After"), &secs); err != nil || secs < 1 {
		t.Fatalf("Retry-After %q, want whole seconds >= 1", w.Header().Get("Retry-After"))
	}
	if want := fmt.Sprintf("retry after %d s", secs); !strings.HasSuffix(body.Error.Message, want) {
		t.Errorf("message %q does not end in %q", body.Error.Message, want)
	}
	return secs, body.Error.Message
}

func TestBurstFromOneAddressWhileAnotherIsServed(t *testing.T) {
	c := newClock()
	l := mustNew(t, Config{PerClient: 0.1, PerClientBurst: 3, Global: -1, Now: c.Now})
	next := &okHandler{}
	h := l.Wrap(next)

	for i := range 3 {
		if w := serve(h, request("192.0.2.1:1000")); w.Code != http.StatusOK {
			t.Fatalf("request %d within the burst: %d", i, w.Code)
		}
	}
	secs, msg := refusal(t, serve(h, request("192.0.2.1:1001")))
	if secs != 10 { // one token per 10 s, bucket empty
		t.Errorf("Retry-After %d, want 10", secs)
	}
	if msg != "too many requests from your address, retry after 10 s" {
		t.Errorf("message %q", msg)
	}
	// Another address has its own bucket.
	for i := range 3 {
		if w := serve(h, request("192.0.2.2:1000")); w.Code != http.StatusOK {
			t.Fatalf("other address, request %d: %d", i, w.Code)
		}
	}
	if next.seen["192.0.2.1:1000"] != 3 || next.seen["192.0.2.1:1001"] != 0 {
		t.Errorf("handler saw %v: the refused request got through", next.seen)
	}

	c.Advance(4 * time.Second)
	if secs, _ := refusal(t, serve(h, request("192.0.2.1:1000"))); secs != 6 {
		t.Errorf("after 4 s: Retry-After %d, want 6", secs)
	}
	// Refused requests took nothing: the token is there after 10 s.
	c.Advance(6 * time.Second)
	if w := serve(h, request("192.0.2.1:1000")); w.Code != http.StatusOK {
		t.Fatalf("after the refill: %d", w.Code)
	}
	if st := l.stats(); st.RefusedClient != 2 || st.RefusedGlobal != 0 || st.Clients != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestRetryAfterRoundsUpToWholeSeconds(t *testing.T) {
	for _, tc := range []struct {
		wait time.Duration
		want int
	}{
		{0, 1}, {time.Nanosecond, 1}, {10 * time.Millisecond, 1}, {time.Second, 1},
		{time.Second + time.Nanosecond, 2}, {59*time.Second + 500*time.Millisecond, 60},
	} {
		if got := retryAfter(tc.wait); got != tc.want {
			t.Errorf("retryAfter(%v) = %d, want %d", tc.wait, got, tc.want)
		}
	}
	// A fast bucket that is only just empty still says at least 1.
	c := newClock()
	l := mustNew(t, Config{PerClient: 100, PerClientBurst: 1, Global: -1, Now: c.Now})
	h := l.Wrap(&okHandler{})
	serve(h, request("192.0.2.1:1"))
	if secs, _ := refusal(t, serve(h, request("192.0.2.1:1"))); secs != 1 {
		t.Errorf("Retry-After %d, want 1", secs)
	}
}

func TestIPv6ClientsArePerSlash64(t *testing.T) {
	c := newClock()
	l := mustNew(t, Config{PerClient: 1, PerClientBurst: 2, Global: -1, Now: c.Now})
	h := l.Wrap(&okHandler{})
	// Two addresses of one /64 share the bucket.
	for _, a := range []string{"[2001:db8:1:2::1]:80", "[2001:db8:1:2:ffff:ffff:ffff:ffff]:80"} {
		if w := serve(h, request(a)); w.Code != http.StatusOK {
			t.Fatalf("%s: %d", a, w.Code)
		}
	}
	refusal(t, serve(h, request("[2001:db8:1:2:abcd::7%eth0]:80")))
	// The neighbouring /64 is another client.
	if w := serve(h, request("[2001:db8:1:3::1]:80")); w.Code != http.StatusOK {
		t.Errorf("other /64: %d", w.Code)
	}
	// IPv4 is per address, also when it arrives mapped on a dual-stack socket.
	serve(h, request("198.51.100.7:1"))
	serve(h, request("[::ffff:198.51.100.7]:2"))
	refusal(t, serve(h, request("198.51.100.7:3")))
	if w := serve(h, request("198.51.100.8:1")); w.Code != http.StatusOK {
		t.Errorf("neighbouring IPv4 address: %d", w.Code)
	}
	// Link-local addresses share fe80::/64 on every link: one client each.
	serve(h, request("[fe80::1%wg0]:1"))
	serve(h, request("[fe80::1%wg1]:1"))
	refusal(t, serve(h, request("[fe80::1%wg2]:1")))
	if w := serve(h, request("[fe80::2%wg0]:1")); w.Code != http.StatusOK {
		t.Errorf("another link-local address: %d", w.Code)
	}
	if n := l.stats().Clients; n != 6 {
		t.Errorf("%d clients, want 6 (two /64s, two IPv4 and two link-local addresses)", n)
	}
}

// The wait reported is the delay a reservation on the same bucket gets.
func TestWaitIsTheReservationDelay(t *testing.T) {
	c := newClock()
	const r, burst = rate.Limit(0.3), 2
	ours, twin := rate.NewLimiter(r, burst), rate.NewLimiter(r, burst)
	for _, step := range []time.Duration{0, 0, 0, 700 * time.Millisecond, 2 * time.Second, 0, 5 * time.Second} {
		c.Advance(step)
		now := c.Now()
		if ours.AllowN(now, 1) {
			twin.AllowN(now, 1)
			continue
		}
		res := twin.ReserveN(now, 1)
		want := res.DelayFrom(now)
		res.CancelAt(now)
		if got := waitFor(ours.TokensAt(now), r); (got - want).Abs() > time.Microsecond {
			t.Errorf("after %v: wait %v, reservation delay %v", step, got, want)
		}
	}
}

func TestKeysDoNotCollide(t *testing.T) {
	// One address from each of several /64s (IPv4-compatible, NAT64,
	// all-ones) beside IPv4 addresses whose mapped form is close to them.
	addrs := []string{"0.0.0.0", "1.2.3.4", "255.255.255.255", "::102:304", "0:0:0:ffff::",
		"64:ff9b::102:304", "ffff:ffff:ffff:ffff::1"}
	seen := map[clientKey]string{unknownKey: "unknown"}
	for _, s := range addrs {
		k := keyOf(netip.MustParseAddr(s))
		if prev, dup := seen[k]; dup {
			t.Errorf("%s has the key of %s", s, prev)
		}
		seen[k] = s
	}
	if keyOf(netip.Addr{}) != unknownKey {
		t.Error("the invalid address is not the unknown client")
	}
}

func TestGlobalLimit(t *testing.T) {
	c := newClock()
	// Clients refill slowly (one token per 100 s), so a token taken by
	// mistake would show.
	l := mustNew(t, Config{PerClient: 0.01, PerClientBurst: 2, Global: 0.5, GlobalBurst: 3, Now: c.Now})
	h := l.Wrap(&okHandler{})
	for i := range 3 {
		if w := serve(h, request(fmt.Sprintf("192.0.2.%d:1", i+1))); w.Code != http.StatusOK {
			t.Fatalf("client %d: %d", i, w.Code)
		}
	}
	secs, msg := refusal(t, serve(h, request("192.0.2.9:1")))
	if secs != 2 || msg != "the broker is busy (too many requests from all clients), retry after 2 s" {
		t.Errorf("global refusal: %d s, %q", secs, msg)
	}
	// The global refusal cost 192.0.2.9 nothing: both of its tokens pass
	// once the global bucket has refilled.
	for i := range 2 {
		c.Advance(2 * time.Second)
		if w := serve(h, request("192.0.2.9:1")); w.Code != http.StatusOK {
			t.Fatalf("token %d of 192.0.2.9 after a global refusal: %d", i, w.Code)
		}
	}
	// A client over its own limit does not drain the global bucket.
	c.Advance(6 * time.Second) // global full again
	for range 10 {
		if w := serve(h, request("192.0.2.9:1")); w.Code != http.StatusTooManyRequests {
			t.Fatalf("192.0.2.9 over its limit: %d", w.Code)
		}
	}
	for i := range 3 {
		if w := serve(h, request(fmt.Sprintf("192.0.2.%d:1", 20+i))); w.Code != http.StatusOK {
			t.Fatalf("one client's refused requests drained the global bucket (request %d: %d)", i, w.Code)
		}
	}
	if st := l.stats(); st.RefusedGlobal != 1 || st.RefusedClient != 10 {
		t.Errorf("stats %+v, want 1 global and 10 client refusals", st)
	}
}

func TestOffAndDefaults(t *testing.T) {
	l := mustNew(t, Config{PerClient: -1, Global: -1})
	next := &okHandler{}
	if h := l.Wrap(next); h != http.Handler(next) {
		t.Error("with both buckets off Wrap should return next itself")
	}
	d := mustNew(t, Config{})
	if d.clients == nil || d.clients.burst != defaultPerClientBurst || d.perClient != defaultPerClient {
		t.Errorf("per-client defaults not applied")
	}
	if d.global == nil || d.global.Burst() != defaultGlobalBurst || float64(d.global.Limit()) != defaultGlobal {
		t.Errorf("global defaults not applied")
	}
	if n := len(d.clients.shards) * d.clients.shards[0].max; n > defaultMaxClients || n < defaultMaxClients*99/100 {
		t.Errorf("%d entries in all shards, want about %d", n, defaultMaxClients)
	}
	for _, bad := range []Config{
		{PerClientBurst: -1}, {GlobalBurst: -5}, {MaxClients: -1},
		{TrustedProxies: []netip.Prefix{{}}},
	} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
}

// TestConcurrent hammers a few clients from many goroutines with the clock
// stopped: each client gets exactly its burst, all together no more than the
// global burst. Run with -race.
func TestConcurrent(t *testing.T) {
	const clients, perClient, goroutines, each = 8, 50, 32, 40 // 160 requests per client
	for _, global := range []int{-1, 300} {
		t.Run(fmt.Sprintf("global burst %d", global), func(t *testing.T) {
			c := newClock()
			l := mustNew(t, Config{PerClient: 1, PerClientBurst: perClient, Global: float64(global), GlobalBurst: global, Now: c.Now})
			next := &okHandler{}
			h := l.Wrap(next)
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						serve(h, request(fmt.Sprintf("[2001:db8:%x::%x]:1", (g+i)%clients, g)))
					}
				}()
			}
			wg.Wait()
			total := 0
			perPrefix := map[string]int{}
			for remote, n := range next.seen {
				total += n
				perPrefix[remote[:strings.Index(remote, "::")]] += n
			}
			for p, n := range perPrefix {
				if n > perClient || global < 0 && n != perClient {
					t.Errorf("%s: %d passed, burst %d", p, n, perClient)
				}
			}
			if global > 0 && total != global {
				t.Errorf("%d requests passed, want exactly the global burst %d", total, global)
			}
			st := l.stats()
			if st.RefusedClient+st.RefusedGlobal+uint64(total) != goroutines*each {
				t.Errorf("stats %+v do not add up to %d requests", st, goroutines*each)
			}
		})
	}
}

// Over a real TCP connection: RemoteAddr as net/http fills it in, and the
// 429 as a client receives it.
func TestOverHTTP(t *testing.T) {
	c := newClock()
	l := mustNew(t, Config{PerClient: 1, PerClientBurst: 1, Global: -1, Now: c.Now})
	srv := httptest.NewServer(l.Wrap(&okHandler{}))
	defer srv.Close()
	post := func() *http.Response {
		t.Helper()
		resp, err := http.Post(srv.URL+"/api/v2/wg/key/exchange", "application/x-www-form-urlencoded",
			strings.NewReader(`{"domain": "ffmuc_welt","public_key": "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := post(); resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	resp := post()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("second request: %d, Retry-After %q, Content-Type %q", resp.StatusCode,
			resp.Header.Get("Retry-After"), resp.Header.Get("Content-Type"))
	}
	if n := l.stats().Clients; n != 1 {
		t.Errorf("%d clients for two connections from one address", n)
	}
}

func TestCollector(t *testing.T) {
	now := time.Unix(1000, 0)
	l, err := New(Config{PerClient: 1, PerClientBurst: 1, Global: -1, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	h := l.Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	for range 3 {
		r := httptest.NewRequest("POST", "/", nil)
		r.RemoteAddr = "192.0.2.1:1234"
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(l.Collector())
	n, err := testutil.GatherAndCount(reg, "wgkex_broker_rate_limited_total", "wgkex_broker_rate_limit_clients")
	if err != nil || n != 3 {
		t.Fatalf("series %d, %v", n, err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP wgkex_broker_rate_limited_total Requests refused with 429, by the bucket that refused them.
# TYPE wgkex_broker_rate_limited_total counter
wgkex_broker_rate_limited_total{limit="client"} 2
wgkex_broker_rate_limited_total{limit="global"} 0
`), "wgkex_broker_rate_limited_total"); err != nil {
		t.Error(err)
	}
}
