package cmd_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/internal/eventually"
	"github.com/freifunkMUC/wgkex/internal/netns"
	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// The fault tests run the real binaries in a network namespace against a
// real Mosquitto (with persistence and the settings README asks for),
// break the worker at awkward moments and count, in the kernel, the keys
// that never became peer, route and FDB entry. They fail on a worker that
// acknowledges keys before they are installed.

// recommendedMosquitto are the Mosquitto settings of README (MQTT).
const recommendedMosquitto = "max_queued_messages 100000\nmax_inflight_messages 1000\n"

const faultDomain = "ffmuc_welt"

// faultBed is a gateway's namespace: Mosquitto, the config, the kernel.
type faultBed struct {
	bus *testbus.Server
	cfg string
	env []string
	k   *kernel.Conn
	wg  *wgctrl.Client
}

func newFaultBed(t *testing.T) *faultBed {
	t.Helper()
	// Mosquitto writes its persistence file as its own user.
	persist, err := os.MkdirTemp("", "wgkex-mosquitto")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(persist) })
	os.Chmod(persist, 0o777)
	bus := testbus.MosquittoWith(t, recommendedMosquitto+"persistence true\npersistence_location "+persist+"/\n")
	k, wg := netns.Handles(t)
	return &faultBed{bus: bus, cfg: filepath.Join("..", "testdata", "minimal.yaml"), k: k, wg: wg,
		env: []string{"WGKEX_MQTT_BROKER_URL=" + bus.URL.Hostname(), "WGKEX_MQTT_BROKER_PORT=" + bus.URL.Port()}}
}

// gateway starts wgkex dummy-iface and waits for wg-welt and vx-welt.
func (b *faultBed) gateway(t *testing.T) *proc {
	t.Helper()
	p := start(t, nil, "dummy-iface", "--config", b.cfg, "--listen-port", "51999", "--log-level", "warn")
	eventually.True(t, waitTimeout, "wg-welt and vx-welt", func() bool {
		_, e1 := net.InterfaceByName("wg-welt")
		_, e2 := net.InterfaceByName("vx-welt")
		_, e3 := b.wg.Device("wg-welt")
		return e1 == nil && e2 == nil && e3 == nil
	})
	return p
}

// stopGateway removes the interfaces (and with them every entry).
func stopGateway(t *testing.T, p *proc) {
	t.Helper()
	if err := p.signal(t, syscall.SIGTERM); err != nil {
		t.Errorf("dummy-iface exit: %v\n%s", err, p.stderr)
	}
}

func (b *faultBed) worker(t *testing.T, name, stateDir string) *proc {
	t.Helper()
	p := start(t, append(b.env, "WGKEX_WORKER_STATE_DIR="+stateDir), "worker", "--config", b.cfg, "--name", name)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker %s:\n%s", name, p.stderr)
		}
	})
	return p
}

// stop signals p and waits for it to exit. A race-built worker installs
// keys several times slower than a normal build, and SIGTERM installs the
// queued ones first (for at most 10 s), so this waits longer than
// proc.signal.
func stop(t *testing.T, p *proc, sig syscall.Signal) error {
	t.Helper()
	return p.signalWithin(t, sig, 40*time.Second)
}

// faultKeys are n distinct valid keys, different for each tag.
func faultKeys(tag string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = wgtypes.Key(sha256.Sum256([]byte(fmt.Sprintf("%s-%d", tag, i)))).String()
	}
	return keys
}

// routes counts the worker's routes on wg-welt: cheaper to read than the
// peers of a userspace device, and added right after them.
func (b *faultBed) routes() int {
	wgi, err := b.k.LinkIndex("wg-welt")
	if err != nil {
		return -1
	}
	rs, err := b.k.Routes(wgi)
	if err != nil {
		return -1
	}
	return len(rs)
}

// entries reports whether key has its route and FDB entry, which the
// worker adds after the peer.
func (b *faultBed) entries(key string) bool {
	wgi, err1 := b.k.LinkIndex("wg-welt")
	vxi, err2 := b.k.LinkIndex("vx-welt")
	if err1 != nil || err2 != nil {
		return false
	}
	ll := wgkex.LinkLocal(key)
	rs, _ := b.k.Routes(wgi)
	es, _ := b.k.FDB(vxi)
	route, fdb := false, false
	for _, r := range rs {
		route = route || r == netip.PrefixFrom(ll, 128)
	}
	for _, e := range es {
		fdb = fdb || (e.Dst == ll && e.Via == wgi)
	}
	return route && fdb
}

// missing counts the keys lacking their peer (with the right allowed IP),
// route or FDB entry.
func (b *faultBed) missing(t *testing.T, keys []string) (peer, route, fdb int) {
	t.Helper()
	tables := readGateway(t, b.k, b.wg)
	for _, k := range keys {
		p, r, f := tables.lacks(k)
		peer, route, fdb = peer+oneIf(p), route+oneIf(r), fdb+oneIf(f)
	}
	return peer, route, fdb
}

