package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// publishTimeout bounds each publish of the worker's state.
const publishTimeout = 5 * time.Second

// checkLinks looks for each domain's interfaces. Interfaces that appeared
// or were recreated (a new index) get their routes and FDB entries repaired
// from the peers on the WireGuard device, the keys that waited for them
// installed, and the domain announced. Interfaces that vanished take the
// domain out (connected_peers -1) until they return.
func (w *Worker) checkLinks(ctx context.Context) {
	var appeared, vanished []string
	w.mu.Lock()
	for _, name := range w.names {
		d := w.domains[name]
		wg, err := w.o.Kernel.LinkIndex(d.ifs.WireGuard)
		vx := 0
		if err == nil {
			vx, err = w.o.Kernel.LinkIndex(d.ifs.VXLAN)
		}
		if err == nil && wg == d.wgIndex && vx == d.vxIndex {
			continue // unchanged
		}
		if err == nil {
			if _, err = w.o.WireGuard.Device(d.ifs.WireGuard); err != nil {
				err = fmt.Errorf("%s is not a WireGuard device: %w", d.ifs.WireGuard, err)
			}
		}
		if err != nil {
			if d.wgIndex != 0 {
				vanished = append(vanished, name)
			}
			if d.wgIndex != 0 || d.missing != err.Error() {
				w.log.Error("domain unusable until its interfaces exist", "domain", name,
					"wireguard", d.ifs.WireGuard, "vxlan", d.ifs.VXLAN, "err", err)
			}
			d.wgIndex, d.vxIndex, d.missing = 0, 0, err.Error()
			continue
		}
		if d.missing != "" || d.wgIndex != 0 {
			w.log.Info("interfaces (re)appeared", "domain", name, "wireguard", d.ifs.WireGuard, "vxlan", d.ifs.VXLAN)
		}
		d.wgIndex, d.vxIndex, d.missing = wg, vx, ""
		if err := w.repair(d); err != nil {
			w.log.Error("repair failed", "domain", name, "err", err)
		}
		if len(d.pending)+len(d.held) > 0 {
			jobs := append(d.pendingJobs(), d.held...)
			d.held = nil
			w.log.Info("installing keys that waited for the interfaces", "domain", name, "keys", len(jobs))
			w.mu.Unlock()
			w.installBatch(jobs)
			w.mu.Lock()
		}
		appeared = append(appeared, name)
	}
	w.mu.Unlock()
	if len(appeared)+len(vanished) > 0 {
		w.announceAll(ctx)
	}
}

