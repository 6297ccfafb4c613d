package cmd

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
	"github.com/freifunkMUC/wgkex/pkg/worker"
)

func newWorkerCommand(g *globals) *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "worker",
		Short: "Install published keys as WireGuard peers, routes and VXLAN FDB entries",
		Long: "worker subscribes to the keys of its domains and installs each as a peer on wg-X,\n" +
			"a route and a zero-MAC FDB entry on vx-X. It needs CAP_NET_ADMIN. The interfaces\n" +
			"are the operator's (or wgkex dummy-iface's); the worker waits for missing ones.\n" +
			"A key is acknowledged to the MQTT server once it is installed, or written to the\n" +
			"journal in worker.state_dir until its interfaces exist. SIGTERM and SIGINT stop it\n" +
			"in order: queued keys are installed, then connected_peers -1 and status 0.",
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
	mo, err := mqtt.OptionsFromConfig(cfg)
	if err != nil {
		return err
	}
	mo.Logger = log
	k, wg, closeKernel, err := openKernel()
	if err != nil {
		return err
	}
	defer closeKernel()

	grace := cfg.Worker.NewPeerGrace
	if grace == 0 {
		grace = -1 // new_peer_grace: 0 asks for the original's behaviour
	}
	reg := newRegistry()
	return worker.New(worker.Options{
		Name:            name,
		ExternalName:    cfg.ExternalName,
		Domains:         cfg.Interfaces(),
		WireGuard:       wg,
		Kernel:          k,
		MQTT:            mo,
		ReceiveMaximum:  uint16(cfg.Worker.ReceiveMaximum),
		StateDir:        cfg.Worker.StateDir,
		MetricsListen:   cfg.Worker.MetricsListen,
		Gatherer:        reg,
		Registry:        reg,
		MetricsInterval: cfg.Worker.MetricsInterval,
		CleanupInterval: cfg.Worker.CleanupInterval,
		PeerTimeout:     cfg.Worker.PeerTimeout,
		NewPeerGrace:    grace,
		Logger:          log,
	}).Run(ctx)
}
