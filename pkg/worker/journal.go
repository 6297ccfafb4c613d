package worker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// maxJournalLine bounds one line of the journal when it is read back: a
// domain name (at most 253 bytes), a tab and a key.
const maxJournalLine = 512

// journal keeps, in a file, the keys the worker has acknowledged to the MQTT
// server but not installed yet (their domain's interfaces are missing, or
// the kernel refused them for a while), so that they survive a crash or a
// restart. One line per key: the domain, a tab, the key. New keys are
// appended and synced before they are acknowledged; once keys are installed
// or given up, the file is rewritten with what remains (a temporary file,
// synced, then renamed over the old one), or removed when nothing remains.
// A torn last line (a crash during an append) is skipped when read.
//
// The journal is not safe for concurrent use: the worker calls it with its
// lock held.
type journal struct {
	path string
	f    *os.File // open for appending; nil until the first append
}

func newJournal(dir, worker string) *journal {
	return &journal{path: filepath.Join(dir, "worker-"+worker+".journal")}
}

// check makes sure the journal's directory exists and is writable, so that
// a misconfiguration shows at start rather than when interfaces go missing.
func (j *journal) check() error {
	dir := filepath.Dir(j.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return &fs.PathError{Op: "write", Path: dir, Err: err}
	}
	return nil
}

// entry is one kept key.
type entry struct{ domain, key string }

// read returns the entries of the journal file (none when it does not
// exist) and how many lines were skipped as unreadable. It reads at most
// limit entries.
func (j *journal) read(limit int) (entries []entry, skipped int, err error) {
	f, err := os.Open(j.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	for len(entries) < limit {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// Far too long to be ours: skip to the next newline.
			skipped++
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			if err != nil {
				break
			}
			continue
		}
		if err != nil {
			if len(line) > 0 {
				skipped++ // a torn last line
			}
			break
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		domain, key, ok := strings.Cut(string(line), "\t")
		if !ok || len(line) > maxJournalLine || domain == "" || key == "" {
			skipped++
			continue
		}
		entries = append(entries, entry{domain, key})
	}
	return entries, skipped, nil
}

// append adds entries to the file and syncs it (and, when the file is new,
// its directory), so that they are on disk when it returns.
func (j *journal) append(entries []entry) error {
	if len(entries) == 0 {
		return nil
	}
	if j.f == nil {
		_, statErr := os.Stat(j.path)
		if err := os.MkdirAll(filepath.Dir(j.path), 0o700); err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		if errors.Is(statErr, fs.ErrNotExist) {
			if err := syncDir(filepath.Dir(j.path)); err != nil {
				f.Close()
				return fmt.Errorf("journal: %w", err)
			}
		}
		j.f = f
	}
	var b bytes.Buffer
	for _, e := range entries {
		b.WriteString(e.domain)
		b.WriteByte('\t')
		b.WriteString(e.key)
		b.WriteByte('\n')
	}
	if _, err := j.f.Write(b.Bytes()); err != nil {
		j.closeFile()
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	if err := j.f.Sync(); err != nil {
		j.closeFile()
		return fmt.Errorf("journal %s: sync: %w", j.path, err)
	}
	return nil
}

// rewrite replaces the file with entries: a temporary file, synced, renamed
// over the journal, and the directory synced; with no entries the file is
// removed. A crash leaves either the old or the new journal.
func (j *journal) rewrite(entries []entry) error {
	j.closeFile()
	dir := filepath.Dir(j.path)
	if len(entries) == 0 {
		err := os.Remove(j.path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		return syncDir(dir)
	}
	sort.Slice(entries, func(a, b int) bool {
		if entries[a].domain != entries[b].domain {
			return entries[a].domain < entries[b].domain
		}
		return entries[a].key < entries[b].key
	})
	tmp, err := os.CreateTemp(dir, filepath.Base(j.path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	w := bufio.NewWriter(tmp)
	for _, e := range entries {
		w.WriteString(e.domain)
		w.WriteByte('\t')
		w.WriteString(e.key)
		w.WriteByte('\n')
	}
	err = w.Flush()
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), j.path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("journal %s: rewrite: %w", j.path, err)
	}
	return nil
}

func (j *journal) closeFile() {
	if j.f != nil {
		j.f.Close()
		j.f = nil
	}
}

// syncDir makes a file's creation, rename or removal in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// syncJournal rewrites the journal with the keys still kept. w.mu is held.
func (w *Worker) syncJournal() {
	if w.journal == nil {
		return
	}
	var all []entry
	for _, name := range w.names {
		for k := range w.domains[name].pending {
			all = append(all, entry{name, k})
		}
	}
	if err := w.journal.rewrite(all); err != nil {
		// The old journal stays: at the next start it brings back keys
		// that are installed already, which is harmless.
		w.log.Error("could not rewrite the journal", "err", err)
		return
	}
	for _, name := range w.names {
		d := w.domains[name]
		for k, p := range d.pending {
			if !p.journaled {
				p.journaled = true
				d.pending[k] = p
			}
		}
	}
}

// loadJournal brings back the keys kept by an earlier run; they are
// installed as soon as their domain's interfaces exist.
func (w *Worker) loadJournal() {
	if w.journal == nil {
		return
	}
	if err := w.journal.check(); err != nil {
		w.log.Error("worker.state_dir is not usable: keys for domains whose interfaces are missing will be held unacknowledged",
			"err", err)
	}
	entries, skipped, err := w.journal.read(maxPending * max(len(w.names), 1))
	if err != nil {
		w.log.Error("could not read the journal", "err", err)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	now, loaded, unknown := time.Now(), 0, 0
	for _, e := range entries {
		d := w.domains[e.domain]
		if d == nil || !wgkex.ValidKey(e.key) {
			unknown++
			continue
		}
		if _, ok := d.pending[e.key]; !ok && len(d.pending) < maxPending {
			d.pending[e.key] = pendingKey{received: now, journaled: true}
			loaded++
		}
	}
	if loaded+skipped+unknown > 0 {
		w.log.Info("keys brought back from the journal", "file", w.journal.path, "keys", loaded,
			"unreadable_lines", skipped, "unknown_domain_or_invalid", unknown)
	}
	if skipped+unknown > 0 || loaded < len(entries) {
		w.syncJournal()
	}
}
