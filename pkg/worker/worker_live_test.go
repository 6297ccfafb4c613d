package worker

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/internal/netns"
	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/dummyiface"
	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

const liveDomain = "ffmuc_welt"

var ifs = wgkex.Interfaces{WireGuard: "wg-welt", VXLAN: "vx-welt"}

// clock is the injectable clock of these tests.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.off) }
func (c *clock) Set(off time.Duration) {
	c.mu.Lock()
	c.off = off
	c.mu.Unlock()
}

// host is a gateway: its interfaces, the kernel handles and a bus.
type host struct {
	k        *kernel.Conn
	wg       *wgctrl.Client
	gw       *dummyiface.Gateway
	bus      *testbus.Server
	stateDir string // the workers' journal directory
}

func newHost(t testing.TB) *host {
	t.Helper()
	k, wg := netns.Handles(t)
	gw, err := dummyiface.Create(k, wg, dummyiface.Options{Interfaces: ifs, ListenPort: 51820, Logger: testbus.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close(k) })
	return &host{k: k, wg: wg, gw: gw, bus: testbus.Mosquitto(t)}
}

// runningWorker is a worker connected to the bus, as wgkex worker runs it.
type runningWorker struct {
	w      *Worker
	cancel context.CancelFunc
	done   chan error
}

func (h *host) startWorker(t testing.TB, name string, clk *clock, tune ...func(*Options)) *runningWorker {
	t.Helper()
	if h.stateDir == "" {
		h.stateDir = t.TempDir()
	}
	ctx, cancel := context.WithCancel(context.Background())
	o := Options{
		Name: name, ExternalName: name + ".ext.example.net",
		Domains:   map[string]wgkex.Interfaces{liveDomain: ifs},
		WireGuard: h.wg, Kernel: h.k,
		MQTT:     mqtt.Options{Server: h.bus.URL, Keepalive: 5 * time.Second, Logger: testbus.Quiet()},
		StateDir: h.stateDir,
		Now:      clk.Now, Logger: testbus.Quiet(),
		NewPeerGrace: 10 * time.Minute, PeerTimeout: 3 * time.Hour,
		LinkCheckInterval: 200 * time.Millisecond,
	}
	for _, f := range tune {
		f(&o)
	}
	w := New(o)
	rw := &runningWorker{w: w, cancel: cancel, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(ctx) }()
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	if err := w.AwaitConnection(actx); err != nil {
		t.Fatal(err)
	}
	return rw
}

// stop stops the worker as SIGTERM does: the queued keys installed, -1 and
// status 0, then a clean disconnect.
func (rw *runningWorker) stop() error {
	rw.cancel()
	return <-rw.done
}

// kernelState is what the kernel holds for the domain.
type kernelState struct {
	peers  []string
	routes []string
	fdb    []string
}

func (h *host) state(t testing.TB) kernelState {
	t.Helper()
	dev, err := h.wg.Device(ifs.WireGuard)
	if err != nil {
		t.Fatal(err)
	}
	var s kernelState
	for _, p := range dev.Peers {
		ips := make([]string, len(p.AllowedIPs))
		for i, ip := range p.AllowedIPs {
			ips[i] = ip.String()
		}
		s.peers = append(s.peers, p.PublicKey.String()+" "+strings.Join(ips, ","))
	}
	wgi, _ := h.k.LinkIndex(ifs.WireGuard)
	vxi, _ := h.k.LinkIndex(ifs.VXLAN)
	routes, err := h.k.Routes(wgi)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		s.routes = append(s.routes, r.String())
	}
	fdb, err := h.k.FDB(vxi)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fdb {
		s.fdb = append(s.fdb, fmt.Sprintf("%s via %d", e.Dst, e.Via))
	}
	sort.Strings(s.peers)
	sort.Strings(s.routes)
	sort.Strings(s.fdb)
	return s
}

