package cmd

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
	"github.com/freifunkMUC/wgkex/pkg/worker"
)

// sessionExpiry is how long the MQTT server keeps a stopped worker's
// session (and queues keys for it).
const sessionExpiry = 7 * 24 * time.Hour

func newWorkerCommand(g *globals) *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "worker",
		Short: "Install published keys as WireGuard peers, routes and VXLAN FDB entries",
		Long: "worker subscribes to the keys of its domains and installs each as a peer on wg-X,\n" +
			"a route and a zero-MAC FDB entry on vx-X. It needs CAP_NET_ADMIN. The interfaces\n" +
			"are the operator's (or wgkex dummy-iface's); the worker waits for missing ones.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return runWorker(c.Context(), g, name) },
	}
	c.Flags().StringVar(&name, "name", "", "worker name on the bus (default worker.name, else the host name)")
	return c
}

func runWorker(ctx context.Context, g *globals, name string) error {
	cfg, log, err := g.loadConfig(os.Stderr)
	if err != nil {
		return err
	}
	if name == "" {
		name = cfg.Worker.Name
	}
	if name == "" {
		if name, err = os.Hostname(); err != nil {
			return fmt.Errorf("worker name: %w", err)
		}
	}
	if !wgkex.ValidName(name) {
		return fmt.Errorf("--name: %q cannot stand in an MQTT topic", name)
	}
	external := cfg.ExternalName
	if external == "" {
		external = name
	}

	k, wg, closeKernel, err := openKernel()
	if err != nil {
		return err
	}
	defer closeKernel()

	mo, err := mqtt.OptionsFromConfig(cfg)
	if err != nil {
		return err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var w *worker.Worker
	mo.ClientID = "wgkex-worker-" + name
	mo.Persistent, mo.SessionExpiry = true, sessionExpiry
	mo.Will = &mqtt.Will{Topic: wgkex.StatusTopic(name), Payload: []byte(wgkex.StatusOffline), QoS: 1, Retain: true}
	mo.Logger = log
	for _, d := range cfg.Domains {
		mo.Subscriptions = append(mo.Subscriptions, mqtt.Subscription{Filter: wgkex.KeyFilter(d), QoS: 1})
	}
	mo.OnMessage = func(m mqtt.Message) { w.HandleMessage(runCtx, m.Topic, m.Payload) }
	mo.OnReady = func(context.Context) { w.RequestAnnounce() }
	client := mqtt.New(mo)
	reg := newRegistry()

	grace := cfg.Worker.NewPeerGrace
	if grace == 0 {
		grace = -1 // new_peer_grace: 0 asks for the original's behaviour
	}
	w = worker.New(worker.Options{
		Name:            name,
		ExternalName:    external,
		Domains:         cfg.Interfaces(),
		WireGuard:       wg,
		Kernel:          k,
		Publisher:       client,
		MetricsInterval: cfg.Worker.MetricsInterval,
		CleanupInterval: cfg.Worker.CleanupInterval,
		PeerTimeout:     cfg.Worker.PeerTimeout,
		NewPeerGrace:    grace,
		Logger:          log,
		Registry:        reg,
		Connected:       client.Connected,
	})
	if cfg.Worker.MetricsListen != "" {
		ln, err := net.Listen("tcp", cfg.Worker.MetricsListen)
		if err != nil {
			return fmt.Errorf("worker.metrics_listen: %w", err)
		}
		srv := &http.Server{Handler: w.Handler(reg), ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("metrics listening", "addr", ln.Addr().String())
	}
	log.Info("worker starting", "name", name, "external", external, "domains", cfg.Domains, "mqtt", mo.Server.Redacted())

	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	// The connection outlives Run, so that Shutdown can still say goodbye.
	if err := client.Start(context.Background()); err != nil {
		stopRun()
		<-done
		return err
	}

	var runErr error
	select {
	case <-ctx.Done():
		stopRun()
		runErr = <-done
	case runErr = <-done:
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.Shutdown(sctx)
	if err := client.Close(sctx); err != nil {
		log.Warn("MQTT disconnect", "err", err)
	}
	return runErr
}
