package dummyiface

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/internal/await"
	"github.com/freifunkMUC/wgkex/internal/fakekernel"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

var (
	welt = wgkex.Interfaces{WireGuard: "wg-welt", VXLAN: "vx-welt"}
	mars = wgkex.Interfaces{WireGuard: "wg-mars", VXLAN: "vx-mars"}
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// made is the transcript of building welt with testKey(1) (in the order
// of docs/protocol.md §6.1).
func made(mode string, vni string) []string {
	return []string{
		"wireguard add wg-welt (" + mode + ")",
		"wg set wg-welt private-key key1 listen-port 51820",
		"addr add " + ll(1) + "/128 dev wg-welt",
		"link set wg-welt up",
		"link add vx-welt type vxlan id " + vni + " local " + ll(1) + " dev wg-welt",
		"addr add fe80::1/64 dev vx-welt",
		"link set vx-welt up",
	}
}

func TestCreateTranscript(t *testing.T) {
	f := newFakeOS()
	key := testKey(1)
	gw, err := create(f.system(), Options{Interfaces: welt, ListenPort: 51820, PrivateKey: &key, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), made("kernel", "99"))
	if gw.PublicKey != pub(1) || gw.LinkAddress.String() != ll(1) || gw.listenPort != 51820 || gw.vxlanID != 99 {
		t.Errorf("gateway %+v", gw)
	}
	if gw.running() {
		t.Error("kernel WireGuard without liveness server needs this process")
	}
	f.Forget()
	if err := gw.close(f); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), []string{"link del vx-welt", "link del wg-welt"})
}

// TestCreateVXLANIDAndLiveness: the site's VNI goes on vx-X; the liveness
// server starts last, on the link address of wg-X, and stops first.
func TestCreateVXLANIDAndLiveness(t *testing.T) {
	f := newFakeOS()
	key := testKey(1)
	gw, err := create(f.system(), Options{Interfaces: welt, ListenPort: 51820, PrivateKey: &key, Logger: quiet(),
		VXLANID: 8911352, LivenessHTTP: true, Userspace: true})
	if err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), append(made("userspace", "8911352"), "liveness up http://["+ll(1)+"%wg-welt]:80/"))
	if !gw.running() || gw.mode() != "userspace (this process)" {
		t.Errorf("running %v, mode %q", gw.running(), gw.mode())
	}
	f.Forget()
	if err := gw.close(f); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), []string{
		"liveness down http://[" + ll(1) + "%wg-welt]:80/",
		"link del vx-welt",
		"userspace wg-welt closed",
		"link del wg-welt",
	})
}

