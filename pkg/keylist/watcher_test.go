package keylist

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// eventTimeout bounds every wait for a reload; reaching it is a failure.
const eventTimeout = 10 * time.Second

// harness runs a Watcher over a file in a temporary directory and records
// its notifications.
type harness struct {
	t       *testing.T
	file    string
	w       *Watcher
	changes chan change
	errs    chan error
}

func newHarness(t *testing.T, content string, configure func(*Options)) *harness {
	t.Helper()
	h := &harness{t: t, file: filepath.Join(t.TempDir(), "blocklist.yaml"),
		changes: make(chan change, 100), errs: make(chan error, 100)}
	if content != "" {
		h.write(content)
	}
	o := Options{
		Name: "blocklist", File: h.file,
		OnChange: func(c change) { h.changes <- c },
		onError:  func(err error) { h.errs <- err },
	}
	if configure != nil {
		configure(&o)
	}
	w, err := Start(context.Background(), o)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	h.w = w
	t.Cleanup(w.Close)
	return h
}

// write replaces the file's contents in place, as `>` in a shell does.
func (h *harness) write(content string) {
	h.t.Helper()
	if err := os.WriteFile(h.file, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// replace writes a new file beside the list and renames it over the list,
// as editors and configuration management do.
func (h *harness) replace(content string) {
	h.t.Helper()
	tmp := filepath.Join(filepath.Dir(h.file), ".blocklist.yaml.swp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Rename(tmp, h.file); err != nil {
		h.t.Fatal(err)
	}
}

// waitChange returns the first change whose new list satisfies ok. Partial
// states (an in-place write seen half way) may come first.
func (h *harness) waitChange(what string, ok func(*List) bool) change {
	h.t.Helper()
	timeout := time.After(eventTimeout)
	for {
		select {
		case c := <-h.changes:
			if ok(c.New) {
				return c
			}
		case <-timeout:
			h.t.Fatalf("no reload with %s within %v; list in use has %d entries", what, eventTimeout, h.w.List().Len())
		}
	}
}

// changeNow returns the change Reload has just made: OnChange runs before
// Reload returns.
func (h *harness) changeNow() change {
	h.t.Helper()
	select {
	case c := <-h.changes:
		return c
	default:
		h.t.Fatal("Reload returned without calling OnChange")
	}
	return change{}
}

func (h *harness) waitError() error {
	h.t.Helper()
	select {
	case err := <-h.errs:
		return err
	case <-time.After(eventTimeout):
		h.t.Fatalf("no failed reload within %v", eventTimeout)
	}
	return nil
}

func TestStartLoads(t *testing.T) {
	h := newHarness(t, "keys:\n  - key: "+key(1)+"\n    reason: spam\n", nil)
	if !h.w.Contains(key(1)) || h.w.Contains(key(2)) || h.w.List().Len() != 1 {
		t.Fatalf("list after Start: %+v", h.w.List().top)
	}
	if e, _ := h.w.List().lookup(key(1)); e.Reason != "spam" {
		t.Errorf("reason = %q", e.Reason)
	}
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "absent.yaml")
	_, err := Start(context.Background(), Options{Name: "blocklist", File: missing})
	if err == nil || !strings.Contains(err.Error(), "blocklist") || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}

	broken := filepath.Join(dir, "broken.yaml")
	if err := os.WriteFile(broken, []byte("- "+key(1)+"\n- nope\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Start(context.Background(), Options{Name: "blocklist", File: broken})
	if err == nil || !strings.Contains(err.Error(), broken) || !strings.Contains(err.Error(), "line 2: invalid key") {
		t.Errorf("broken file: %v", err)
	}

	if _, err := Start(context.Background(), Options{File: broken}); err == nil {
		t.Error("Start without Name succeeded")
	}
}

// An optional file absent at Start is an empty list, and is loaded once it
// appears.
func TestOptionalFileAppears(t *testing.T) {
	h := newHarness(t, "", func(o *Options) { o.Optional = true })
	if h.w.List().Len() != 0 {
		t.Fatal("absent optional file is not empty")
	}
	h.replace("- " + key(7) + "\n")
	c := h.waitChange("key 7", func(l *List) bool { return l.contains(key(7)) })
	if len(c.Added) != 1 || c.Added[0] != key(7) {
		t.Errorf("Added = %v", c.Added)
	}
}

func TestReloadOnWrite(t *testing.T) {
	h := newHarness(t, "- "+key(1)+"\n", func(o *Options) { o.CheckInterval = -1 })
	h.write("- " + key(1) + "\n- " + key(2) + "\n- " + key(3) + "\n")
	c := h.waitChange("keys 1-3", func(l *List) bool { return l.Len() == 3 })
	if !h.w.Contains(key(2)) || !h.w.Contains(key(3)) {
		t.Error("the watcher's list is not the one notified")
	}
	if c.Old == nil || !c.Old.contains(key(1)) {
		t.Errorf("Old = %+v", c.Old)
	}
}

func TestReloadOnRename(t *testing.T) {
	h := newHarness(t, "- "+key(1)+"\n", func(o *Options) { o.CheckInterval = -1 })
	h.replace("- " + key(2) + "\n")
	c := h.waitChange("key 2 only", func(l *List) bool { return l.contains(key(2)) })
	if fmt.Sprint(c.Added) != fmt.Sprint([]string{key(2)}) || fmt.Sprint(c.Removed) != fmt.Sprint([]string{key(1)}) {
		t.Errorf("Added %v, Removed %v", c.Added, c.Removed)
	}
	if h.w.Contains(key(1)) {
		t.Error("key 1 still listed")
	}
	// A second replacement: the directory watch survives the first rename.
	h.replace("- " + key(3) + "\n")
	h.waitChange("key 3", func(l *List) bool { return l.contains(key(3)) })
}

// The file may be a symbolic link into another directory (Kubernetes
// ConfigMaps, configuration management); a change there is seen too.
func TestReloadThroughSymlink(t *testing.T) {
	target := filepath.Join(t.TempDir(), "real.yaml")
	if err := os.WriteFile(target, []byte("- "+key(1)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "blocklist.yaml")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	changes := make(chan change, 10)
	w, err := Start(context.Background(), Options{Name: "blocklist", File: link, CheckInterval: -1,
		OnChange: func(c change) { changes <- c }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := os.WriteFile(target, []byte("- "+key(1)+"\n- "+key(2)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(eventTimeout)
	for !w.Contains(key(2)) {
		select {
		case <-changes:
		case <-timeout:
			t.Fatal("change behind a symbolic link not seen")
		}
	}
}

func TestReloadCall(t *testing.T) {
	h := newHarness(t, "- "+key(1)+"\n- "+key(2)+"\n", func(o *Options) {
		o.noNotify, o.CheckInterval = true, -1
	})
	h.write("- " + key(2) + "\n")
	if !h.w.Contains(key(1)) {
		t.Fatal("reloaded without notification, check or Reload")
	}
	if err := h.w.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if h.w.Contains(key(1)) || !h.w.Contains(key(2)) {
		t.Fatal("Reload did not install the new list")
	}
	c := h.changeNow()
	if len(c.Added) != 0 || fmt.Sprint(c.Removed) != fmt.Sprint([]string{key(1)}) {
		t.Errorf("Added %v, Removed %v", c.Added, c.Removed)
	}
	// Reload rereads an unchanged file too (SIGHUP after a fix elsewhere).
	if err := h.w.Reload(); err != nil {
		t.Fatal(err)
	}
	if c := h.changeNow(); len(c.Added)+len(c.Removed) != 0 {
		t.Errorf("unchanged reload: Added %v, Removed %v", c.Added, c.Removed)
	}
}

func TestPeriodicFallback(t *testing.T) {
	h := newHarness(t, "- "+key(1)+"\n", func(o *Options) {
		o.noNotify, o.CheckInterval = true, 5*time.Millisecond
	})
	h.replace("- " + key(4) + "\n")
	h.waitChange("key 4", func(l *List) bool { return l.contains(key(4)) })
	h.replace("- " + key(5) + "\n")
	c := h.waitChange("key 5", func(l *List) bool { return l.contains(key(5)) })
	if !c.Old.contains(key(4)) {
		t.Errorf("reload to key 5 from %+v", c.Old.top)
	}
	// Checks of an unchanged file do not reload it; those of a broken file
	// report it once.
	ok := h.w.reloadsOK.Load()
	for i := 0; i < 3; i++ {
		h.w.check(false)
	}
	if got := h.w.reloadsOK.Load(); got != ok {
		t.Errorf("unchanged file reloaded %d times", got-ok)
	}
	h.replace("- broken\n")
	h.waitError()
	for i := 0; i < 3; i++ {
		h.w.check(false)
	}
	if got := h.w.reloadsFailed.Load(); got != 1 {
		t.Errorf("broken file reported %d times, want once", got)
	}
	if len(h.changes) != 0 || len(h.errs) != 0 {
		t.Errorf("%d changes and %d errors after the checks", len(h.changes), len(h.errs))
	}
}

func TestBrokenFileKeepsLastGood(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, "- "+key(1)+"\n", func(o *Options) {
		o.CheckInterval = -1
		o.Registerer = reg
	})

	for _, c := range []struct{ name, src, want string }{
		{"bad key", "- " + key(1) + "\n- " + key(2) + "\n- garbage\n", "line 3: invalid key \"garbage\""},
		{"duplicate", "- " + key(2) + "\n- " + key(2) + "\n", "line 2: duplicate key"},
		{"bad YAML", "keys: [" + key(2) + "\n", "blocklist.yaml"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h.replace(c.src)
			err := h.waitError()
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), h.file) {
				t.Errorf("error %q lacks %q or the file name", err, c.want)
			}
			if !h.w.Contains(key(1)) || h.w.Contains(key(2)) || h.w.List().Len() != 1 {
				t.Errorf("list in use changed: %+v", h.w.List().top)
			}
			// Reload reports the same problem.
			if err := h.w.Reload(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Reload = %v", err)
			}
			select {
			case <-h.errs:
			default:
				t.Error("Reload failed without calling onError")
			}
		})
	}

	// A deleted file is a failed reload too; the list stays.
	if err := os.Remove(h.file); err != nil {
		t.Fatal(err)
	}
	if err := h.waitError(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("deleted file: %v", err)
	}
	if !h.w.Contains(key(1)) {
		t.Error("deleting the file emptied the list")
	}

	// Fixed: the next good version is installed.
	h.replace("- " + key(2) + "\n")
	h.waitChange("key 2", func(l *List) bool { return l.contains(key(2)) })

	// 3 broken versions, each seen once and reloaded once more by hand,
	// and the deletion: 7 failures; the initial load and the fix are ok.
	if got := counter(t, reg, "wgkex_keylist_reloads_total", "failed"); got != 7 {
		t.Errorf("failed reloads = %v, want 7", got)
	}
	if got := counter(t, reg, "wgkex_keylist_reloads_total", "ok"); got != 2 {
		t.Errorf("ok reloads = %v, want 2", got)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	before := time.Now()
	block := newHarness(t, "- "+key(1)+"\n- "+key(2)+"\n", func(o *Options) { o.Registerer = reg; o.CheckInterval = -1 })
	// A second list on the same registry, told apart by the list label.
	allow := newHarness(t, "domains: {ffmuc_welt: ["+key(3)+"]}\n", func(o *Options) {
		o.Name, o.PerDomain, o.Registerer, o.CheckInterval = "allowlist", true, reg, -1
	})
	_ = allow

	if got := gauge(t, reg, "wgkex_keylist_entries", "blocklist"); got != 2 {
		t.Errorf("blocklist entries = %v", got)
	}
	if got := gauge(t, reg, "wgkex_keylist_entries", "allowlist"); got != 1 {
		t.Errorf("allowlist entries = %v", got)
	}
	ts := gauge(t, reg, "wgkex_keylist_last_reload_timestamp_seconds", "blocklist")
	if ts < float64(before.Unix()) || ts > float64(time.Now().Unix()+1) {
		t.Errorf("last reload %v, want about %v", ts, before.Unix())
	}

	block.replace("- " + key(1) + "\n")
	block.waitChange("one key", func(l *List) bool { return l.Len() == 1 })
	if got := gauge(t, reg, "wgkex_keylist_entries", "blocklist"); got != 1 {
		t.Errorf("blocklist entries after reload = %v", got)
	}

	// Another list of the same name on the registry is refused.
	if _, err := Start(context.Background(), Options{Name: "blocklist", File: block.file, Registerer: reg}); err == nil {
		t.Error("a second blocklist registered its metrics")
	}

	// Stopping unregisters.
	block.w.Close()
	for _, mf := range gather(t, reg) {
		for _, m := range mf.Metric {
			if labelValue(m, "list") == "blocklist" {
				t.Fatalf("%s{list=blocklist} still exported after Close", mf.GetName())
			}
		}
	}
}

// Stopping, by Close or by the context, ends every goroutine the watcher
// started (its own and fsnotify's).
func TestStopLeavesNoGoroutine(t *testing.T) {
	for _, how := range []string{"Close", "context"} {
		t.Run(how, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			f := filepath.Join(t.TempDir(), "l.yaml")
			if err := os.WriteFile(f, []byte("- "+key(1)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			w, err := Start(ctx, Options{Name: "l", File: f, CheckInterval: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			if n := watcherGoroutines(); n == 0 {
				t.Fatal("no watcher goroutine found: the leak check cannot see them")
			}
			if how == "Close" {
				w.Close()
			} else {
				cancel()
				select {
				case <-w.done:
				case <-time.After(eventTimeout):
					t.Fatal("watcher did not stop with its context")
				}
			}
			// fsnotify's reader has ended when Close returns; the runtime
			// may take a moment to drop the goroutine from its list.
			deadline := time.Now().Add(eventTimeout)
			for watcherGoroutines() > 0 {
				if time.Now().After(deadline) {
					buf := make([]byte, 1<<20)
					t.Fatalf("goroutines left after stop:\n%s", buf[:runtime.Stack(buf, true)])
				}
				runtime.Gosched()
			}
			if !w.Contains(key(1)) {
				t.Error("the list is gone after stop")
			}
		})
	}
}

// watcherGoroutines counts goroutines that this package or fsnotify
// started, by their "created by" line (one not yet running shows only a
// wrapper function).
func watcherGoroutines() int {
	buf := make([]byte, 1<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "created by github.com/freifunkMUC/wgkex/pkg/keylist.") ||
			strings.Contains(g, "created by github.com/fsnotify/fsnotify.") {
			n++
		}
	}
	return n
}

// Lookups run while the list is swapped; each snapshot is one whole
// version. Run with -race.
func TestConcurrentLookups(t *testing.T) {
	versionA := "- " + key(1) + "\n"
	versionB := "- " + key(2) + "\n"
	h := newHarness(t, versionA, func(o *Options) { o.noNotify, o.CheckInterval = true, -1 })

	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				l := h.w.List()
				if l.contains(key(1)) == l.contains(key(2)) {
					errs <- "a snapshot with both or neither key"
					return
				}
				h.w.Contains(key(3))
				h.w.Allowed("ffmuc_welt", key(1))
			}
		}()
	}
	for i := 0; i < 200; i++ {
		v := versionA
		if i%2 == 0 {
			v = versionB
		}
		h.write(v)
		if err := h.w.Reload(); err != nil {
			t.Fatal(err)
		}
		h.changeNow()
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestNilWatcher(t *testing.T) {
	var w *Watcher
	if w.Contains(key(1)) || !w.Allowed("ffmuc_welt", key(1)) || w.List().Len() != 0 {
		t.Error("the nil watcher is not an empty, unrestricted list")
	}
}

func gather(t *testing.T, reg *prometheus.Registry) []*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func find(t *testing.T, reg *prometheus.Registry, name string, match func(*dto.Metric) bool) *dto.Metric {
	t.Helper()
	for _, mf := range gather(t, reg) {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if match(m) {
				return m
			}
		}
	}
	t.Fatalf("metric %s not found", name)
	return nil
}

func gauge(t *testing.T, reg *prometheus.Registry, name, list string) float64 {
	t.Helper()
	return find(t, reg, name, func(m *dto.Metric) bool { return labelValue(m, "list") == list }).GetGauge().GetValue()
}

func counter(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	return find(t, reg, name, func(m *dto.Metric) bool {
		return labelValue(m, "list") == "blocklist" && labelValue(m, "result") == result
	}).GetCounter().GetValue()
}
