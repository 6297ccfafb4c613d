package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/internal/promtest"
	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// fakeOS records every call into one transcript and keeps just enough
// state (peers, links) to answer reads.
type fakeOS struct {
	calls   []string
	peers   map[string]wgtypes.Peer
	links   map[string]int
	failKey string // ConfigureDevice fails for a config containing it
	routes  []netip.Prefix
	fdb     []kernel.FDBEntry
}

func newFake() *fakeOS {
	return &fakeOS{peers: map[string]wgtypes.Peer{}, links: map[string]int{"wg-welt": 10, "vx-welt": 11}}
}

func (f *fakeOS) rec(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeOS) Device(name string) (*wgtypes.Device, error) {
	if _, ok := f.links[name]; !ok {
		return nil, errors.New("no such device")
	}
	d := &wgtypes.Device{Name: name, ListenPort: 51820, PublicKey: mustKey("o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=")}
	for _, p := range f.peers {
		d.Peers = append(d.Peers, p)
	}
	return d, nil
}

func (f *fakeOS) ConfigureDevice(name string, cfg wgtypes.Config) error {
	var parts []string
	for _, p := range cfg.Peers {
		if p.PublicKey.String() == f.failKey {
			f.rec("configure %s FAIL", name)
			return errors.New("refused")
		}
		if p.Remove {
			parts = append(parts, "-"+short(p.PublicKey.String()))
		} else {
			parts = append(parts, "+"+short(p.PublicKey.String())+" "+p.AllowedIPs[0].String())
		}
	}
	f.rec("configure %s %s", name, strings.Join(parts, ", "))
	for _, p := range cfg.Peers {
		if p.Remove {
			delete(f.peers, p.PublicKey.String())
		} else if _, ok := f.peers[p.PublicKey.String()]; !ok {
			f.peers[p.PublicKey.String()] = wgtypes.Peer{PublicKey: p.PublicKey}
		}
	}
	return nil
}

func (f *fakeOS) LinkIndex(name string) (int, error) {
	if i, ok := f.links[name]; ok {
		return i, nil
	}
	return 0, fmt.Errorf("interface %s: no such network interface", name)
}
func (f *fakeOS) ReplaceRoute(dev int, dst netip.Prefix) error {
	f.rec("route replace %s dev %d", dst, dev)
	return nil
}
func (f *fakeOS) DeleteRoute(dev int, dst netip.Prefix) error {
	f.rec("route del %s dev %d", dst, dev)
	return nil
}
func (f *fakeOS) Routes(dev int) ([]netip.Prefix, error) { return f.routes, nil }
func (f *fakeOS) AppendFDB(vx int, dst netip.Addr, via int) error {
	f.rec("fdb append dev %d dst %s via %d", vx, dst, via)
	return nil
}
func (f *fakeOS) DeleteFDB(vx int, dst netip.Addr, via int) error {
	f.rec("fdb del dev %d dst %s via %d", vx, dst, via)
	return nil
}
func (f *fakeOS) FDB(vx int) ([]kernel.FDBEntry, error) { return f.fdb, nil }
func (f *fakeOS) Addrs(dev int) ([]netip.Prefix, error) {
	return []netip.Prefix{netip.MustParsePrefix("fe80::1234/64"), netip.PrefixFrom(wgkex.LinkLocal("o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="), 128)}, nil
}

func mustKey(s string) wgtypes.Key {
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		panic(err)
	}
	return k
}

func short(k string) string { return k[:4] }

// key returns the i-th test key.
func key(i int) string {
	var b [32]byte
	b[0] = byte(i)
	b[1] = 0xAA
	return wgtypes.Key(b).String()
}

func ll(i int) string { return wgkex.LinkLocal(key(i)).String() }