// repair adds the missing route and FDB entry of every peer, and removes
// the ones of this scheme (our route protocol; zero-MAC, link-local dst
// via wg-X) that belong to no peer. The operator's entries are left alone.
func (w *Worker) repair(d *domain) error {
	dev, err := w.o.WireGuard.Device(d.ifs.WireGuard)
	if err != nil {
		return fmt.Errorf("read %s: %w", d.ifs.WireGuard, err)
	}
	now := w.o.Now()
	want := make(map[netip.Addr]string, len(dev.Peers))
	for _, p := range dev.Peers {
		key := p.PublicKey.String()
		want[wgkex.LinkLocal(key)] = key
		if _, ok := d.seen[key]; !ok {
			d.seen[key] = now
		}
	}
	for key := range d.seen {
		if _, ok := want[wgkex.LinkLocal(key)]; !ok {
			delete(d.seen, key)
		}
	}

	var errs []error
	routes, err := w.o.Kernel.Routes(d.wgIndex)
	if err != nil {
		return fmt.Errorf("list routes on %s: %w", d.ifs.WireGuard, err)
	}
	haveRoute := map[netip.Addr]bool{}
	removedRoutes, addedRoutes := 0, 0
	for _, r := range routes {
		if r.Bits() == 128 && want[r.Addr()] != "" {
			haveRoute[r.Addr()] = true
			continue
		}
		if err := w.o.Kernel.DeleteRoute(d.wgIndex, r); err != nil {
			errs = append(errs, err)
		}
		removedRoutes++
	}
	fdb, err := w.o.Kernel.FDB(d.vxIndex)
	if err != nil {
		return fmt.Errorf("list fdb on %s: %w", d.ifs.VXLAN, err)
	}
	haveFDB := map[netip.Addr]bool{}
	removedFDB, addedFDB := 0, 0
	for _, e := range fdb {
		if e.Via != d.wgIndex || !e.Dst.IsLinkLocalUnicast() {
			continue // not one of ours
		}
		if want[e.Dst] != "" {
			haveFDB[e.Dst] = true
			continue
		}
		if err := w.o.Kernel.DeleteFDB(d.vxIndex, e.Dst, d.wgIndex); err != nil {
			errs = append(errs, err)
		}
		removedFDB++
	}
	for ll, key := range want {
		if !haveRoute[ll] {
			if err := w.o.Kernel.ReplaceRoute(d.wgIndex, netip.PrefixFrom(ll, 128)); err != nil {
				errs = append(errs, fmt.Errorf("key %s: %w", key, err))
			}
			addedRoutes++
		}
		if !haveFDB[ll] {
			if err := w.o.Kernel.AppendFDB(d.vxIndex, ll, d.wgIndex); err != nil {
				errs = append(errs, fmt.Errorf("key %s: %w", key, err))
			}
			addedFDB++
		}
	}
	if addedRoutes+addedFDB+removedRoutes+removedFDB > 0 {
		w.log.Info("repaired kernel entries", "domain", d.name, "peers", len(want),
			"routes_added", addedRoutes, "routes_removed", removedRoutes, "fdb_added", addedFDB, "fdb_removed", removedFDB)
	}
	return errors.Join(errs...)
}

// handshook reports whether t is a real handshake time: wgctrl reports
// "never" as the zero time or, from UAPI, as the Unix epoch.
func handshook(t time.Time) bool { return !t.IsZero() && t.Unix() > 0 }

// cleanup removes the peers whose last handshake is older than
// PeerTimeout, and those that never completed one within NewPeerGrace of
// being installed (or found); FDB entry, route, then peer. It returns how
// many peers it removed. One failure does not stop the rest.
func (w *Worker) cleanup() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.o.Now()
	total := 0
	for _, name := range w.names {
		d := w.domains[name]
		if d.wgIndex == 0 {
			continue
		}
		dev, err := w.o.WireGuard.Device(d.ifs.WireGuard)
		if err != nil {
			w.log.Error("cleanup: cannot read device", "domain", name, "interface", d.ifs.WireGuard, "err", err)
			continue
		}
		var stale []wgtypes.Key
		for _, p := range dev.Peers {
			key := p.PublicKey.String()
			first, ok := d.seen[key]
			if !ok {
				first = now
				d.seen[key] = now
			}
			if handshook(p.LastHandshakeTime) {
				if now.Sub(p.LastHandshakeTime) > w.o.PeerTimeout {
					stale = append(stale, p.PublicKey)
				}
			} else if now.Sub(first) > w.o.NewPeerGrace {
				stale = append(stale, p.PublicKey)
			}
		}
		n := w.removePeers(d, stale)
		w.metrics.removed.WithLabelValues(name).Add(float64(n))
		total += n
	}
	if total > 0 {
		w.log.Info("cleanup removed stale peers", "peers", total)
	}
	w.stats.mu.Lock()
	w.stats.Removed += int64(total)
	w.stats.mu.Unlock()
	return total
}