func TestCreateRejectsVXLANIDOver24Bits(t *testing.T) {
	f := newFakeOS()
	_, err := create(f.system(), Options{Interfaces: welt, VXLANID: wgkex.MaxVXLANID + 1, Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "over 24 bits") {
		t.Fatalf("err = %v", err)
	}
	fakekernel.Diff(t, f.Transcript(), nil)
}

// TestCreateFailureCleansUp fails each step in turn: everything made
// before it is removed again, vx-X first.
func TestCreateFailureCleansUp(t *testing.T) {
	for _, userspace := range []bool{false, true} {
		mode := "kernel"
		cleanup := []string{"link del vx-welt", "link del wg-welt"}
		if userspace {
			mode = "userspace"
			cleanup = []string{"link del vx-welt", "userspace wg-welt closed", "link del wg-welt"}
		}
		steps := append(made(mode, "99"), "liveness up http://["+ll(1)+"%wg-welt]:80/")
		for i, step := range steps {
			t.Run(mode+"/"+step, func(t *testing.T) {
				f := newFakeOS()
				f.FailOn = step
				key := testKey(1)
				_, err := create(f.system(), Options{Interfaces: welt, ListenPort: 51820, PrivateKey: &key,
					LivenessHTTP: true, Userspace: userspace, Logger: quiet()})
				if err == nil || !strings.Contains(err.Error(), "refused") {
					t.Fatalf("err = %v", err)
				}
				want := append(append([]string(nil), steps[:i]...), step+" -> FAIL")
				if i > 0 { // the WireGuard interface exists: remove it
					want = append(want, cleanup...)
				}
				fakekernel.Diff(t, f.Transcript(), want)
				if _, err := f.LinkIndex("wg-welt"); err == nil {
					t.Error("wg-welt left behind")
				}
			})
		}
	}
}

// TestCreateExisting: an existing WireGuard wg-X is reported and left
// alone, also by Close; only the liveness server is started and stopped.
func TestCreateExisting(t *testing.T) {
	f := newFakeOS()
	f.AddWireGuard(wgtypes.Device{Name: "wg-welt", PublicKey: pub(5), ListenPort: 40000})
	gw, err := create(f.system(), Options{Interfaces: welt, ListenPort: 51820, LivenessHTTP: true, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if !gw.existed || gw.PublicKey != pub(5) || gw.listenPort != 40000 || gw.LinkAddress.String() != ll(5) || gw.mode() != "already there, left as it is" {
		t.Errorf("gateway %+v", gw)
	}
	if err := gw.close(f); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), []string{
		"liveness up http://[" + ll(5) + "%wg-welt]:80/",
		"liveness down http://[" + ll(5) + "%wg-welt]:80/",
	})
}

func TestCreateRefusesOtherLinkOfTheName(t *testing.T) {
	f := newFakeOS()
	f.AddLink("wg-welt") // not a WireGuard device
	_, err := create(f.system(), Options{Interfaces: welt, Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "wg-welt exists but is not a WireGuard device") {
		t.Fatalf("err = %v", err)
	}
	fakekernel.Diff(t, f.Transcript(), nil)
}

// line is what Run prints for a domain built with testKey(i).
func line(domain string, ifs wgkex.Interfaces, i, port int, mode string) string {
	return domain + ": " + ifs.WireGuard + " public key " + pub(i).String() + " port " + strconv.Itoa(port) + " link address " + ll(i) +
		" [" + mode + "]; " + ifs.VXLAN + " vxlan id 99 local " + ll(i) + " dev " + ifs.WireGuard + ", fe80::1/64"
}

func runOptions(out *bytes.Buffer, log *slog.Logger) RunOptions {
	return RunOptions{Domains: []string{"ffmuc_welt", "ffmuc_mars"},
		Interfaces: map[string]wgkex.Interfaces{"ffmuc_welt": welt, "ffmuc_mars": mars},
		ListenPort: 51820, Out: out, Logger: log}
}

// TestRunKernelReturns: with kernel WireGuard and no liveness server
// nothing needs this process: Run builds each domain on its own port and
// returns, leaving the interfaces.
func TestRunKernelReturns(t *testing.T) {
	f := newFakeOS()
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), f.system(), runOptions(&out, quiet())) }()
	if err := await.Returned(t, done, "Run"); err != nil {
		t.Fatal(err)
	}
	want := made("kernel", "99")
	want = append(want,
		"wireguard add wg-mars (kernel)",
		"wg set wg-mars private-key key2 listen-port 51821",
		"addr add "+ll(2)+"/128 dev wg-mars",
		"link set wg-mars up",
		"link add vx-mars type vxlan id 99 local "+ll(2)+" dev wg-mars",
		"addr add fe80::1/64 dev vx-mars",
		"link set vx-mars up",
	)
	fakekernel.Diff(t, f.Transcript(), want)
	fakekernel.Diff(t, strings.Split(strings.TrimSpace(out.String()), "\n"), []string{
		line("ffmuc_welt", welt, 1, 51820, "kernel"),
		line("ffmuc_mars", mars, 2, 51821, "kernel"),
	})
}

// startRun runs Run in the background and returns when it waits (it has
// logged that it is running).
func startRun(t *testing.T, ctx context.Context, f *fakeOS, o RunOptions) <-chan error {
	t.Helper()
	events := make(await.Log, 100)
	o.Logger = slog.New(events)
	done := make(chan error, 1)
	go func() { done <- run(ctx, f.system(), o) }()
	events.Await(t, "running")
	select {
	case err := <-done:
		t.Fatalf("Run returned while its userspace devices run: %v", err)
	default:
	}
	return done
}

// TestRunStaysUntilCancelled: userspace WireGuard needs this process; on
// SIGINT/SIGTERM (ctx) Run removes what it made.
func TestRunStaysUntilCancelled(t *testing.T) {
	f := newFakeOS()
	f.NoKernelWG = true
	var out bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := startRun(t, ctx, f, runOptions(&out, nil))
	f.Forget()
	cancel()
	if err := await.Returned(t, done, "Run"); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), []string{
		"link del vx-welt", "userspace wg-welt closed", "link del wg-welt",
		"link del vx-mars", "userspace wg-mars closed", "link del wg-mars",
	})
	fakekernel.Diff(t, strings.Split(strings.TrimSpace(out.String()), "\n"), []string{
		line("ffmuc_welt", welt, 1, 51820, "userspace (this process)"),
		line("ffmuc_mars", mars, 2, 51821, "userspace (this process)"),
	})
}

