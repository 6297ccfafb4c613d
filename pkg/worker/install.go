package worker

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// installNow installs keys on domain now (for callers outside Run, such as
// tests and tools) and returns the error of each key that failed.
func (w *Worker) installNow(domainName string, keys ...string) map[string]error {
	jobs := make([]job, 0, len(keys))
	for _, k := range keys {
		jobs = append(jobs, job{domain: domainName, key: k, received: time.Now()})
	}
	return w.installBatch(jobs)
}

// installBatch installs a batch of keys: one WireGuard configure call per
// interface per BatchSize peers (duplicates coalesced), then the route and
// FDB entry of each, and acknowledges each key's message once its entries
// are in. A failing key never holds up the others: it is retried. Keys for
// a domain whose interfaces are missing are kept (see keep).
func (w *Worker) installBatch(jobs []job) map[string]error {
	w.mu.Lock()
	defer w.mu.Unlock()
	byDomain := map[string][]job{}
	for _, j := range jobs {
		if w.domains[j.domain] == nil {
			w.acknowledge(j.ack) // receive lets no such key through
			continue
		}
		byDomain[j.domain] = append(byDomain[j.domain], j)
	}
	failed := map[string]error{}
	journalChanged := false
	for name, js := range byDomain {
		d := w.domains[name]
		if d.wgIndex == 0 {
			w.keep(d, js, "interfaces missing")
			// Only checkLinks brings a domain up (it repairs first), so
			// ask for a check now.
			select {
			case w.linkCheck <- struct{}{}:
			default:
			}
			continue
		}
		unique := make([]job, 0, len(js))
		seen := make(map[string]bool, len(js))
		for _, j := range js {
			if !seen[j.key] {
				seen[j.key] = true
				unique = append(unique, j)
			}
		}
		chunkFailed := map[string]error{}
		for start := 0; start < len(unique); start += w.o.BatchSize {
			end := min(start+w.o.BatchSize, len(unique))
			for k, err := range w.installChunk(d, unique[start:end]) {
				chunkFailed[k] = err
			}
		}
		var done, refused []job
		for _, j := range js {
			if chunkFailed[j.key] == nil {
				done = append(done, j)
				if _, ok := d.pending[j.key]; ok {
					delete(d.pending, j.key)
					journalChanged = true
				}
			} else {
				refused = append(refused, j)
			}
		}
		w.acknowledgeAll(done)
		if w.refused(d, refused) {
			journalChanged = true
		}
		for k, err := range chunkFailed {
			failed[k] = err
		}
	}
	if journalChanged {
		w.syncJournal()
	}
	return failed
}

// keep takes care of keys that cannot be installed now (why says why): they
// are written to the journal and then acknowledged, and installed when the
// domain's interfaces appear (or, for keys the kernel refused, retried).
// When the journal cannot take them, keys with a message to acknowledge are
// held unacknowledged instead (the server keeps them), and the others are
// kept in memory. Beyond maxPending keys per domain, keys are given up (and
// acknowledged): the nodes send them again. w.mu is held.
func (w *Worker) keep(d *domain, js []job, why string) {
	var fresh []entry // to be written: new keys, and keys kept in memory only
	write := map[string]bool{}
	gaveUp := map[string]bool{}
	room := maxPending - len(d.pending)
	for _, j := range js {
		if write[j.key] || gaveUp[j.key] {
			continue
		}
		p, ok := d.pending[j.key]
		switch {
		case ok && p.journaled:
			continue // kept already
		case ok:
		case room > 0:
			room--
		default:
			gaveUp[j.key] = true
			continue
		}
		write[j.key] = true
		fresh = append(fresh, entry{d.name, j.key})
	}
	if len(gaveUp) > 0 {
		w.log.Error("too many keys kept for the domain; giving up the newest (nodes send theirs again)",
			"domain", d.name, "kept", len(d.pending), "given_up", len(gaveUp))
		w.countFailed(d.name, len(gaveUp))
	}
	err := errors.New("no worker.state_dir")
	if w.journal != nil {
		err = w.journal.append(fresh)
	}
	now := time.Now()
	if err == nil {
		for _, e := range fresh {
			p, ok := d.pending[e.key]
			if !ok {
				p.received = now
			}
			p.journaled = true
			d.pending[e.key] = p
		}
		w.acknowledgeAll(js)
		w.log.Error(why+"; keys kept until they can be installed", "domain", d.name,
			"wireguard", d.ifs.WireGuard, "vxlan", d.ifs.VXLAN, "keys", len(js), "pending", len(d.pending), "reason", d.missing)
		return
	}
	for _, j := range js {
		switch {
		case !write[j.key]:
			w.acknowledge(j.ack) // kept already, or given up
		case j.ack == nil:
			if _, ok := d.pending[j.key]; !ok {
				d.pending[j.key] = pendingKey{received: now}
			}
		case len(d.held) < maxPending:
			d.held = append(d.held, j)
		default:
			w.acknowledge(j.ack) // beyond every bound; the node sends it again
			w.countFailed(d.name, 1)
		}
	}
	w.log.Error(why+"; the journal cannot take the keys, so they are held unacknowledged", "domain", d.name,
		"keys", len(js), "held", len(d.held), "err", err)
}

