package keylist

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// defaultCheckInterval is how often the file is compared with the list in
// use when Options.CheckInterval is 0. The check catches what file
// notification misses (network file systems, a replaced directory).
const defaultCheckInterval = 30 * time.Second

// defaultSettle is how long the watcher waits after a file system event
// before reading the file, so that an editor's write-then-rename arrives
// as one reload, not a half-written file and a complaint.
const defaultSettle = 50 * time.Millisecond

// Options configure a Watcher.
type Options struct {
	// Name says which list this is in log lines and in the metrics' list
	// label: "blocklist", "allowlist", "keep_keys".
	Name string
	// File is the list file.
	File string
	// PerDomain admits the "domains" form (allow lists).
	PerDomain bool
	// Optional makes a file missing at Start an empty list instead of an
	// error. After Start a missing file is always a failed reload that keeps
	// the list in use: an accidentally deleted block list keeps blocking.
	Optional bool
	// CheckInterval is how often the file is checked for changes besides
	// file notification; 0 means every 30s, < 0 none.
	CheckInterval time.Duration
	// OnChange, if set, is called after every successful reload with the
	// new list (not for the initial load). Calls are serialized and come
	// from the watcher's goroutine or from Reload's caller; OnChange must
	// not call Reload.
	OnChange func(change)
	// Logger gets a line for every reload; nil discards them.
	Logger *slog.Logger
	// Registerer, if set, gets the list's metrics (see Start).
	Registerer prometheus.Registerer

	// test hooks
	noNotify bool          // no fsnotify: only the periodic check and Reload
	settle   time.Duration // 0: defaultSettle
	onError  func(error)   // called after every failed reload
}

// change describes a successful reload.
type change struct {
	Old, New *List
	// Added and Removed are the keys listed anywhere in New but nowhere in
	// Old, and the reverse; sorted. For a block list, Added are the keys a
	// worker must now remove.
	Added, Removed []string
}

// Watcher keeps a list file's current contents. Lookups read an immutable
// snapshot through an atomic pointer, so they cost one map lookup and never
// wait for a reload. The nil *Watcher is an empty list with no restriction,
// so a command can pass the method values of an unconfigured list.
type Watcher struct {
	opts Options
	log  *slog.Logger
	cur  atomic.Pointer[List]

	mu   sync.Mutex // serializes reloads and OnChange
	seen [sha256.Size]byte

	reloadsOK, reloadsFailed atomic.Uint64
	lastReload               atomic.Int64 // Unix nanoseconds of the load in use

	cancel context.CancelFunc
	done   chan struct{}
}

// Start loads the file and then keeps it current until ctx ends or Close is
// called: it reloads when the file's directory reports a change (editors
// replace files by rename, so the directory is watched, not the file), on
// every CheckInterval when the contents differ, and on Reload (for SIGHUP).
// A failed reload logs why and keeps the list in use.
//
// A missing file (unless Optional) or an invalid one is an error: the
// command should report it and exit, as it does for a bad configuration.
//
// With a Registerer, Start registers wgkex_keylist_entries{list},
// wgkex_keylist_reloads_total{list,result} (result "ok" or "failed"; the
// initial load counts) and wgkex_keylist_last_reload_timestamp_seconds{list}
// (when the list in use was loaded); they are unregistered when the
// watcher stops.
func Start(ctx context.Context, o Options) (*Watcher, error) {
	if o.Name == "" || o.File == "" {
		return nil, errors.New("keylist: Name and File are required")
	}
	if o.CheckInterval == 0 {
		o.CheckInterval = defaultCheckInterval
	}
	if o.settle <= 0 {
		o.settle = defaultSettle
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{opts: o, log: log.With("list", o.Name, "file", o.File), done: make(chan struct{})}

	data, err := readFile(o.File)
	switch {
	case err == nil:
		l, err := parse(o.File, data, o.PerDomain)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.Name, err)
		}
		w.cur.Store(l)
		w.seen = sha256.Sum256(data)
	case o.Optional && errors.Is(err, fs.ErrNotExist):
		w.cur.Store(&List{})
		w.seen = errorPrint(err)
		w.log.Info("key list file absent; the list is empty until it appears")
	default:
		return nil, fmt.Errorf("%s: %w", o.Name, err)
	}
	w.reloadsOK.Add(1)
	w.lastReload.Store(time.Now().UnixNano())

	var coll *collector
	if o.Registerer != nil {
		coll = newCollector(w)
		if err := o.Registerer.Register(coll); err != nil {
			return nil, fmt.Errorf("%s: register metrics: %w", o.Name, err)
		}
	}
	notify := w.startNotify()

	ctx, w.cancel = context.WithCancel(ctx)
	go w.run(ctx, notify, coll)
	w.log.Info("key list loaded", "entries", w.List().Len())
	return w, nil
}