// removePeers undoes each peer's entries and then removes the peers in
// batches; it returns how many peers are gone.
func (w *Worker) removePeers(d *domain, keys []wgtypes.Key) int {
	for _, k := range keys {
		if err := w.removeEntries(d, k.String()); err != nil {
			w.log.Error("cleanup: could not remove entries", "domain", d.name, "key", k.String(), "err", err)
		}
	}
	removed := 0
	for start := 0; start < len(keys); start += w.o.BatchSize {
		chunk := keys[start:min(start+w.o.BatchSize, len(keys))]
		peers := make([]wgtypes.PeerConfig, len(chunk))
		for i, k := range chunk {
			peers[i] = wgtypes.PeerConfig{PublicKey: k, Remove: true}
		}
		if err := w.o.WireGuard.ConfigureDevice(d.ifs.WireGuard, wgtypes.Config{Peers: peers}); err == nil {
			removed += len(chunk)
			for _, k := range chunk {
				delete(d.seen, k.String())
			}
			continue
		}
		for _, p := range peers {
			if err := w.o.WireGuard.ConfigureDevice(d.ifs.WireGuard, wgtypes.Config{Peers: []wgtypes.PeerConfig{p}}); err != nil {
				w.log.Error("cleanup: could not remove peer", "domain", d.name, "interface", d.ifs.WireGuard, "key", p.PublicKey.String(), "err", err)
				continue
			}
			removed++
			delete(d.seen, p.PublicKey.String())
		}
	}
	return removed
}

// connectedPeersOf counts the peers of domain with a handshake within
// HandshakeWindow; -1 when the domain's interfaces are unusable.
func (w *Worker) connectedPeersOf(domainName string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.domains[domainName]
	if d == nil {
		return -1
	}
	return w.connectedPeers(d)
}

func (w *Worker) connectedPeers(d *domain) int {
	_, connected := w.countPeers(d)
	return connected
}

// countPeers returns the peers on the domain's device and those with a
// handshake within HandshakeWindow; -1, -1 when the device is unusable.
func (w *Worker) countPeers(d *domain) (total, connected int) {
	if d.wgIndex == 0 {
		return -1, -1
	}
	dev, err := w.o.WireGuard.Device(d.ifs.WireGuard)
	if err != nil {
		w.log.Error("cannot read device", "domain", d.name, "interface", d.ifs.WireGuard, "err", err)
		return -1, -1
	}
	now := w.o.Now()
	for _, p := range dev.Peers {
		if handshook(p.LastHandshakeTime) && now.Sub(p.LastHandshakeTime) <= w.o.HandshakeWindow {
			connected++
		}
	}
	return len(dev.Peers), connected
}

// dataOf returns the data message of domain: the WireGuard port and public
// key of wg-X and its link address.
func (w *Worker) dataOf(domainName string) (wgkex.WorkerData, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.domains[domainName]
	if d == nil {
		return wgkex.WorkerData{}, fmt.Errorf("unknown domain %q", domainName)
	}
	return w.data(d)
}

func (w *Worker) data(d *domain) (wgkex.WorkerData, error) {
	if d.wgIndex == 0 {
		return wgkex.WorkerData{}, fmt.Errorf("interfaces of %s missing: %s", d.name, d.missing)
	}
	dev, err := w.o.WireGuard.Device(d.ifs.WireGuard)
	if err != nil {
		return wgkex.WorkerData{}, fmt.Errorf("read %s: %w", d.ifs.WireGuard, err)
	}
	addrs, err := w.o.Kernel.Addrs(d.wgIndex)
	if err != nil {
		return wgkex.WorkerData{}, fmt.Errorf("addresses of %s: %w", d.ifs.WireGuard, err)
	}
	link, ok := linkAddress(addrs, dev.PublicKey.String())
	if !ok {
		return wgkex.WorkerData{}, fmt.Errorf("%s has no IPv6 address: nodes could not reach it", d.ifs.WireGuard)
	}
	data := wgkex.WorkerData{
		ExternalAddress: w.o.ExternalName,
		Port:            dev.ListenPort,
		PublicKey:       dev.PublicKey.String(),
		LinkAddress:     link.String(),
	}
	if err := data.Validate(); err != nil {
		return wgkex.WorkerData{}, fmt.Errorf("%s: %w", d.ifs.WireGuard, err)
	}
	return data, nil
}

// linkAddress picks the address nodes use to reach the gateway on wg-X:
// the one derived from the device's own public key when present, else
// the first IPv6 address (docs/protocol.md §5).
func linkAddress(addrs []netip.Prefix, ownKey string) (netip.Addr, bool) {
	own := wgkex.LinkLocal(ownKey)
	for _, a := range addrs {
		if a.Addr() == own {
			return own, true
		}
	}
	for _, a := range addrs {
		if a.Addr().Is6() {
			return a.Addr(), true
		}
	}
	return netip.Addr{}, false
}