func newTestWorker(f *fakeOS, now func() time.Time) *Worker {
	return New(Options{
		Name: "gw1", Domains: map[string]wgkex.Interfaces{"ffmuc_welt": {WireGuard: "wg-welt", VXLAN: "vx-welt"}},
		WireGuard: f, Kernel: f, Now: now, BatchSize: 2,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

func diff(t *testing.T, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("transcript:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestInstallBatchTranscript(t *testing.T) {
	f := newFake()
	w := newTestWorker(f, nil)
	w.checkLinks(context.Background())
	f.calls = nil
	failed := w.installNow("ffmuc_welt", key(1), key(2), key(1), key(3))
	if len(failed) != 0 {
		t.Fatal(failed)
	}
	diff(t, f.calls, []string{
		// BatchSize 2: two configure calls; the duplicate is coalesced.
		"configure wg-welt +" + short(key(1)) + " " + ll(1) + "/128, +" + short(key(2)) + " " + ll(2) + "/128",
		"route replace " + ll(1) + "/128 dev 10",
		"fdb append dev 11 dst " + ll(1) + " via 10",
		"route replace " + ll(2) + "/128 dev 10",
		"fdb append dev 11 dst " + ll(2) + " via 10",
		"configure wg-welt +" + short(key(3)) + " " + ll(3) + "/128",
		"route replace " + ll(3) + "/128 dev 10",
		"fdb append dev 11 dst " + ll(3) + " via 10",
	})
}

func TestOneFailingKeyDoesNotBlockOthers(t *testing.T) {
	f := newFake()
	w := newTestWorker(f, nil)
	w.checkLinks(context.Background())
	f.calls, f.failKey = nil, key(2)
	failed := w.installNow("ffmuc_welt", key(1), key(2))
	if len(failed) != 1 || failed[key(2)] == nil || !strings.Contains(failed[key(2)].Error(), "wg-welt") {
		t.Fatalf("failed = %v", failed)
	}
	diff(t, f.calls, []string{
		"configure wg-welt FAIL",
		"configure wg-welt +" + short(key(1)) + " " + ll(1) + "/128",
		"configure wg-welt FAIL",
		"route replace " + ll(1) + "/128 dev 10",
		"fdb append dev 11 dst " + ll(1) + " via 10",
	})
}

func TestCleanupOrderAndGrace(t *testing.T) {
	f := newFake()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	w := newTestWorker(f, func() time.Time { return now })
	w.checkLinks(context.Background())
	w.installNow("ffmuc_welt", key(1), key(2), key(3))
	f.peers[key(1)] = wgtypes.Peer{PublicKey: mustKey(key(1)), LastHandshakeTime: now.Add(-4 * time.Hour)}  // stale
	f.peers[key(2)] = wgtypes.Peer{PublicKey: mustKey(key(2)), LastHandshakeTime: now.Add(4 * time.Minute)} // fresh: a minute before the cleanup
	f.peers[key(3)] = wgtypes.Peer{PublicKey: mustKey(key(3)), LastHandshakeTime: time.Unix(0, 0)}          // never (UAPI style)
	now = now.Add(5 * time.Minute)                                                                          // key 3 still in its grace period
	f.calls = nil
	if n := w.cleanup(); n != 1 {
		t.Fatalf("removed %d", n)
	}
	diff(t, f.calls, []string{
		"fdb del dev 11 dst " + ll(1) + " via 10",
		"route del " + ll(1) + "/128 dev 10",
		"configure wg-welt -" + short(key(1)),
	})
	if got := w.connectedPeersOf("ffmuc_welt"); got != 1 {
		t.Errorf("connected = %d, want 1", got)
	}
	now = now.Add(6 * time.Minute) // past the grace period
	f.calls = nil
	if n := w.cleanup(); n != 1 || !strings.Contains(strings.Join(f.calls, "\n"), "-"+short(key(3))) {
		t.Fatalf("second cleanup: %d %v", n, f.calls)
	}
}

func TestMissingInterfacesKeepKeys(t *testing.T) {
	f := newFake()
	delete(f.links, "vx-welt")
	w := newTestWorker(f, nil)
	w.checkLinks(context.Background())
	if failed := w.installNow("ffmuc_welt", key(1)); len(failed) != 0 {
		t.Fatal(failed)
	}
	if len(f.calls) != 0 {
		t.Fatalf("touched the kernel without interfaces: %v", f.calls)
	}
	if got := w.connectedPeersOf("ffmuc_welt"); got != -1 {
		t.Errorf("connected peers of a missing domain = %d, want -1", got)
	}
	f.links["vx-welt"] = 12
	w.checkLinks(context.Background())
	diff(t, f.calls, []string{
		"configure wg-welt +" + short(key(1)) + " " + ll(1) + "/128",
		"route replace " + ll(1) + "/128 dev 10",
		"fdb append dev 12 dst " + ll(1) + " via 10",
	})
}

func TestRepairTranscript(t *testing.T) {
	f := newFake()
	f.peers[key(1)] = wgtypes.Peer{PublicKey: mustKey(key(1))}
	f.peers[key(2)] = wgtypes.Peer{PublicKey: mustKey(key(2))}
	f.routes = []netip.Prefix{netip.MustParsePrefix(ll(1) + "/128"), netip.MustParsePrefix("fe80::dead/128")}
	f.fdb = []kernel.FDBEntry{
		{Dst: netip.MustParseAddr(ll(2)), Via: 10},
		{Dst: netip.MustParseAddr("fe80::dead"), Via: 10}, // ours, stray
		{Dst: netip.MustParseAddr("fe80::beef"), Via: 0},  // the operator's
		{Dst: netip.MustParseAddr("2001:db8::1"), Via: 10},
	}
	w := newTestWorker(f, nil)
	w.checkLinks(context.Background())
	got := strings.Join(f.calls, "\n")
	for _, want := range []string{
		"route del fe80::dead/128 dev 10",
		"fdb del dev 11 dst fe80::dead via 10",
		"route replace " + ll(2) + "/128 dev 10",
		"fdb append dev 11 dst " + ll(1) + " via 10",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	for _, not := range []string{"fe80::beef", "2001:db8::1", "route replace " + ll(1), "fdb append dev 11 dst " + ll(2)} {
		if strings.Contains(got, not) {
			t.Errorf("unexpected %q in\n%s", not, got)
		}
	}
}

func TestHandleMessageValidates(t *testing.T) {
	w := newTestWorker(newFake(), nil)
	ctx := context.Background()
	w.handleMessage(ctx, "wireguard/ffmuc_welt/all", []byte(key(1)+"\n"))
	w.handleMessage(ctx, "wireguard/ffmuc_welt/gw1", []byte(key(2)))
	for _, bad := range [][2]string{
		{"wireguard/ffmuc_welt/all", "garbage"},
		{"wireguard/ffmuc_mars/all", key(3)},
		{"wireguard-worker/x/status", "1"},
		{"wireguard/ffmuc_welt/all", ""},
	} {
		w.handleMessage(ctx, bad[0], []byte(bad[1]))
	}
	if len(w.queue) != 2 {
		t.Fatalf("queued %d, want 2", len(w.queue))
	}
	if j := <-w.queue; j.key != key(1) || j.domain != "ffmuc_welt" {
		t.Errorf("job %+v", j)
	}
	if _, _, _, dropped := w.counts(); dropped != 4 {
		t.Errorf("dropped %d", dropped)
	}
}

func FuzzHandleMessage(f *testing.F) {
	f.Add("wireguard/ffmuc_welt/all", []byte("o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="))
	f.Add("wireguard/ffmuc_welt/all", []byte("\x00"))
	w := New(Options{Domains: map[string]wgkex.Interfaces{"ffmuc_welt": {}}, QueueSize: 1 << 20,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		before := len(w.queue)
		w.handleMessage(context.Background(), topic, payload)
		if len(w.queue) > before {
			j := <-w.queue
			if !wgkex.ValidKey(j.key) || j.domain != "ffmuc_welt" {
				t.Fatalf("queued %+v from %q %q", j, topic, payload)
			}
		}
	})
}

func TestLinkAddress(t *testing.T) {
	own := "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	kernelMade := netip.MustParsePrefix("fe80::1234/64")
	derived := netip.PrefixFrom(wgkex.LinkLocal(own), 128)
	if a, _ := linkAddress([]netip.Prefix{kernelMade, derived}, own); a != derived.Addr() {
		t.Errorf("with derived present: %s", a)
	}
	if a, _ := linkAddress([]netip.Prefix{kernelMade}, own); a != kernelMade.Addr() {
		t.Errorf("without: %s", a)
	}
	if _, ok := linkAddress(nil, own); ok {
		t.Error("no address accepted")
	}
}

func TestAnnounceData(t *testing.T) {
	f := newFake()
	w := newTestWorker(f, nil)
	w.checkLinks(context.Background())
	d, err := w.dataOf("ffmuc_welt")
	if err != nil {
		t.Fatal(err)
	}
	want := wgkex.WorkerData{ExternalAddress: "gw1", Port: 51820, PublicKey: "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=",
		LinkAddress: wgkex.LinkLocal("o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=").String()}
	if d != want {
		t.Errorf("data = %+v, want %+v", d, want)
	}
}

func TestMetricsAndHealth(t *testing.T) {
	f := newFake()
	reg := prometheus.NewRegistry()
	up := false
	now := time.Now()
	w := New(Options{Name: "gw1", Domains: map[string]wgkex.Interfaces{"ffmuc_welt": {WireGuard: "wg-welt", VXLAN: "vx-welt"}},
		WireGuard: f, Kernel: f, Registry: reg, Connected: func() bool { return up }, Now: func() time.Time { return now },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	h := w.handler(reg)
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("readyz before anything: %d", code)
	}
	w.checkLinks(context.Background())
	up = true
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("readyz: %d %s", code, body)
	}
	w.installNow("ffmuc_welt", key(1), key(2))
	f.failKey = key(3)
	w.installNow("ffmuc_welt", key(3))
	f.peers[key(1)] = wgtypes.Peer{PublicKey: mustKey(key(1)), LastHandshakeTime: now.Add(-time.Minute)}
	f.peers[key(2)] = wgtypes.Peer{PublicKey: mustKey(key(2)), LastHandshakeTime: now.Add(-4 * time.Hour)}
	w.cleanup()

	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics %d", code)
	}
	fams := promtest.Parse(t, body)
	for name, want := range map[string]float64{
		"wgkex_worker_keys_installed_total":    2,
		"wgkex_worker_keys_failed_total":       1,
		"wgkex_worker_cleanup_removed_total":   1,
		"wgkex_worker_install_latency_seconds": 2,
		"wgkex_worker_peers":                   1,
		"wgkex_worker_connected_peers":         1,
		"wgkex_mqtt_connected":                 1,
	} {
		if got := promtest.Value(fams, name, nil); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("healthz %d", code)
	}
}
