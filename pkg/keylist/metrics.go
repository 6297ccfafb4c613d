package keylist

import "github.com/prometheus/client_golang/prometheus"

// collector exports a watcher's counts at scrape time. The list name is a
// constant label, so that several lists share one registry.
type collector struct {
	w                      *Watcher
	entries, reloads, last *prometheus.Desc
}

func newCollector(w *Watcher) *collector {
	labels := prometheus.Labels{"list": w.opts.Name}
	return &collector{
		w: w,
		entries: prometheus.NewDesc("wgkex_keylist_entries",
			"Keys in the list in use, top-level and per-domain together.", nil, labels),
		reloads: prometheus.NewDesc("wgkex_keylist_reloads_total",
			"Loads of the list file: ok (now in use) or failed (rejected; the previous list stays).", []string{"result"}, labels),
		last: prometheus.NewDesc("wgkex_keylist_last_reload_timestamp_seconds",
			"Unix time at which the list in use was loaded.", nil, labels),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.entries
	ch <- c.reloads
	ch <- c.last
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(c.w.List().Len()))
	ch <- prometheus.MustNewConstMetric(c.reloads, prometheus.CounterValue, float64(c.w.reloadsOK.Load()), "ok")
	ch <- prometheus.MustNewConstMetric(c.reloads, prometheus.CounterValue, float64(c.w.reloadsFailed.Load()), "failed")
	ch <- prometheus.MustNewConstMetric(c.last, prometheus.GaugeValue, float64(c.w.lastReload.Load())/1e9)
}