// refused takes the keys the kernel refused: a key kept already stays kept
// (and is given up once it has failed for maxFailing); others are retried
// with a backoff, unacknowledged, for retryHold, and then kept. It reports
// whether kept keys were given up. w.mu is held.
func (w *Worker) refused(d *domain, js []job) (gaveUp bool) {
	now := time.Now()
	var toKeep []job
	for _, j := range js {
		if p, ok := d.pending[j.key]; ok && (p.journaled || j.ack == nil) {
			if p.failingSince.IsZero() {
				p.failingSince = now
				d.pending[j.key] = p
			}
			if now.Sub(p.failingSince) > w.timing.maxFailing {
				delete(d.pending, j.key)
				gaveUp = true
				w.log.Error("giving up a key the kernel keeps refusing (the node sends it again)", "domain", d.name, "key", j.key,
					"failing_since", p.failingSince)
			}
			w.acknowledge(j.ack)
			continue
		}
		if j.retry == nil {
			j.retry = &retryState{failedSince: now}
		}
		delay := w.timing.retryBase << min(j.retry.attempts, 10)
		j.retry.attempts++
		if now.Add(delay).Sub(j.retry.failedSince) > w.timing.retryHold {
			toKeep = append(toKeep, j)
			continue
		}
		j.retry.due = now.Add(delay)
		w.retry = append(w.retry, j)
	}
	if len(toKeep) > 0 {
		w.keep(d, toKeep, "kernel still refuses the keys after "+w.timing.retryHold.String()+", retrying every "+w.timing.pendingRetry.String())
		for _, j := range toKeep {
			if p, ok := d.pending[j.key]; ok && p.failingSince.IsZero() {
				p.failingSince = j.retry.failedSince
				d.pending[j.key] = p
			}
		}
	}
	return gaveUp
}

// armRetry sets t to fire when the first refused key is due.
func (w *Worker) armRetry(t *time.Timer) {
	w.mu.Lock()
	var first time.Time
	for _, j := range w.retry {
		if first.IsZero() || j.retry.due.Before(first) {
			first = j.retry.due
		}
	}
	w.mu.Unlock()
	if first.IsZero() {
		t.Stop()
		return
	}
	t.Reset(max(time.Until(first), 0))
}

// retryDue installs the refused keys that are due again.
func (w *Worker) retryDue() {
	now := time.Now()
	w.mu.Lock()
	var due, later []job
	for _, j := range w.retry {
		if !j.retry.due.After(now) {
			due = append(due, j)
		} else {
			later = append(later, j)
		}
	}
	w.retry = later
	w.mu.Unlock()
	if len(due) > 0 {
		w.installBatch(due)
	}
}

// retryPending tries the kept keys of domains whose interfaces exist
// (keys the kernel refused before).
func (w *Worker) retryPending() {
	var jobs []job
	w.mu.Lock()
	for _, name := range w.names {
		d := w.domains[name]
		if d.wgIndex == 0 {
			continue
		}
		jobs = append(jobs, d.pendingJobs()...)
	}
	w.mu.Unlock()
	if len(jobs) > 0 {
		w.log.Info("retrying kept keys", "keys", len(jobs))
		w.installBatch(jobs)
	}
}

func (w *Worker) countFailed(domain string, n int) {
	if n == 0 {
		return
	}
	w.metrics.failed.WithLabelValues(domain).Add(float64(n))
	w.stats.mu.Lock()
	w.stats.Failed += int64(n)
	w.stats.mu.Unlock()
}

