package cmd_test

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/freifunkMUC/wgkex/internal/eventually"
	"github.com/freifunkMUC/wgkex/internal/netns"
	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// haMosquitto is each server of the pair as README ("A highly available
// bus") configures it: the queue settings of the MQTT section, and no
// persistence, so that a server that comes back takes the retained state
// from its peer instead of bringing back stale state of its own.
const haMosquitto = "max_queued_messages 100000\nmax_inflight_messages 1000\npersistence false\n"

// haBridge is the bridge of README, configured on one server only: it
// connects to the other (at peer) and carries the wgkex topics both ways.
func haBridge(peer string) string {
	return "connection wgkex-pair\naddress " + peer + "\n" +
		"topic wireguard/# both 1\ntopic wireguard-worker/# both 1\ntopic wireguard-metrics/# both 1\n" +
		"bridge_protocol_version mqttv50\ntry_private true\ncleansession false\nrestart_timeout 1 5\n"
}

// haRequest is one key exchange of the load.
type haRequest struct {
	key            string
	sent, answered time.Time
	code           int // 0: no answer
}

// TestHABusCrash kills (SIGKILL) the first of two bridged Mosquittos under
// load: the connections to it end at once (the kernel resets them).
func TestHABusCrash(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	haFailover(t, func(t *testing.T, m1 *testbus.Server) func() { m1.Stop(); return nil })
}

// TestHABusHung stops (SIGSTOP) the first of two bridged Mosquittos under
// load, as a hung or unreachable host: nothing tells the clients, they
// notice by their keepalive, and a new connection to it is accepted by the
// kernel but never answered. Then it lets it go on (SIGCONT), as a paused
// VM or a healed partition: it finds the worker's old connection closed
// and publishes its will, which the bridge carries to the second server.
func TestHABusHung(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	haFailover(t, func(t *testing.T, m1 *testbus.Server) func() {
		out, err := exec.Command("ss", "-Hltnp", "sport = :"+m1.URL.Port()).CombinedOutput()
		mm := regexp.MustCompile(`pid=(\d+)`).FindSubmatch(out)
		if err != nil || mm == nil {
			t.Fatalf("pid of the first Mosquitto: %v %s", err, out)
		}
		pid, _ := strconv.Atoi(string(mm[1]))
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		// testbus kills it (SIGKILL works on a stopped process) at the end.
		return func() { syscall.Kill(pid, syscall.SIGCONT) }
	})
}