// startNotify watches the file's directory, and the directory of its
// target when it is a symbolic link. Without notification the periodic
// check still runs, so a failure is only logged.
func (w *Watcher) startNotify() *fsnotify.Watcher {
	if w.opts.noNotify {
		return nil
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		w.log.Warn("no file notification; relying on the periodic check", "err", err)
		return nil
	}
	dirs := []string{filepath.Dir(w.opts.File)}
	if target, err := filepath.EvalSymlinks(w.opts.File); err == nil && filepath.Dir(target) != dirs[0] {
		dirs = append(dirs, filepath.Dir(target))
	}
	added := 0
	for _, d := range dirs {
		if err := fw.Add(d); err != nil {
			w.log.Warn("cannot watch directory; relying on the periodic check", "dir", d, "err", err)
			continue
		}
		added++
	}
	if added == 0 {
		fw.Close()
		return nil
	}
	return fw
}

func (w *Watcher) run(ctx context.Context, fw *fsnotify.Watcher, coll *collector) {
	defer close(w.done)
	if coll != nil {
		defer w.opts.Registerer.Unregister(coll)
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if fw != nil {
		defer fw.Close()
		events, errs = fw.Events, fw.Errors
	}
	var tick <-chan time.Time
	if w.opts.CheckInterval > 0 {
		t := time.NewTicker(w.opts.CheckInterval)
		defer t.Stop()
		tick = t.C
	}
	// settle is armed by the first event of a burst and read once it fires.
	var settle <-chan time.Time
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			w.check(false)
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			// Any event in the directory may concern the file (Kubernetes
			// swaps a ..data symlink, not the file); check compares the
			// contents, so unrelated events cost one read.
			if settle == nil {
				timer = time.NewTimer(w.opts.settle)
				settle = timer.C
			}
		case <-settle:
			settle = nil
			w.check(false)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			w.log.Warn("file notification", "err", err)
		}
	}
}

// List is the list in use.
func (w *Watcher) List() *List {
	if w == nil {
		return nil
	}
	return w.cur.Load()
}

// Contains reports whether key is in the top-level list in use.
func (w *Watcher) Contains(key string) bool { return w.List().contains(key) }

// Allowed applies the list in use as an allow list (see List.Allowed).
func (w *Watcher) Allowed(domain, key string) bool { return w.List().allowed(domain, key) }

// Reload reads the file now, even when it seems unchanged, and returns why
// it was rejected (the error is also logged, and the list in use stays).
func (w *Watcher) Reload() error { return w.check(true) }

// Close stops the watcher and waits for its goroutine to end. The list in
// use stays readable.
func (w *Watcher) Close() {
	w.cancel()
	<-w.done
}

// check reloads the file when its contents (or the reason it cannot be
// read) differ from the last check, or always when force is set. Failures
// are thus logged once per broken version, not on every tick.
func (w *Watcher) check(force bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	data, err := readFile(w.opts.File)
	fp := sha256.Sum256(data)
	if err != nil {
		fp = errorPrint(err)
	}
	if !force && fp == w.seen {
		return nil
	}
	w.seen = fp
	var l *List
	if err == nil {
		l, err = parse(w.opts.File, data, w.opts.PerDomain)
	}
	if err != nil {
		w.reloadsFailed.Add(1)
		w.log.Error("key list not reloaded; keeping the list in use", "err", err, "entries", w.List().Len())
		if w.opts.onError != nil {
			w.opts.onError(err)
		}
		return fmt.Errorf("%s: %w", w.opts.Name, err)
	}
	old := w.cur.Swap(l)
	w.reloadsOK.Add(1)
	w.lastReload.Store(time.Now().UnixNano())
	added, removed := diff(old, l)
	w.log.Info("key list reloaded", "entries", l.Len(), "added", len(added), "removed", len(removed))
	if w.opts.OnChange != nil {
		w.opts.OnChange(change{Old: old, New: l, Added: added, Removed: removed})
	}
	return nil
}

// errorPrint stands for an unreadable file in check's comparison, so that
// the same failure is reported once.
func errorPrint(err error) [sha256.Size]byte {
	return sha256.Sum256([]byte("\x00unreadable: " + err.Error()))
}

func diff(old, new *List) (added, removed []string) {
	before, after := old.allKeys(), new.allKeys()
	for k := range after {
		if _, ok := before[k]; !ok {
			added = append(added, k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			removed = append(removed, k)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed
}