// installed reports whether key has its peer, route and FDB entry.
func (h *host) installed(t testing.TB, key string) bool {
	s := h.state(t)
	ll := wgkex.LinkLocal(key)
	wgi, _ := h.k.LinkIndex(ifs.WireGuard)
	return contains(s.peers, key+" "+ll.String()+"/128") && contains(s.routes, ll.String()+"/128") &&
		contains(s.fdb, fmt.Sprintf("%s via %d", ll, wgi))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func eventually(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newKey(t testing.TB) (wgtypes.Key, string) {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k, k.PublicKey().String()
}

func sh(t testing.TB, cmd string, args ...string) string {
	t.Helper()
	out, err := exec.Command(cmd, args...).CombinedOutput()
	if err != nil {
		testbus.Missing(t, "%s %v: %v: %s", cmd, args, err, out)
	}
	return string(out)
}

func TestWorkerInstallsKeys(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	h := newHost(t)
	clk := &clock{}
	sub := testbus.Subscribe(t, h.bus.URL, "wireguard-worker/#", "wireguard-metrics/#")
	rw := h.startWorker(t, "gw1", clk)

	t.Run("announces data, then status, then metrics", func(t *testing.T) {
		var order []string
		var data wgkex.WorkerData
		for len(order) < 3 {
			m := sub.Wait(t, 10*time.Second, func(mqtt.Message) bool { return true })
			order = append(order, m.Topic+"="+string(m.Payload))
			if m.Topic == wgkex.DataTopic("gw1", liveDomain) {
				var err error
				if data, err = wgkex.ParseWorkerData(m.Payload); err != nil {
					t.Fatal(err)
				}
				if !m.Retained && m.QoS != 1 {
					t.Errorf("data not retained QoS 1: %+v", m)
				}
			}
		}
		if !strings.HasPrefix(order[0], wgkex.DataTopic("gw1", liveDomain)) || order[1] != wgkex.StatusTopic("gw1")+"=1" ||
			order[2] != wgkex.ConnectedPeersTopic(liveDomain, "gw1")+"=0" {
			t.Errorf("announce order: %q", order)
		}
		want := wgkex.WorkerData{ExternalAddress: "gw1.ext.example.net", Port: 51820, PublicKey: h.gw.PublicKey.String(),
			LinkAddress: h.gw.LinkAddress.String()}
		if data != want {
			t.Errorf("data = %+v, want %+v", data, want)
		}
	})

	_, key1 := newKey(t)
	t.Run("a published key becomes peer, route and FDB entry", func(t *testing.T) {
		start := time.Now()
		testbus.Publish(t, h.bus.URL, wgkex.KeyTopic(liveDomain), key1, 1, false)
		eventually(t, "key installed", 5*time.Second, func() bool { return h.installed(t, key1) })
		t.Logf("installed %v after publish", time.Since(start))
		ll := wgkex.LinkLocal(key1).String()
		// The same, as the operator's tools show it.
		if out := sh(t, "wg", "show", ifs.WireGuard, "allowed-ips"); !strings.Contains(out, key1+"\t"+ll+"/128") {
			t.Errorf("wg show: %q", out)
		}
		if out := sh(t, "ip", "-6", "route", "show", "dev", ifs.WireGuard, "proto", "129"); !strings.Contains(out, ll+" ") {
			t.Errorf("ip route: %q", out)
		}
		if out := sh(t, "bridge", "fdb", "show", "dev", ifs.VXLAN); !strings.Contains(out, "00:00:00:00:00:00 dst "+ll+" via "+ifs.WireGuard+" self permanent") {
			t.Errorf("bridge fdb: %q", out)
		}
	})

	t.Run("the same key twice changes nothing", func(t *testing.T) {
		before := h.state(t)
		installedBefore, _, _, _ := rw.w.counts()
		testbus.Publish(t, h.bus.URL, wgkex.KeyTopic(liveDomain), key1, 1, false)
		eventually(t, "second delivery processed", 5*time.Second, func() bool {
			n, _, _, _ := rw.w.counts()
			return n > installedBefore
		})
		if after := h.state(t); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("state changed:\nbefore %v\nafter  %v", before, after)
		}
	})

	t.Run("a second node's FDB entry coexists", func(t *testing.T) {
		_, key2 := newKey(t)
		testbus.Publish(t, h.bus.URL, wgkex.KeyTopic(liveDomain), key2, 1, false)
		eventually(t, "key2 installed", 5*time.Second, func() bool { return h.installed(t, key2) })
		if !h.installed(t, key1) {
			t.Error("key1 lost")
		}
	})

	t.Run("a QoS 0 publish (Python broker) is installed", func(t *testing.T) {
		_, key := newKey(t)
		testbus.Publish(t, h.bus.URL, wgkex.KeyTopic(liveDomain), key, 0, false)
		eventually(t, "QoS 0 key installed", 5*time.Second, func() bool { return h.installed(t, key) })
	})

	t.Run("bad messages are dropped", func(t *testing.T) {
		before := h.state(t)
		_, _, _, dropped := rw.w.counts()
		testbus.Publish(t, h.bus.URL, wgkex.KeyTopic(liveDomain), "not-a-key", 1, false)
		testbus.Publish(t, h.bus.URL, "wireguard/ffmuc_mars/all", key1, 1, false)
		eventually(t, "drops counted", 5*time.Second, func() bool { _, _, _, d := rw.w.counts(); return d >= dropped+1 })
		if after := h.state(t); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("state changed by bad input")
		}
	})

	t.Run("a key published while the worker is down is installed after restart", func(t *testing.T) {
		rw.stop()
		sub.Wait(t, 5*time.Second, func(m mqtt.Message) bool {
			return m.Topic == wgkex.ConnectedPeersTopic(liveDomain, "gw1") && string(m.Payload) == "-1"
		})
		m := sub.Wait(t, 5*time.Second, func(m mqtt.Message) bool { return m.Topic == wgkex.StatusTopic("gw1") })
		if string(m.Payload) != "0" {
			t.Errorf("status after shutdown's -1 = %q, want 0", m.Payload)
		}
		_, key := newKey(t)
		testbus.Publish(t, h.bus.URL, wgkex.KeyTopic(liveDomain), key, 1, false)
		time.Sleep(100 * time.Millisecond)
		if h.installed(t, key) {
			t.Fatal("installed with no worker running?")
		}
		rw = h.startWorker(t, "gw1", clk)
		eventually(t, "key from the persistent session installed", 5*time.Second, func() bool { return h.installed(t, key) })
	})

	t.Run("a dropped connection publishes the will", func(t *testing.T) {
		rw.w.KillConnection()
		sub.Wait(t, 10*time.Second, func(m mqtt.Message) bool {
			return m.Topic == wgkex.StatusTopic("gw1") && string(m.Payload) == "0"
		})
	})
	rw.stop()
}

