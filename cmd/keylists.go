package cmd

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex/pkg/config"
	"github.com/freifunkMUC/wgkex/pkg/keylist"
	"github.com/freifunkMUC/wgkex/pkg/ratelimit"
)

// startKeyList watches a key list file; no file gives a nil watcher, whose
// lookups find nothing and allow everything.
func startKeyList(ctx context.Context, name, file string, perDomain bool, log *slog.Logger, reg prometheus.Registerer) (*keylist.Watcher, error) {
	if file == "" {
		return nil, nil
	}
	w, err := keylist.Start(ctx, keylist.Options{Name: name, File: file, PerDomain: perDomain, Logger: log, Registerer: reg})
	if err != nil {
		return nil, err
	}
	log.Info("key list loaded", "list", name, "file", file, "keys", w.List().Len())
	return w, nil
}

// reloadOnSIGHUP re-reads the key lists on every SIGHUP until ctx ends.
func reloadOnSIGHUP(ctx context.Context, log *slog.Logger, lists ...*keylist.Watcher) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info("SIGHUP: reloading key lists")
			for _, l := range lists {
				if l != nil {
					l.Reload() // logs its own outcome; a broken file keeps the last good list
				}
			}
		}
	}
}

// newRateLimiter builds the broker's limiter; a configured rate of 0 turns
// that bucket off.
func newRateLimiter(cfg *config.Config) (*ratelimit.Limiter, error) {
	off := func(r float64) float64 {
		if r == 0 {
			return -1
		}
		return r
	}
	rl := cfg.Broker.RateLimit
	var proxies []netip.Prefix
	if len(cfg.BrokerListen.TrustedProxies) > 0 {
		var err error
		if proxies, err = ratelimit.ParseTrustedProxies(cfg.BrokerListen.TrustedProxies); err != nil {
			return nil, err
		}
	}
	return ratelimit.New(ratelimit.Config{
		PerClient: off(rl.PerClient), PerClientBurst: rl.PerClientBurst,
		Global: off(rl.Global), GlobalBurst: rl.GlobalBurst,
		MaxClients: rl.MaxClients, TrustedProxies: proxies,
	})
}