// publishing is a burst on its way.
type publishing struct {
	early chan struct{} // closed once the server acknowledged earlyMark keys
	done  chan struct{} // closed once it acknowledged every key
}

const earlyMark = 1000

// burst publishes keys with QoS 1 from 16 goroutines, as a broker under
// load does.
func (b *faultBed) burst(t *testing.T, keys []string) *publishing {
	t.Helper()
	pub := testbus.Connect(t, mqtt.Options{Server: b.bus.URL, ClientID: fmt.Sprintf("fault-pub-%d", time.Now().UnixNano()), Keepalive: 30 * time.Second})
	p := &publishing{early: make(chan struct{}), done: make(chan struct{})}
	var next, acked atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(len(keys)); i = next.Add(1) - 1 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := pub.Publish(ctx, wgkex.KeyTopic(faultDomain), []byte(keys[i]), 1, false)
				cancel()
				if err != nil {
					t.Errorf("publish key %d: %v", i, err)
					return
				}
				if acked.Add(1) == earlyMark {
					close(p.early)
				}
			}
		}()
	}
	go func() { wg.Wait(); close(p.done) }()
	return p
}

// await waits for ch, at most a minute.
func await(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s: not within 60 s", what)
	}
}

// settle publishes one more key and waits until it is installed. The MQTT
// server delivers a session's messages in order and the worker installs
// them in order, so every key the server still had is installed by then;
// keys still missing were lost.
func (b *faultBed) settle(t *testing.T, w *proc, tag string) {
	t.Helper()
	sentinel := faultKeys(tag+"-sentinel", 1)[0]
	testbus.Publish(t, b.bus.URL, wgkex.KeyTopic(faultDomain), sentinel, 1, false)
	if !eventually.Within(60*time.Second, func() bool { return b.entries(sentinel) }) {
		t.Fatalf("the key published last was not installed within 60 s")
	}
}

// TestFaultWorkerBurst kills (SIGKILL) or stops (SIGTERM) the worker at
// several points of a 5,000-key burst, starts it again, and counts the keys
// that never made it into the kernel: there must be none. SIGTERM must exit
// 0 after announcing connected_peers -1 and status 0.
func TestFaultWorkerBurst(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	const burst = 5000
	b := newFaultBed(t)
	points := []struct {
		name string
		// wait returns when the worker is to be stopped.
		wait func(t *testing.T, p *publishing)
	}{
		// Early in the burst: most keys are still to come.
		{fmt.Sprintf("%d keys published", earlyMark), func(t *testing.T, p *publishing) { await(t, p.early, "early keys published") }},
		{"2500 keys installed", func(t *testing.T, _ *publishing) {
			eventually.True(t, 60*time.Second, "2500 keys", func() bool { return b.routes() >= 2500 })
		}},
		{"last key published", func(t *testing.T, p *publishing) { await(t, p.done, "burst published") }},
	}
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		for i, point := range points {
			t.Run(fmt.Sprintf("%v after %s", sig, point.name), func(t *testing.T) {
				name := fmt.Sprintf("gw-fault-%d-%d", sig, i)
				tag := t.Name()
				t0 := time.Now()
				phase := func(what string) { t.Logf("%6.2fs %s", time.Since(t0).Seconds(), what) }
				gw := b.gateway(t)
				defer stopGateway(t, gw)
				sub := testbus.Subscribe(t, b.bus.URL, wgkex.StatusTopic(name), wgkex.ConnectedPeersTopic(faultDomain, name))
				stateDir := t.TempDir()
				w := b.worker(t, name, stateDir)
				sub.Wait(t, waitTimeout, func(m mqtt.Message) bool { return m.Topic == wgkex.StatusTopic(name) && string(m.Payload) == "1" })

				phase("worker online")
				keys := faultKeys(tag, burst)
				published := b.burst(t, keys)
				point.wait(t, published)
				before := b.routes()
				err := stop(t, w, sig)
				phase(fmt.Sprintf("%v with %d of %d keys installed", sig, before, burst))
				if sig == syscall.SIGTERM {
					if err != nil {
						t.Errorf("SIGTERM: exit %v, want 0\n%s", err, w.stderr)
					}
					sub.Wait(t, waitTimeout, func(m mqtt.Message) bool {
						return m.Topic == wgkex.ConnectedPeersTopic(faultDomain, name) && string(m.Payload) == "-1"
					})
					sub.Wait(t, waitTimeout, func(m mqtt.Message) bool { return m.Topic == wgkex.StatusTopic(name) && string(m.Payload) == "0" })
				}

				w = b.worker(t, name, stateDir)
				await(t, published.done, "burst published")
				phase("burst published")
				b.settle(t, w, tag)
				phase("settled")
				if p, r, f := b.missing(t, keys); p+r+f > 0 {
					t.Errorf("after %v and a restart, of %d keys %d lack their peer, %d their route, %d their FDB entry", sig, burst, p, r, f)
				}
				stop(t, w, syscall.SIGTERM)
				phase("stopped")
			})
		}
	}
}