func (w *Worker) installChunk(d *domain, js []job) map[string]error {
	failed := map[string]error{}
	peers := make([]wgtypes.PeerConfig, 0, len(js))
	for _, j := range js {
		pk, err := wgtypes.ParseKey(j.key)
		if err != nil {
			failed[j.key] = fmt.Errorf("key %s: %w", j.key, err)
			continue
		}
		peers = append(peers, peerConfig(pk, j.key))
	}
	if err := w.o.WireGuard.ConfigureDevice(d.ifs.WireGuard, wgtypes.Config{Peers: peers}); err != nil {
		// Find the culprit: one peer at a time.
		w.log.Warn("batch peer update failed; retrying one by one", "domain", d.name, "interface", d.ifs.WireGuard, "peers", len(peers), "err", err)
		for _, p := range peers {
			if err := w.o.WireGuard.ConfigureDevice(d.ifs.WireGuard, wgtypes.Config{Peers: []wgtypes.PeerConfig{p}}); err != nil {
				failed[p.PublicKey.String()] = fmt.Errorf("add peer %s on %s: %w", p.PublicKey, d.ifs.WireGuard, err)
			}
		}
	}
	now := w.o.Now()
	for _, j := range js {
		if _, bad := failed[j.key]; bad {
			continue
		}
		if err := w.addEntries(d, j.key); err != nil {
			failed[j.key] = err
			continue
		}
		if _, ok := d.seen[j.key]; !ok {
			d.seen[j.key] = now
		}
		lat := time.Since(j.received)
		w.stats.record(lat)
		w.metrics.observeInstall(d.name, lat)
		w.log.Debug("key installed", "domain", d.name, "key", j.key, "ll", wgkex.LinkLocal(j.key))
	}
	for k, err := range failed {
		w.log.Error("could not install key", "domain", d.name, "interface", d.ifs.WireGuard, "key", k, "err", err)
	}
	w.metrics.failed.WithLabelValues(d.name).Add(float64(len(failed)))
	w.stats.mu.Lock()
	w.stats.Installed += int64(len(js) - len(failed))
	w.stats.Failed += int64(len(failed))
	w.stats.mu.Unlock()
	return failed
}

func peerConfig(pk wgtypes.Key, key string) wgtypes.PeerConfig {
	ll := wgkex.LinkLocal(key)
	return wgtypes.PeerConfig{
		PublicKey:         pk,
		ReplaceAllowedIPs: true,
		AllowedIPs:        []net.IPNet{{IP: net.IP(ll.AsSlice()), Mask: net.CIDRMask(128, 128)}},
	}
}

// addEntries installs the route and FDB entry of key (steps 3 and 4).
func (w *Worker) addEntries(d *domain, key string) error {
	ll := wgkex.LinkLocal(key)
	if err := w.o.Kernel.ReplaceRoute(d.wgIndex, netip.PrefixFrom(ll, 128)); err != nil {
		return fmt.Errorf("key %s: route on %s: %w", key, d.ifs.WireGuard, err)
	}
	if err := w.o.Kernel.AppendFDB(d.vxIndex, ll, d.wgIndex); err != nil {
		return fmt.Errorf("key %s: fdb entry on %s: %w", key, d.ifs.VXLAN, err)
	}
	return nil
}

// removeEntries undoes addEntries, FDB first; what is gone already is fine.
func (w *Worker) removeEntries(d *domain, key string) error {
	ll := wgkex.LinkLocal(key)
	var errs []error
	if err := w.o.Kernel.DeleteFDB(d.vxIndex, ll, d.wgIndex); err != nil {
		errs = append(errs, fmt.Errorf("key %s: fdb entry on %s: %w", key, d.ifs.VXLAN, err))
	}
	if err := w.o.Kernel.DeleteRoute(d.wgIndex, netip.PrefixFrom(ll, 128)); err != nil {
		errs = append(errs, fmt.Errorf("key %s: route on %s: %w", key, d.ifs.WireGuard, err))
	}
	return errors.Join(errs...)
}

// pendingJobs are the kept keys of d, in the order they arrived.
func (d *domain) pendingJobs() []job {
	jobs := make([]job, 0, len(d.pending))
	for k, p := range d.pending {
		jobs = append(jobs, job{domain: d.name, key: k, received: p.received})
	}
	sort.Slice(jobs, func(a, b int) bool {
		if !jobs[a].received.Equal(jobs[b].received) {
			return jobs[a].received.Before(jobs[b].received)
		}
		return jobs[a].key < jobs[b].key
	})
	return jobs
}