// TestCleanup installs three peers, gives one a real WireGuard handshake
// from a node device in the same namespace, and moves the injected clock.
func TestCleanup(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	h := newHost(t)
	clk := &clock{}
	w := New(Options{
		Name: "gw1", Domains: map[string]wgkex.Interfaces{liveDomain: ifs},
		WireGuard: h.wg, Kernel: h.k, Now: clk.Now, Logger: testbus.Quiet(),
		NewPeerGrace: 10 * time.Minute, PeerTimeout: 3 * time.Hour,
	})
	w.checkLinks(context.Background())

	nodePriv, active := newKey(t)
	_, early := newKey(t) // installed 20 minutes ago, never shook hands
	_, recent := newKey(t)
	clk.Set(-20 * time.Minute)
	if failed := w.installNow(liveDomain, early); len(failed) > 0 {
		t.Fatal(failed)
	}
	clk.Set(-1 * time.Minute)
	if failed := w.installNow(liveDomain, recent, active); len(failed) > 0 {
		t.Fatal(failed)
	}
	clk.Set(0)

	// The node: a second userspace device that dials the gateway.
	node, err := dummyiface.Create(h.k, h.wg, dummyiface.Options{
		Interfaces: wgkex.Interfaces{WireGuard: "wg-node", VXLAN: "vx-node"}, ListenPort: 51821,
		PrivateKey: &nodePriv, Logger: testbus.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close(h.k)
	keepalive := time.Second
	if err := h.wg.ConfigureDevice("wg-node", wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: h.gw.PublicKey, Endpoint: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 51820},
		PersistentKeepaliveInterval: &keepalive, ReplaceAllowedIPs: true,
		AllowedIPs: []net.IPNet{{IP: net.IP(h.gw.LinkAddress.AsSlice()), Mask: net.CIDRMask(128, 128)}},
	}}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a real handshake", 10*time.Second, func() bool { return w.connectedPeersOf(liveDomain) == 1 })

	if n := w.cleanup(); n != 1 {
		t.Errorf("first cleanup removed %d, want 1 (the peer out of its grace period)", n)
	}
	s := h.state(t)
	if len(s.peers) != 2 || contains(s.peers, early+" "+wgkex.LinkLocal(early).String()+"/128") || len(s.routes) != 2 || len(s.fdb) != 2 {
		t.Fatalf("after first cleanup: %v", s)
	}
	if h.installed(t, early) || !h.installed(t, recent) || !h.installed(t, active) {
		t.Fatal("wrong peers removed")
	}

	// Four hours on: the active peer's handshake is stale, the recent one
	// is past its grace period.
	clk.Set(4 * time.Hour)
	if got := w.connectedPeersOf(liveDomain); got != 0 {
		t.Errorf("connected peers 4h on = %d", got)
	}
	if n := w.cleanup(); n != 2 {
		t.Errorf("second cleanup removed %d, want 2", n)
	}
	if s := h.state(t); len(s.peers)+len(s.routes)+len(s.fdb) != 0 {
		t.Errorf("left behind: %v", s)
	}
}