// TestRunExitsWhenInterfaceRemoved: one userspace interface deleted from
// outside ends Run, which removes the rest.
func TestRunExitsWhenInterfaceRemoved(t *testing.T) {
	f := newFakeOS()
	f.NoKernelWG = true
	done := startRun(t, context.Background(), f, runOptions(&bytes.Buffer{}, nil))
	f.Forget()
	dev := f.Userspace("wg-mars")
	dev.RemoveFromOutside()
	if err := await.Returned(t, done, "Run"); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), []string{
		"(outside) link del wg-mars",
		"link del vx-welt", "userspace wg-welt closed", "link del wg-welt",
		"link del vx-mars", "userspace wg-mars closed", "link del wg-mars",
	})
}

// TestRunLivenessOnExisting: existing interfaces are reported and left
// alone; the liveness server alone keeps Run up, and stopping stops only
// it.
func TestRunLivenessOnExisting(t *testing.T) {
	f := newFakeOS()
	f.AddWireGuard(wgtypes.Device{Name: "wg-welt", PublicKey: pub(5), ListenPort: 40000})
	var out bytes.Buffer
	o := runOptions(&out, nil)
	o.Domains, o.LivenessHTTP = []string{"ffmuc_welt"}, true
	ctx, cancel := context.WithCancel(context.Background())
	done := startRun(t, ctx, f, o)
	cancel()
	if err := await.Returned(t, done, "Run"); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), []string{
		"liveness up http://[" + ll(5) + "%wg-welt]:80/",
		"liveness down http://[" + ll(5) + "%wg-welt]:80/",
	})
	fakekernel.Diff(t, strings.Split(strings.TrimSpace(out.String()), "\n"), []string{line("ffmuc_welt", welt, 5, 40000, "already there, left as it is")})
}

// TestRunFailureMidway: a domain that cannot be built ends Run with its
// name; what needs this process is removed, kernel interfaces of the
// domains before it stay (as after a successful run).
func TestRunFailureMidway(t *testing.T) {
	for _, userspace := range []bool{false, true} {
		f := newFakeOS()
		f.FailOn = "link add vx-mars"
		o := runOptions(&bytes.Buffer{}, quiet())
		o.Userspace = userspace
		err := run(context.Background(), f.system(), o)
		if err == nil || !strings.HasPrefix(err.Error(), "ffmuc_mars: ") {
			t.Fatalf("userspace %v: err = %v", userspace, err)
		}
		got := f.Transcript()
		for i, l := range got {
			if strings.HasSuffix(l, " -> FAIL") {
				got = got[i:]
				break
			}
		}
		fail := "link add vx-mars type vxlan id 99 local " + ll(2) + " dev wg-mars -> FAIL"
		if !userspace {
			fakekernel.Diff(t, got, []string{fail, "link del vx-mars", "link del wg-mars"})
			if _, err := f.LinkIndex("vx-welt"); err != nil {
				t.Error("kernel interfaces of ffmuc_welt removed")
			}
			continue
		}
		fakekernel.Diff(t, got, []string{fail, "link del vx-mars", "userspace wg-mars closed", "link del wg-mars",
			// then ffmuc_welt, which needs this process
			"link del vx-welt", "userspace wg-welt closed", "link del wg-welt"})
	}
}

func TestRunDelete(t *testing.T) {
	f := newFakeOS()
	var out bytes.Buffer
	o := runOptions(&out, quiet())
	o.Delete = true
	if err := run(context.Background(), f.system(), o); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), []string{"link del vx-welt", "link del wg-welt", "link del vx-mars", "link del wg-mars"})
	fakekernel.Diff(t, strings.Split(strings.TrimSpace(out.String()), "\n"), []string{
		"ffmuc_welt: removed wg-welt and vx-welt",
		"ffmuc_mars: removed wg-mars and vx-mars",
	})

	f = newFakeOS()
	f.FailOn = "link del vx-welt"
	out.Reset()
	if err := run(context.Background(), f.system(), o); err == nil {
		t.Fatal("a failed removal reported as success")
	}
	if strings.Contains(out.String(), "ffmuc_welt") || !strings.Contains(out.String(), "ffmuc_mars: removed") {
		t.Errorf("output %q", out.String())
	}
}
