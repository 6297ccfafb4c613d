package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/internal/await"
	"github.com/freifunkMUC/wgkex/internal/fakekernel"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// Two gateways: A names its link address bare, B with a prefix (both
// shapes are in use, docs/protocol.md §2).
var (
	gwA = &wgkex.Endpoint{Address: "192.0.2.1", Port: "40011", PublicKey: pub(7).String(), AllowedIPs: []string{ll(7)}}
	gwB = &wgkex.Endpoint{Address: "192.0.2.2", Port: "40012", PublicKey: pub(8).String(), AllowedIPs: []string{ll(8) + "/128"}}
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func options(t *testing.T, out io.Writer, log *slog.Logger) ConnectOptions {
	return ConnectOptions{Push: PushOptions{Broker: "http://broker", Domain: "ffmuc_welt"}, WireGuard: "wg-mesh", VXLAN: "vx-mesh",
		KeyFile: keyFile(t), Out: out, Logger: log}
}

// pointedAt is the transcript of (re)pointing the link at gateway i; a
// new gateway recreates the VXLAN link with the new remote (docs/protocol.md
// §6.2 steps 4 to 6).
func pointedAt(i int, endpoint, vni string, newGateway bool) []string {
	lines := []string{
		"wg set wg-mesh replace-peers peer pub" + strconv.Itoa(i) + " endpoint " + endpoint + " persistent-keepalive 25 allowed-ips " + ll(i) + "/128",
		"addr add " + ll(1) + "/128 dev wg-mesh",
		"link set wg-mesh up",
		"route replace " + ll(i) + "/128 dev wg-mesh",
	}
	if newGateway {
		lines = append(lines, "link del vx-mesh")
	}
	return append(lines,
		"link add vx-mesh type vxlan id "+vni+" local "+ll(1)+" remote "+ll(i)+" dev wg-mesh dstport 8472",
		"link set vx-mesh up")
}

func connected(mode string) []string {
	return append([]string{
		"wireguard add wg-mesh (" + mode + ")",
		"wg set wg-mesh private-key key1",
		"push http://broker ffmuc_welt pub1 (v2)",
	}, pointedAt(7, "192.0.2.1:40011", "99", true)...)
}

const connectedLine = "connected: wg-mesh -> 192.0.2.1:40011 (gateway "

// TestRunKernelReturns: without --watch a kernel node is connected and
// done; the VNI is the one given.
func TestRunKernelReturns(t *testing.T) {
	f := newFakeOS()
	f.answers = []pushAnswer{{ep: gwA}}
	var out bytes.Buffer
	o := options(t, &out, quiet())
	o.VXLANID = 8911352
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), f.system(), o) }()
	if err := await.Returned(t, done, "run"); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), append([]string{
		"wireguard add wg-mesh (kernel)",
		"wg set wg-mesh private-key key1",
		"push http://broker ffmuc_welt pub1 (v2)",
	}, pointedAt(7, "192.0.2.1:40011", "8911352", true)...))
	want := connectedLine + pub(7).String() + ", link address " + ll(7) + "); own link address " + ll(1) +
		"; vxlan vx-mesh id 8911352 remote " + ll(7) + "\n"
	if out.String() != want {
		t.Errorf("output\n%q\nwant\n%q", out.String(), want)
	}
}

// TestWatchTranscript: --watch registers again after two failed checks in
// a row, retries a failed registration on the next tick, recreates the
// VXLAN link for a new gateway and keeps it for the same one.
func TestWatchTranscript(t *testing.T) {
	f := newFakeOS()
	f.answers = []pushAnswer{{ep: gwA}, {err: errors.New("broker answered 503")}, {ep: gwB}, {ep: gwB}}
	f.pings = []bool{false, true, false, false, false, false, false, true}
	var out bytes.Buffer
	o := options(t, &out, quiet())
	o.Watch = true
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, f.system(), o) }()
	f.awaitIdle(t)
	for range f.pings {
		f.tick(t)
	}
	cancel()
	if err := await.Returned(t, done, "run"); err != nil {
		t.Fatal(err)
	}
	pingA, pingB := "ping "+ll(7)+"%wg-mesh", "ping "+ll(8)+"%wg-mesh"
	want := append(connected("kernel"), "ticker every 1m0s",
		pingA+" -> no answer",
		pingA+" -> ok", // not two in a row
		pingA+" -> no answer",
		pingA+" -> no answer", // the second in a row: register
		"push http://broker ffmuc_welt pub1 (v2) -> FAIL",
		pingA+" -> no answer", // still down: register again
		"push http://broker ffmuc_welt pub1 (v2)")
	want = append(want, pointedAt(8, "192.0.2.2:40012", "99", true)...)
	want = append(want,
		pingB+" -> no answer",
		pingB+" -> no answer",
		"push http://broker ffmuc_welt pub1 (v2)")
	want = append(want, pointedAt(8, "192.0.2.2:40012", "99", false)...) // the same gateway: the link stays
	want = append(want,
		pingB+" -> ok",
		"ticker stopped") // kernel WireGuard: the interfaces stay
	fakekernel.Diff(t, f.Transcript(), want)
	if n := strings.Count(out.String(), "connected: "); n != 1 {
		t.Errorf("%d connected lines, want 1:\n%s", n, out.String())
	}
}