// TestRepair: a recreated vx-X loses its FDB; peers kept across a worker
// restart get their entries back; stray entries of ours are removed, the
// operator's are kept.
func TestRepair(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	h := newHost(t)
	clk := &clock{}
	opts := Options{Name: "gw1", Domains: map[string]wgkex.Interfaces{liveDomain: ifs},
		WireGuard: h.wg, Kernel: h.k, Now: clk.Now, Logger: testbus.Quiet(), LinkCheckInterval: 50 * time.Millisecond}
	w := New(opts)
	w.checkLinks(context.Background())
	_, k1 := newKey(t)
	_, k2 := newKey(t)
	if failed := w.installNow(liveDomain, k1, k2); len(failed) > 0 {
		t.Fatal(failed)
	}
	wgi, _ := h.k.LinkIndex(ifs.WireGuard)
	// A stray route and FDB entry of ours, and an operator's route.
	stray := netip.MustParseAddr("fe80::dead")
	if err := h.k.ReplaceRoute(wgi, netip.PrefixFrom(stray, 128)); err != nil {
		t.Fatal(err)
	}
	vxi, _ := h.k.LinkIndex(ifs.VXLAN)
	if err := h.k.AppendFDB(vxi, stray, wgi); err != nil {
		t.Fatal(err)
	}
	sh(t, "ip", "-6", "route", "add", "fe80::beef/128", "dev", ifs.WireGuard, "proto", "static")
	// Routes removed behind the worker's back.
	if err := h.k.DeleteRoute(wgi, netip.PrefixFrom(wgkex.LinkLocal(k1), 128)); err != nil {
		t.Fatal(err)
	}

	// A new worker (as after a restart) repairs at start.
	w = New(opts)
	w.checkLinks(context.Background())
	if !h.installed(t, k1) || !h.installed(t, k2) {
		t.Fatalf("not repaired: %v", h.state(t))
	}
	s := h.state(t)
	if contains(s.routes, "fe80::dead/128") || len(s.fdb) != 2 {
		t.Errorf("stray entries left: %v", s)
	}
	if out := sh(t, "ip", "-6", "route", "show", "fe80::beef/128"); !strings.Contains(out, "fe80::beef") {
		t.Errorf("operator's route removed")
	}

	// vx-X recreated: the running worker notices and restores the FDB.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := h.k.DeleteLink(ifs.VXLAN); err != nil {
		t.Fatal(err)
	}
	if err := h.k.CreateVXLAN(kernel.VXLAN{Name: ifs.VXLAN, ID: wgkex.DefaultVXLANID, Local: h.gw.LinkAddress, Dev: wgi}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "FDB restored on the new vx-X", 5*time.Second, func() bool { return h.installed(t, k1) && h.installed(t, k2) })
}

// TestMissingInterface: a domain whose interfaces are missing does not stop
// the worker; its keys wait and are installed once the interfaces appear.
func TestMissingInterface(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	k, wg := netns.Handles(t)
	bus := testbus.Mosquitto(t)
	h := &host{k: k, wg: wg, bus: bus}
	rw := h.startWorker(t, "gw1", &clock{})
	defer rw.stop()
	_, key := newKey(t)
	testbus.Publish(t, bus.URL, wgkex.KeyTopic(liveDomain), key, 1, false)
	// The key is kept in the journal until the interfaces exist.
	journal := filepath.Join(h.stateDir, "worker-gw1.journal")
	eventually(t, "key in the journal", 10*time.Second, func() bool {
		data, _ := os.ReadFile(journal)
		return strings.Contains(string(data), liveDomain+"\t"+key+"\n")
	})

	gw, err := dummyiface.Create(k, wg, dummyiface.Options{Interfaces: ifs, ListenPort: 51820, Logger: testbus.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close(k)
	h.gw = gw
	eventually(t, "waiting key installed once the interfaces exist", 10*time.Second, func() bool { return h.installed(t, key) })
	eventually(t, "journal removed", 10*time.Second, func() bool { _, err := os.Stat(journal); return os.IsNotExist(err) })
}