type announcement struct {
	domain string
	data   *wgkex.WorkerData
	peers  int
}

// announceAll publishes, per domain, the data message (retained), then the
// status 1, then connected_peers: the order docs/protocol.md §3 asks for, so a
// broker never sees the worker online without the data to hand out. A
// domain whose interfaces are unusable gets connected_peers -1 instead.
func (w *Worker) announceAll(ctx context.Context) {
	var list []announcement
	w.mu.Lock()
	for _, name := range w.names {
		d := w.domains[name]
		a := announcement{domain: name, peers: -1}
		if data, err := w.data(d); err != nil {
			if d.wgIndex != 0 {
				w.log.Error("cannot announce domain", "domain", name, "err", err)
			}
		} else {
			a.data = &data
			a.peers = w.connectedPeers(d)
		}
		list = append(list, a)
	}
	w.mu.Unlock()

	w.own.announced()
	for _, a := range list {
		topic := wgkex.DataTopic(w.o.Name, a.domain)
		if a.data == nil {
			w.own.forget(topic)
			continue
		}
		payload, _ := json.Marshal(a.data)
		// Recorded before it is sent, so that its echo is recognised.
		w.own.publishing(topic, payload)
		w.publish(ctx, topic, payload)
	}
	w.own.publishing(wgkex.StatusTopic(w.o.Name), []byte(wgkex.StatusOnline))
	w.publish(ctx, wgkex.StatusTopic(w.o.Name), []byte(wgkex.StatusOnline))
	for _, a := range list {
		w.publish(ctx, wgkex.ConnectedPeersTopic(a.domain, w.o.Name), []byte(strconv.Itoa(a.peers)))
	}
	w.log.Info("announced", "worker", w.o.Name, "domains", len(list))
}

// publishMetrics publishes connected_peers of every domain (retained).
func (w *Worker) publishMetrics(ctx context.Context) {
	counts := make(map[string]int, len(w.names))
	w.mu.Lock()
	for _, name := range w.names {
		counts[name] = w.connectedPeers(w.domains[name])
	}
	w.mu.Unlock()
	for _, name := range w.names {
		w.publish(ctx, wgkex.ConnectedPeersTopic(name, w.o.Name), []byte(strconv.Itoa(counts[name])))
	}
}

// goodbye tells the brokers this worker is going: connected_peers -1 for
// every domain, then status 0.
func (w *Worker) goodbye(ctx context.Context) {
	for _, name := range w.names {
		w.publish(ctx, wgkex.ConnectedPeersTopic(name, w.o.Name), []byte("-1"))
	}
	w.publish(ctx, wgkex.StatusTopic(w.o.Name), []byte(wgkex.StatusOffline))
}

func (w *Worker) publish(ctx context.Context, topic string, payload []byte) {
	if w.o.Publisher == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	if err := w.o.Publisher.Publish(ctx, topic, payload, 1, true); err != nil {
		w.log.Warn("publish failed", "topic", topic, "err", err)
	}
}

// counts returns a copy of the counters.
func (w *Worker) counts() (installed, failed, removed, dropped int64) {
	w.stats.mu.Lock()
	defer w.stats.mu.Unlock()
	return w.stats.Installed, w.stats.Failed, w.stats.Removed, w.stats.Dropped
}

// latencies returns and forgets the recorded delivery-to-installed
// latencies, sorted.
func (w *Worker) latencies() []time.Duration {
	w.stats.mu.Lock()
	l := w.stats.latencies
	w.stats.latencies = nil
	w.stats.mu.Unlock()
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l
}

func (s *stats) record(d time.Duration) {
	s.mu.Lock()
	if len(s.latencies) < s.latencyCeiling {
		s.latencies = append(s.latencies, d)
	}
	s.mu.Unlock()
}