// TestRunUserspaceRemovedFromOutside: a userspace node stays in the
// foreground; when its interface is removed (client disconnect) it
// removes the rest and returns.
func TestRunUserspaceRemovedFromOutside(t *testing.T) {
	f := newFakeOS()
	f.NoKernelWG = true
	f.answers = []pushAnswer{{ep: gwA}}
	events := make(await.Log, 100)
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), f.system(), options(t, nil, slog.New(events))) }()
	events.Await(t, "userspace WireGuard running")
	dev := f.Userspace("wg-mesh")
	dev.RemoveFromOutside()
	if err := await.Returned(t, done, "run"); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), append(connected("userspace"),
		"(outside) link del wg-mesh",
		"link del vx-mesh", "link del wg-mesh", "userspace wg-mesh closed"))
}

// TestRunUserspaceWatchStopped: SIGINT/SIGTERM (ctx) ends the watch and
// removes a userspace node's interfaces.
func TestRunUserspaceWatchStopped(t *testing.T) {
	f := newFakeOS()
	f.answers = []pushAnswer{{ep: gwA}}
	o := options(t, nil, quiet())
	o.Userspace, o.Watch = true, true
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, f.system(), o) }()
	f.awaitIdle(t)
	cancel()
	if err := await.Returned(t, done, "run"); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), append(connected("userspace"), "ticker every 1m0s",
		"ticker stopped", "link del vx-mesh", "link del wg-mesh", "userspace wg-mesh closed"))
}

// TestConnectFailures: a node that cannot register closes the userspace
// device it made; a kernel interface stays, to be reused by the next try.
func TestConnectFailures(t *testing.T) {
	bad := *gwA
	bad.AllowedIPs = []string{"gateway"}
	start := func(mode string) []string {
		return []string{"wireguard add wg-mesh (" + mode + ")", "wg set wg-mesh private-key key1"}
	}
	for _, tc := range []struct {
		name      string
		userspace bool
		existing  bool
		answer    pushAnswer
		failOn    string
		wantErr   string
		want      []string
	}{
		{name: "refused, userspace", userspace: true, answer: pushAnswer{err: &httpError{Status: 400, Message: "unknown domain"}},
			wantErr: "broker answered 400", want: append(start("userspace"),
				"push http://broker ffmuc_welt pub1 (v2) -> FAIL", "userspace wg-mesh closed")},
		{name: "refused, kernel", answer: pushAnswer{err: &httpError{Status: 400, Message: "unknown domain"}},
			wantErr: "broker answered 400", want: append(start("kernel"), "push http://broker ffmuc_welt pub1 (v2) -> FAIL")},
		{name: "v1 answer", answer: pushAnswer{}, wantErr: "v1 answer",
			want: append(start("kernel"), "push http://broker ffmuc_welt pub1 (v2)")},
		{name: "bad gateway address", answer: pushAnswer{ep: &bad}, wantErr: "gateway AllowedIPs[0]",
			want: append(start("kernel"), "push http://broker ffmuc_welt pub1 (v2)")},
		{name: "existing interface reused", existing: true, answer: pushAnswer{ep: gwA}, failOn: "link add vx-mesh", wantErr: "refused",
			want: []string{"wg set wg-mesh private-key key1", "push http://broker ffmuc_welt pub1 (v2)",
				"wg set wg-mesh replace-peers peer pub7 endpoint 192.0.2.1:40011 persistent-keepalive 25 allowed-ips " + ll(7) + "/128",
				"addr add " + ll(1) + "/128 dev wg-mesh", "link set wg-mesh up", "route replace " + ll(7) + "/128 dev wg-mesh",
				"link del vx-mesh",
				"link add vx-mesh type vxlan id 99 local " + ll(1) + " remote " + ll(7) + " dev wg-mesh dstport 8472 -> FAIL"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeOS()
			f.answers, f.FailOn = []pushAnswer{tc.answer}, tc.failOn
			if tc.existing {
				f.AddWireGuard(wgtypes.Device{Name: "wg-mesh"})
			}
			var out bytes.Buffer
			o := options(t, &out, quiet())
			o.Userspace, o.Watch = tc.userspace, true
			err := run(context.Background(), f.system(), o)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			fakekernel.Diff(t, f.Transcript(), tc.want)
			if out.Len() != 0 {
				t.Errorf("printed %q", out.String())
			}
		})
	}
}

func TestDisconnect(t *testing.T) {
	f := newFakeOS()
	if err := disconnect(f, "wg-mesh", "vx-mesh"); err != nil {
		t.Fatal(err)
	}
	fakekernel.Diff(t, f.Transcript(), []string{"link del vx-mesh", "link del wg-mesh"})
	f = newFakeOS()
	f.FailOn = "link del vx-mesh"
	if err := disconnect(f, "wg-mesh", "vx-mesh"); err == nil {
		t.Fatal("failure not reported")
	}
	fakekernel.Diff(t, f.Transcript(), []string{"link del vx-mesh -> FAIL", "link del wg-mesh"})
}

func TestLoadOrCreateKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "wg.key")
	k, err := loadOrCreateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	again, err := loadOrCreateKey(p)
	if err != nil || again != k {
		t.Fatalf("second load: %v, same key %v", err, again == k)
	}
	if err := os.WriteFile(p, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOrCreateKey(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("bad key file: %v", err)
	}
}