var pendingRE = regexp.MustCompile(`pending=(\d+)`)

// TestFaultWorkerJournal: keys that arrive while the domain's interfaces
// are missing are acknowledged only once they are in the journal, so they
// survive a SIGKILL and are installed when the interfaces appear.
func TestFaultWorkerJournal(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	const n = 500
	b := newFaultBed(t)
	stateDir := t.TempDir()
	w := b.worker(t, "gw-journal", stateDir)
	sub := testbus.Subscribe(t, b.bus.URL, wgkex.StatusTopic("gw-journal"))
	sub.Wait(t, waitTimeout, func(m mqtt.Message) bool { return string(m.Payload) == "1" })

	keys := faultKeys(t.Name(), n)
	await(t, b.burst(t, keys).done, "burst published")
	// Every key is kept (the worker says how many wait), then the worker dies.
	eventually.True(t, 30*time.Second, fmt.Sprintf("%d keys kept", n), func() bool {
		all := pendingRE.FindAllStringSubmatch(w.stderr.String(), -1)
		if len(all) == 0 {
			return false
		}
		kept, _ := strconv.Atoi(all[len(all)-1][1])
		return kept == n
	})
	stop(t, w, syscall.SIGKILL)
	if data, err := os.ReadFile(filepath.Join(stateDir, "worker-gw-journal.journal")); err == nil {
		t.Logf("journal: %d lines", strings.Count(string(data), "\n"))
	}

	gw := b.gateway(t)
	defer stopGateway(t, gw)
	w = b.worker(t, "gw-journal", stateDir)
	b.settle(t, w, t.Name())
	if p, r, f := b.missing(t, keys); p+r+f > 0 {
		t.Errorf("of %d keys kept while the interfaces were missing, after SIGKILL and restart %d lack their peer, %d their route, %d their FDB entry",
			n, p, r, f)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "worker-gw-journal.journal")); err == nil {
		t.Error("journal still there after every key was installed")
	}
	stop(t, w, syscall.SIGTERM)
}

// TestFaultWorkerStatusOverwritten: another client overwrites the
// worker's retained status (with 0, and with an empty payload, which
// clears it) or clears its data message while the worker is connected; the
// worker publishes them again.
func TestFaultWorkerStatusOverwritten(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	b := newFaultBed(t)
	gw := b.gateway(t)
	defer stopGateway(t, gw)
	const name = "gw-overwritten"
	status, data := wgkex.StatusTopic(name), wgkex.DataTopic(name, faultDomain)
	sub := testbus.Subscribe(t, b.bus.URL, status, data)
	w := b.worker(t, name, t.TempDir())
	announced := sub.Wait(t, waitTimeout, func(m mqtt.Message) bool { return m.Topic == data })
	sub.Wait(t, waitTimeout, func(m mqtt.Message) bool { return m.Topic == status && string(m.Payload) == "1" })
	ours, err := wgkex.ParseWorkerData(announced.Payload)
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct{ topic, payload string }{
		{status, "0"},
		{status, ""},
		{data, ""},
		{data, `{"ExternalAddress":"elsewhere.example.net","Port":1,"PublicKey":"` + ours.PublicKey + `","LinkAddress":"fe80::1"}`},
	} {
		testbus.Publish(t, b.bus.URL, c.topic, c.payload, 1, true)
		sub.Wait(t, waitTimeout, func(m mqtt.Message) bool { return m.Topic == c.topic && string(m.Payload) == c.payload })
		want := "1"
		if c.topic == data {
			want = string(announced.Payload)
		}
		sub.Wait(t, waitTimeout, func(m mqtt.Message) bool { return m.Topic == c.topic && string(m.Payload) == want })
		// What a broker that starts now reads is the worker's own again.
		fresh := testbus.Subscribe(t, b.bus.URL, c.topic)
		if m := fresh.Wait(t, waitTimeout, func(mqtt.Message) bool { return true }); string(m.Payload) != want || !m.Retained {
			t.Errorf("retained %s after it was overwritten with %q: %q (retained %v), want %q", c.topic, c.payload, m.Payload, m.Retained, want)
		}
		fresh.Client.Close(context.Background())
	}
	if err := stop(t, w, syscall.SIGTERM); err != nil {
		t.Errorf("worker exit: %v", err)
	}
}

// oneIf is 1 for true, 0 for false.
func oneIf(b bool) int {
	if b {
		return 1
	}
	return 0
}
