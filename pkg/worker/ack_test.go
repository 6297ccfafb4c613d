package worker

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// acker returns an acknowledgement for key that records itself in the
// fake's transcript, so tests see it in order with the kernel calls.
func acker(f *fakeOS, key string) func() error {
	return func() error { f.rec("ack %s", short(key)); return nil }
}

func newAckWorker(f *fakeOS, stateDir string) *Worker {
	return New(Options{
		Name: "gw1", Domains: map[string]wgkex.Interfaces{"ffmuc_welt": {WireGuard: "wg-welt", VXLAN: "vx-welt"}},
		WireGuard: f, Kernel: f, BatchSize: 2, StateDir: stateDir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

// installQueued runs the loop's install step over what is queued.
func (w *Worker) installQueued() {
	for len(w.queue) > 0 {
		w.installBatch(w.drain(<-w.queue))
	}
}

func TestKeysAcknowledgedOnceInstalled(t *testing.T) {
	f := newFake()
	w := newAckWorker(f, t.TempDir())
	w.checkLinks(context.Background())
	ctx := context.Background()
	f.calls = nil
	w.receive(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte("garbage"), acker(f, "garbage"))
	w.receive(ctx, "wireguard/ffmuc_mars/all", []byte(key(9)), acker(f, "mars"))
	w.receive(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte(key(1)), acker(f, key(1)))
	w.receive(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte(key(1)), acker(f, key(1))) // the same key again
	w.receive(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte(key(2)), acker(f, key(2)))
	// What is dropped is acknowledged at once; keys are not, while queued.
	diff(t, f.calls, []string{"ack garb", "ack mars"})

	f.calls = nil
	w.installQueued()
	diff(t, f.calls, []string{
		"configure wg-welt +" + short(key(1)) + " " + ll(1) + "/128, +" + short(key(2)) + " " + ll(2) + "/128",
		"route replace " + ll(1) + "/128 dev 10",
		"fdb append dev 11 dst " + ll(1) + " via 10",
		"route replace " + ll(2) + "/128 dev 10",
		"fdb append dev 11 dst " + ll(2) + " via 10",
		"ack " + short(key(1)),
		"ack " + short(key(1)),
		"ack " + short(key(2)),
	})
}

func TestStoppedWorkerTakesNoKeys(t *testing.T) {
	f := newFake()
	w := newAckWorker(f, t.TempDir())
	ctx := context.Background()
	w.receive(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte(key(1)), acker(f, key(1)))
	w.stopReceiving()
	w.receive(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte(key(2)), acker(f, key(2)))
	w.receive(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte("garbage"), acker(f, "garbage"))
	// The echo of the goodbye: acknowledged, so that the next run does not
	// get it again, and not acted on.
	w.receive(ctx, wgkex.StatusTopic("gw1"), []byte("0"), acker(f, "status"))
	if len(w.queue) != 1 {
		t.Errorf("queued %d, want only the key from before the stop", len(w.queue))
	}
	diff(t, f.calls, []string{"ack stat"})
	if len(w.overwritten) != 0 {
		t.Error("the goodbye's echo taken for an overwrite")
	}
}

// A full queue makes receive wait; stopping ends the wait without taking
// (or acknowledging) the key.
func TestStopEndsWaitOnFullQueue(t *testing.T) {
	f := newFake()
	w := New(Options{Name: "gw1", Domains: map[string]wgkex.Interfaces{"ffmuc_welt": {WireGuard: "wg-welt", VXLAN: "vx-welt"}},
		WireGuard: f, Kernel: f, QueueSize: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx := context.Background()
	w.receive(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte(key(1)), acker(f, key(1)))
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		w.receive(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte(key(2)), func() error { t.Error("key 2 acknowledged"); return nil })
	}()
	w.stopReceiving() // returns only once receive has
	<-returned
	if len(w.queue) != 1 {
		t.Errorf("queued %d, want 1", len(w.queue))
	}
}

func TestMissingInterfacesJournal(t *testing.T) {
	dir := t.TempDir()
	journal := filepath.Join(dir, "worker-gw1.journal")
	f := newFake()
	delete(f.links, "vx-welt")
	w := newAckWorker(f, dir)
	w.checkLinks(context.Background())
	ctx := context.Background()
	journaled := func(k string) func() error {
		return func() error {
			data, _ := os.ReadFile(journal)
			if !strings.Contains(string(data), "ffmuc_welt\t"+k+"\n") {
				t.Errorf("key %s acknowledged before it was in the journal:\n%s", short(k), data)
			}
			f.rec("ack %s", short(k))
			return nil
		}
	}
	for _, k := range []string{key(1), key(2), key(1)} {
		w.receive(ctx, wgkex.KeyTopic("ffmuc_welt"), []byte(k), journaled(k))
	}
	w.installQueued()
	diff(t, f.calls, []string{"ack " + short(key(1)), "ack " + short(key(2)), "ack " + short(key(1))})
	data, err := os.ReadFile(journal)
	if err != nil || strings.Count(string(data), "\n") != 2 {
		t.Fatalf("journal: %q %v", data, err)
	}
	// A torn last line, as a crash in the middle of an append leaves it,
	// and lines that are not ours are skipped.
	os.WriteFile(journal, append(data, []byte("ffmuc_mars\t"+key(3)+"\nffmuc_welt\tnot-a-key\nffmuc_welt\t"+key(4)[:20])...), 0o600)

	// The worker is killed; the next one finds the keys and installs them
	// once the interfaces exist, then forgets the journal.
	f.links["vx-welt"] = 12
	f.calls = nil
	w = newAckWorker(f, dir)
	w.loadJournal()
	w.checkLinks(context.Background())
	diff(t, f.calls, []string{
		"configure wg-welt +" + short(key(1)) + " " + ll(1) + "/128, +" + short(key(2)) + " " + ll(2) + "/128",
		"route replace " + ll(1) + "/128 dev 10",
		"fdb append dev 12 dst " + ll(1) + " via 10",
		"route replace " + ll(2) + "/128 dev 10",
		"fdb append dev 12 dst " + ll(2) + " via 10",
	})
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Errorf("journal left after every key was installed: %v", err)
	}
}

// Without a usable journal, keys for missing interfaces stay
// unacknowledged (the server keeps them) until they are installed.
func TestUnwritableJournalHoldsKeys(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	f := newFake()
	delete(f.links, "vx-welt")
	w := newAckWorker(f, filepath.Join(file, "state")) // a directory under a file
	w.checkLinks(context.Background())
	w.receive(context.Background(), wgkex.KeyTopic("ffmuc_welt"), []byte(key(1)), acker(f, key(1)))
	w.installQueued()
	if len(f.calls) != 0 {
		t.Fatalf("acknowledged or installed without interfaces and journal: %v", f.calls)
	}
	f.links["vx-welt"] = 12
	w.checkLinks(context.Background())
	diff(t, f.calls, []string{
		"configure wg-welt +" + short(key(1)) + " " + ll(1) + "/128",
		"route replace " + ll(1) + "/128 dev 10",
		"fdb append dev 12 dst " + ll(1) + " via 10",
		"ack " + short(key(1)),
	})
}

// A key the kernel refuses stays unacknowledged while it is retried, is
// then kept in the journal and acknowledged, and is installed once the
// kernel takes it.
func TestRefusedKeyRetriedThenKept(t *testing.T) {
	dir := t.TempDir()
	f := newFake()
	w := newAckWorker(f, dir)
	w.timing.retryBase, w.timing.retryHold = 0, time.Hour
	w.checkLinks(context.Background())
	f.failKey = key(1)
	acked := 0
	w.receive(context.Background(), wgkex.KeyTopic("ffmuc_welt"), []byte(key(1)), func() error { acked++; return nil })
	w.installQueued()
	w.retryDue()
	if acked != 0 || len(w.retry) != 1 || w.retry[0].retry.attempts != 2 {
		t.Fatalf("after two refusals: acked %d, retry %+v", acked, w.retry)
	}
	w.timing.retryHold = 0 // held long enough
	w.retryDue()
	data, _ := os.ReadFile(filepath.Join(dir, "worker-gw1.journal"))
	if acked != 1 || len(w.retry) != 0 || string(data) != "ffmuc_welt\t"+key(1)+"\n" {
		t.Fatalf("after the hold: acked %d, retry %d, journal %q", acked, len(w.retry), data)
	}
	f.failKey = ""
	f.calls = nil
	w.retryPending()
	diff(t, f.calls, []string{
		"configure wg-welt +" + short(key(1)) + " " + ll(1) + "/128",
		"route replace " + ll(1) + "/128 dev 10",
		"fdb append dev 11 dst " + ll(1) + " via 10",
	})
	if _, err := os.Stat(filepath.Join(dir, "worker-gw1.journal")); !os.IsNotExist(err) {
		t.Errorf("journal left: %v", err)
	}
}

// A kept key the kernel refuses for longer than maxFailing is given up.
func TestRefusedKeptKeyGivenUp(t *testing.T) {
	dir := t.TempDir()
	f := newFake()
	w := newAckWorker(f, dir)
	w.timing.retryHold = -1 // kept at the first refusal
	w.checkLinks(context.Background())
	f.failKey = key(1)
	w.installNow("ffmuc_welt", key(1))
	if len(w.domains["ffmuc_welt"].pending) != 1 {
		t.Fatal("refused key not kept")
	}
	w.retryPending()
	if len(w.domains["ffmuc_welt"].pending) != 1 {
		t.Fatal("given up too early")
	}
	w.timing.maxFailing = 0
	w.retryPending()
	if len(w.domains["ffmuc_welt"].pending) != 0 {
		t.Error("not given up after maxFailing")
	}
	if _, err := os.Stat(filepath.Join(dir, "worker-gw1.journal")); !os.IsNotExist(err) {
		t.Errorf("journal left: %v", err)
	}
}

func TestOwnMessages(t *testing.T) {
	o := newOwnMessages()
	if o.received("s", []byte("0")) {
		t.Error("overwrite of a message not published yet")
	}
	o.publishing("s", []byte("1"))
	// Before the echo: older than the publish, which replaced it.
	if o.received("s", []byte("0")) || o.received("s", nil) {
		t.Error("a message from before the publish taken for an overwrite")
	}
	if o.received("s", []byte("1")) {
		t.Error("the echo taken for an overwrite")
	}
	if !o.received("s", []byte("0")) || !o.received("s", nil) {
		t.Error("overwrite after the echo missed")
	}
	o.publishing("s", []byte("1")) // published again: wait for its echo
	if o.received("s", []byte("0")) {
		t.Error("overwrite before the new echo")
	}
	o.forget("s")
	o.received("s", []byte("1"))
	if o.received("s", []byte("0")) {
		t.Error("forgotten topic watched")
	}
}

// echoPublisher hands every publish to the test and, as the MQTT server
// does, sends the worker's own status and data back to it.
type echoPublisher struct {
	w  *Worker
	ch chan [2]string
}

func (p *echoPublisher) Publish(ctx context.Context, topic string, payload []byte, _ byte, _ bool) error {
	p.ch <- [2]string{topic, string(payload)}
	if topic == wgkex.StatusTopic("gw1") || topic == wgkex.DataTopic("gw1", "ffmuc_welt") {
		p.w.receive(ctx, topic, payload, nil)
	}
	return nil
}

// Another client overwriting the worker's status or data while it runs
// makes it publish them again.
func TestOverwrittenStateIsPublishedAgain(t *testing.T) {
	f := newFake()
	pub := &echoPublisher{ch: make(chan [2]string, 100)}
	w := New(Options{Name: "gw1", Domains: map[string]wgkex.Interfaces{"ffmuc_welt": {WireGuard: "wg-welt", VXLAN: "vx-welt"}},
		WireGuard: f, Kernel: f, Publisher: pub, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	pub.w = w
	w.timing.restore = 0
	status, data := wgkex.StatusTopic("gw1"), wgkex.DataTopic("gw1", "ffmuc_welt")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// waitFor returns the payload of the next publish on topic.
	waitFor := func(topic string) string {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case m := <-pub.ch:
				if m[0] == topic {
					return m[1]
				}
			case <-timeout:
				t.Fatalf("no publish on %s", topic)
				return ""
			}
		}
	}
	ours := waitFor(data) // the start's announcement (interfaces found)
	waitFor(status)
	for _, c := range [][2]string{{status, "0"}, {status, ""}, {data, ""}, {data, `{"Port":1}`}} {
		w.receive(ctx, c[0], []byte(c[1]), nil)
		want := "1"
		if c[0] == data {
			want = ours
		}
		if got := waitFor(c[0]); got != want {
			t.Errorf("after %s was overwritten with %q: published %q, want %q", c[0], c[1], got, want)
		}
	}
}
