package cmd

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/freifunkMUC/wgkex/pkg/broker"
	"github.com/freifunkMUC/wgkex/pkg/config"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/mqttserver"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

func newBrokerCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "broker",
		Short: "Serve the key exchange HTTP API and publish keys to the workers",
		Long: "broker takes node keys over HTTP (/api/v1 and /api/v2/wg/key/exchange), publishes them\n" +
			"on MQTT and picks the least loaded gateway. Without mqtt.broker_url it runs its own\n" +
			"MQTT server on mqtt.listen, so it needs no other service.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return runBroker(c.Context(), g) },
	}
}

func runBroker(ctx context.Context, g *globals) error {
	cfg, log, err := g.loadConfig(os.Stderr)
	if err != nil {
		return err
	}
	// Everything started below (key list watchers, the SIGHUP handler)
	// stops when the broker does.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The broker's live heap is a few MB of short-lived request garbage; the
	// default GC target collects it so often that the collector costs ~10%
	// of throughput. A higher target trades a few MB for that CPU. GOGC set
	// by the operator wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}

	host, _ := os.Hostname()
	name := cmp.Or(cfg.Broker.Name, host)
	if !wgkex.ValidName(name) {
		return fmt.Errorf("broker.name: the host name %q cannot stand in an MQTT topic; set broker.name", name)
	}

	// Bind the HTTP port first: a taken port fails before anything else starts.
	ln, err := net.Listen("tcp", cfg.BrokerListen.Addr())
	if err != nil {
		return fmt.Errorf("broker_listen: %w", err)
	}
	defer ln.Close()

	if cfg.Embedded() {
		if cfg.MQTT.Store == "" {
			log.Warn("embedded MQTT server keeps sessions in memory: keys queued for workers that are away are lost when the broker restarts; set mqtt.store to keep them")
		}
		srv, err := mqttserver.Start(mqttserver.Options{
			Listen: cfg.MQTT.Listen, Username: cfg.MQTT.Username, Password: cfg.MQTT.Password,
			Store: cfg.MQTT.Store, PasswordFile: cfg.MQTT.PasswordFile, Logger: log,
		})
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info("embedded MQTT server listening", "addr", srv.Addr().String())
	}

	mo, err := mqtt.OptionsFromConfig(cfg)
	if err != nil {
		return err
	}
	mo.ClientID = fmt.Sprintf("wgkex-broker-%s-%d", host, os.Getpid())
	mo.Logger = log
	var b *broker.Broker
	// Other brokers count this one while it is connected (docs/protocol.md §3).
	mo.Will = &mqtt.Will{Topic: wgkex.BrokerStatusTopic(name), Payload: []byte(wgkex.StatusOffline), QoS: 1, Retain: true}
	mo.OnReady = func(ctx context.Context) {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := b.Announce(actx); err != nil && ctx.Err() == nil {
			log.Warn("could not announce the broker on the bus; other brokers do not count it until the next connection", "err", err)
		}
	}
	for _, f := range broker.Subscriptions() {
		mo.Subscriptions = append(mo.Subscriptions, mqtt.Subscription{Filter: f, QoS: 1})
	}
	mo.OnMessage = func(m mqtt.Message) { b.HandleMessage(m.Topic, m.Payload) }
	client := mqtt.New(mo)
	reg := newRegistry()

	blocked, err := startKeyList(ctx, "blocklist", cfg.Broker.BlocklistFile, false, log, reg)
	if err != nil {
		return fmt.Errorf("broker.blocklist_file: %w", err)
	}
	allowed, err := startKeyList(ctx, "allowlist", cfg.Broker.AllowlistFile, true, log, reg)
	if err != nil {
		return fmt.Errorf("broker.allowlist_file: %w", err)
	}
	for _, d := range allowed.List().Domains() {
		if !slices.Contains(cfg.Domains, d) {
			log.Warn("allow list names a domain that is not configured; check its spelling", "domain", d, "file", cfg.Broker.AllowlistFile)
		}
	}
	go reloadOnSIGHUP(ctx, log, blocked, allowed)
	limiter, err := newRateLimiter(cfg)
	if err != nil {
		return err
	}
	reg.MustRegister(limiter.Collector())

	b = broker.New(broker.Options{
		Name:             name,
		Domains:          cfg.Domains,
		Weight:           cfg.Weight,
		Publisher:        client,
		KeyQoS:           1,
		Logger:           log,
		Registry:         reg,
		Gatherer:         reg,
		Connected:        client.Connected,
		KnownWorkers:     slices.Sorted(maps.Keys(cfg.Workers)),
		KnownWorkersOnly: cfg.Broker.KnownWorkersOnly,
		WorkerExpiry:     cfg.Broker.WorkerExpiry,
		MaxConnections:   cmp.Or(cfg.BrokerListen.MaxConnections, -1), // config 0: no cap
		Blocked:          blocked.Contains,
		Allowed:          allowed.Allowed,
		Limit:            limiter.Wrap,
		Sticky:           cfg.Broker.Selection == config.SelectionSticky,
		StickyTolerance:  cfg.Broker.StickyTolerance,
	})
	// The connection outlives ctx, so that the broker can withdraw its status
	// on the way out; the deferred Close ends it.
	if err := client.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// A clean disconnect sends no will: say 0 first.
		if err := b.Withdraw(dctx); err != nil {
			log.Warn("could not withdraw the broker's status; other brokers count it until its status changes", "err", err)
		}
		if err := client.Close(dctx); err != nil {
			log.Warn("MQTT disconnect", "err", err)
		}
	}()

	// Give the bus a moment to deliver the retained worker state, so the
	// first v2 requests find gateways; serve regardless after that.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := client.AwaitConnection(wctx); err != nil && ctx.Err() == nil {
		log.Warn("MQTT not connected yet; serving anyway, key exchanges answer 503 until it is", "server", mo.Server.Redacted())
	}
	cancel()

	log.Info("broker listening", "addr", ln.Addr().String(), "domains", cfg.Domains, "name", name, "selection", cfg.Broker.Selection)
	return b.Serve(ctx, ln)
}