// haFailover runs broker, worker and dummy-iface against two bridged
// Mosquittos, both configured with the two servers, and makes the first
// fail while keys are posted through the broker's HTTP API: broker and
// worker move to the second server, and keys go on being installed. It
// reports how long the move took, the 503s in between, and the keys
// answered 200 that never reached the kernel. When fail returns a func,
// that brings the first server back, and the worker must stay online.
func haFailover(t *testing.T, fail func(*testing.T, *testbus.Server) (resume func())) {
	m1 := testbus.MosquittoWith(t, haMosquitto)
	m2 := testbus.MosquittoWith(t, haMosquitto+haBridge(m1.URL.Host))
	// What reaches the second server: worker state, and (counted at the
	// end) keys.
	watch := testbus.Subscribe(t, m2.URL, "wireguard-worker/#")
	keysOn2 := testbus.Subscribe(t, m2.URL, "wireguard/#")

	dir := t.TempDir()
	cfg := filepath.Join(dir, "wgkex.yaml")
	// The broker reads the list from the file, the worker from the
	// environment (comma-separated).
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers: {gw1: {weight: 1}}
mqtt:
  broker_url: [%q, %q]
broker:
  rate_limit: {per_client: 0, global: 0}
worker:
  state_dir: %s
`, m1.URL, m2.URL, filepath.Join(dir, "state"))), 0o644); err != nil {
		t.Fatal(err)
	}
	servers := "WGKEX_MQTT_BROKER_URL=" + m1.URL.String() + "," + m2.URL.String()

	start(t, nil, "dummy-iface", "--config", cfg, "--listen-port", "51998", "--log-level", "warn")
	eventually.True(t, waitTimeout, "wg-welt and vx-welt", func() bool {
		_, e1 := net.InterfaceByName("wg-welt")
		_, e2 := net.InterfaceByName("vx-welt")
		return e1 == nil && e2 == nil
	})
	worker := start(t, []string{servers}, "--log-format", "json", "worker", "--config", cfg, "--name", "gw1")
	broker := start(t, nil, "--log-format", "json", "broker", "--config", cfg)
	for _, p := range []*proc{worker, broker} {
		eventually.True(t, waitTimeout, "connected to the first server", func() bool { _, ok := connectedTo(p, m1.URL.String()); return ok })
	}
	// The worker's announcement reaches the second server through the bridge.
	watch.Wait(t, waitTimeout, func(m mqtt.Message) bool {
		return m.Topic == wgkex.StatusTopic("gw1") && string(m.Payload) == wgkex.StatusOnline
	})
	eventually.True(t, waitTimeout, "the broker to offer gw1", func() bool {
		code, _ := haExchange(randomKey())
		return code == http.StatusOK
	})

	// Load: 50 key exchanges a second, each from its own goroutine, so that
	// a request waiting for the MQTT server does not hold up the next.
	var (
		mu       sync.Mutex
		requests []*haRequest
		inflight sync.WaitGroup
	)
	stopLoad := make(chan struct{})
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopLoad:
				inflight.Wait()
				return
			case <-tick.C:
			}
			r := &haRequest{key: randomKey(), sent: time.Now()}
			mu.Lock()
			requests = append(requests, r)
			mu.Unlock()
			inflight.Add(1)
			go func() {
				defer inflight.Done()
				code, at := haExchange(r.key)
				mu.Lock()
				r.code, r.answered = code, at
				mu.Unlock()
			}()
		}
	}()
	answered200 := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, r := range requests {
			if r.code == http.StatusOK {
				n++
			}
		}
		return n
	}
	eventually.True(t, waitTimeout, "100 keys taken before the failure", func() bool { return answered200() >= 100 })

	// Forget the worker state seen so far: what arrives from now on was
	// published after the failure.
	for len(watch.C) > 0 {
		<-watch.C
	}
	killed := time.Now()
	resume := fail(t, m1)
	var brokerMoved, workerMoved time.Time
	eventually.True(t, 40*time.Second, "broker and worker on the second server", func() bool {
		var ok1, ok2 bool
		brokerMoved, ok1 = connectedTo(broker, m2.URL.String())
		workerMoved, ok2 = connectedTo(worker, m2.URL.String())
		return ok1 && ok2
	})
	// The worker announced itself again on the second server.
	watch.Wait(t, waitTimeout, func(m mqtt.Message) bool {
		return m.Topic == wgkex.StatusTopic("gw1") && string(m.Payload) == wgkex.StatusOnline && !m.Retained
	})
	moved := brokerMoved
	if workerMoved.After(moved) {
		moved = workerMoved
	}
	// Keep the load going for 3 s on the second server.
	after := answered200()
	eventually.True(t, waitTimeout, "150 keys taken after the failover", func() bool { return answered200() >= after+150 })
	close(stopLoad)
	<-loaded

	// Every key answered 200 should be installed; give the worker a
	// bounded time, then count.
	counter := newHACounter(t)
	var ok []string
	for _, r := range requests {
		if r.code == http.StatusOK {
			ok = append(ok, r.key)
		}
	}
	eventually.Within(10*time.Second, func() bool { return len(counter.missing(t, ok)) == 0 })
	missing := counter.missing(t, ok)

	codes := map[int]int{}
	var lost, lostAfterMove, lostLongBefore, late503Installed []string
	var first503, last503 time.Time
	var keys503 []string
	for _, r := range requests {
		codes[r.code]++
		switch {
		case r.code == http.StatusServiceUnavailable:
			keys503 = append(keys503, r.key)
			if first503.IsZero() || r.answered.Before(first503) {
				first503 = r.answered
			}
			if r.answered.After(last503) {
				last503 = r.answered
			}
		case r.code == http.StatusOK && missing[r.key]:
			lost = append(lost, fmt.Sprintf("sent %+.3fs answered %+.3fs", r.sent.Sub(killed).Seconds(), r.answered.Sub(killed).Seconds()))
			if r.sent.After(moved) {
				lostAfterMove = append(lostAfterMove, r.key)
			}
			if r.answered.Before(killed.Add(-time.Second)) {
				lostLongBefore = append(lostLongBefore, r.key)
			}
		}
	}
	notInstalled503 := counter.missing(t, keys503)
	for _, k := range keys503 {
		if !notInstalled503[k] {
			late503Installed = append(late503Installed, k)
		}
	}
	sort.Strings(lost)

	t.Logf("requests %d, by status %v", len(requests), codes)
	rec, _ := connection(worker, m2.URL.String())
	t.Logf("broker on the second server %.3f s after the failure, worker %.3f s (its session there: present %v)",
		brokerMoved.Sub(killed).Seconds(), workerMoved.Sub(killed).Seconds(), rec.SessionPresent)
	if len(keys503) > 0 {
		t.Logf("503: %d, answered from %+.3f s to %+.3f s after the failure; %d of them installed anyway (published before the failure, acknowledgement lost)",
			len(keys503), first503.Sub(killed).Seconds(), last503.Sub(killed).Seconds(), len(late503Installed))
	}
	t.Logf("answered 200 but not installed within 10 s: %d of %d %v", len(lost), len(ok), lost)

	if len(lostAfterMove) > 0 {
		t.Errorf("%d keys sent after broker and worker were on the second server are not installed", len(lostAfterMove))
	}
	if len(lostLongBefore) > 0 {
		t.Errorf("%d keys answered more than 1 s before the failure are not installed", len(lostLongBefore))
	}
	if codes[http.StatusOK] <= after {
		t.Error("no key taken after the failover")
	}
	for c := range codes {
		if c != http.StatusOK && c != http.StatusServiceUnavailable {
			t.Errorf("%d requests answered %d", codes[c], c)
		}
	}

	// The bridge neither loops nor duplicates: each key reached the second
	// server once (through the bridge before the failure, directly after it).
	seen := map[string]int{}
	drain := func() {
		for {
			select {
			case m := <-keysOn2.C:
				seen[string(m.Payload)]++
			default:
				return
			}
		}
	}
	eventually.Within(5*time.Second, func() bool {
		drain()
		for _, r := range requests {
			if r.code == http.StatusOK && r.answered.Before(killed.Add(-time.Second)) && seen[r.key] == 0 {
				return false
			}
		}
		return true
	})
	drain()
	dups, unbridged := 0, 0
	for _, r := range requests {
		if seen[r.key] > 1 {
			dups++
		}
		if r.code == http.StatusOK && r.answered.Before(killed.Add(-time.Second)) && seen[r.key] == 0 {
			unbridged++
		}
	}
	if dups > 0 || unbridged > 0 {
		t.Errorf("on the second server: %d keys arrived more than once, %d taken by the first never arrived", dups, unbridged)
	}

	if resume == nil {
		return
	}
	// The first server goes on: it publishes the worker's will ("0",
	// retained), and the bridge carries it over. The worker, subscribed to
	// its own status, announces itself again.
	resumed := time.Now()
	resume()
	var offline time.Time
	deadline := time.After(20 * time.Second)
	for offline.IsZero() {
		select {
		case m := <-watch.C:
			if m.Topic == wgkex.StatusTopic("gw1") && string(m.Payload) == wgkex.StatusOffline {
				offline = time.Now()
			}
		case <-deadline:
			t.Log("no will from the first server within 20 s of its return")
			return
		}
	}
	m := watch.Wait(t, 10*time.Second, func(m mqtt.Message) bool {
		return m.Topic == wgkex.StatusTopic("gw1") && string(m.Payload) == wgkex.StatusOnline
	})
	t.Logf("first server back: the worker's will (status 0) reached the second server after %.3f s, the worker's status 1 followed %.3f s later (retained: %v)",
		offline.Sub(resumed).Seconds(), time.Since(offline).Seconds(), m.Retained)
	eventually.True(t, waitTimeout, "the broker to offer gw1 again", func() bool {
		code, _ := haExchange(randomKey())
		return code == http.StatusOK
	})
}

// connectedTo reports when p logged (JSON) its first MQTT connection to
// server.
func connectedTo(p *proc, server string) (time.Time, bool) {
	rec, ok := connection(p, server)
	return rec.Time, ok
}

type connectedRecord struct {
	Time           time.Time `json:"time"`
	Msg            string    `json:"msg"`
	Server         string    `json:"server"`
	SessionPresent bool      `json:"session_present"`
}

func connection(p *proc, server string) (connectedRecord, bool) {
	lines := bufio.NewScanner(strings.NewReader(p.stderr.String()))
	for lines.Scan() {
		var rec connectedRecord
		if json.Unmarshal(lines.Bytes(), &rec) == nil && rec.Msg == "MQTT connected" && rec.Server == server {
			return rec, true
		}
	}
	return connectedRecord{}, false
}

var haClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// haExchange posts a v2 key exchange to the broker (127.0.0.1:5000, the
// default) and returns the status (0 when there was no answer) and when
// the answer came.
func haExchange(key string) (int, time.Time) {
	resp, err := haClient.Post("http://127.0.0.1:5000/api/v2/wg/key/exchange", "application/json",
		strings.NewReader(`{"domain":"ffmuc_welt","public_key":"`+key+`"}`))
	at := time.Now()
	if err != nil {
		return 0, at
	}
	resp.Body.Close()
	return resp.StatusCode, at
}

func randomKey() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// haCounter reads the gateway's tables.
type haCounter struct {
	k  *kernel.Conn
	wg *wgctrl.Client
}

func newHACounter(t *testing.T) *haCounter {
	t.Helper()
	k, wg := netns.Handles(t)
	return &haCounter{k: k, wg: wg}
}

// missing is the set of keys that lack their peer (with the right allowed
// IP), route or FDB entry on wg-welt/vx-welt.
func (c *haCounter) missing(t *testing.T, keys []string) map[string]bool {
	t.Helper()
	tables := readGateway(t, c.k, c.wg)
	out := map[string]bool{}
	for _, k := range keys {
		if peer, route, fdb := tables.lacks(k); peer || route || fdb {
			out[k] = true
		}
	}
	return out
}

// gatewayTables is what wg-welt/vx-welt hold: the peers with the right
// allowed IP, the routes via wg-welt, the FDB entries via wg-welt.
type gatewayTables struct {
	peers  map[string]bool
	routes map[netip.Prefix]bool
	fdb    map[netip.Addr]bool
}

func readGateway(t *testing.T, k *kernel.Conn, wg *wgctrl.Client) gatewayTables {
	t.Helper()
	dev, err := wg.Device("wg-welt")
	if err != nil {
		t.Fatal(err)
	}
	wgi, err := k.LinkIndex("wg-welt")
	if err != nil {
		t.Fatal(err)
	}
	vxi, err := k.LinkIndex("vx-welt")
	if err != nil {
		t.Fatal(err)
	}
	g := gatewayTables{peers: map[string]bool{}, routes: map[netip.Prefix]bool{}, fdb: map[netip.Addr]bool{}}
	for _, p := range dev.Peers {
		if len(p.AllowedIPs) == 1 && p.AllowedIPs[0].String() == wgkex.LinkLocal(p.PublicKey.String()).String()+"/128" {
			g.peers[p.PublicKey.String()] = true
		}
	}
	rs, err := k.Routes(wgi)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		g.routes[r] = true
	}
	es, err := k.FDB(vxi)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Via == wgi {
			g.fdb[e.Dst] = true
		}
	}
	return g
}

// lacks reports which of its peer, route and FDB entry key lacks.
func (g gatewayTables) lacks(key string) (peer, route, fdb bool) {
	ll := wgkex.LinkLocal(key)
	return !g.peers[key], !g.routes[netip.PrefixFrom(ll, 128)], !g.fdb[ll]
}
