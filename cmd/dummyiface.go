package cmd

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/freifunkMUC/wgkex/pkg/config"
	"github.com/freifunkMUC/wgkex/pkg/dummyiface"
)

func newDummyIfaceCommand(g *globals) *cobra.Command {
	var (
		domains   []string
		port      int
		del       bool
		userspace bool
		http      bool
		vni       vxlanFlags
	)
	c := &cobra.Command{
		Use:   "dummy-iface",
		Short: "Create a test gateway's wg-X and vx-X interfaces for each domain",
		Long: "dummy-iface builds what a gateway needs per domain: wg-X with a fresh key and a listen\n" +
			"port, the link-local address derived from its key, and vx-X (VXLAN over wg-X; id 99, or\n" +
			"--vxlan-id, or the id Gluon derives from the site's --domain-seed) with fe80::1/64.\n" +
			"--http answers Gluon's liveness check (HTTP 200 on port 80 of the link address of wg-X).\n" +
			"Without kernel WireGuard, or with --http, it stays in the foreground and removes the\n" +
			"interfaces on SIGINT/SIGTERM.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			id, err := vni.id()
			if err != nil {
				return err
			}
			return runDummyIface(c.Context(), g, domains, port, dummyiface.RunOptions{
				Delete: del, Userspace: userspace, VXLANID: id, LivenessHTTP: http, Out: c.OutOrStdout()})
		},
	}
	f := c.Flags()
	f.StringArrayVar(&domains, "domain", nil, "domain to build (repeatable; default: every configured domain)")
	f.IntVar(&port, "listen-port", 51820, "WireGuard listen port of the first domain; further domains get the next ports")
	f.BoolVar(&del, "delete", false, "remove the interfaces instead")
	f.BoolVar(&userspace, "userspace", false, "use userspace WireGuard even when the kernel has it")
	f.BoolVar(&http, "http", false, "answer Gluon's liveness check: HTTP 200 on port 80 of each wg-X link address")
	vni.add(c)
	return c
}

func runDummyIface(ctx context.Context, g *globals, domains []string, port int, o dummyiface.RunOptions) error {
	cfg, log, err := g.loadConfigWith(os.Stderr, func(c *config.Config) {
		if len(domains) > 0 {
			c.Domains = domains
		}
	})
	if err != nil {
		return err
	}
	if port < 1 || port+len(cfg.Domains)-1 > 65535 {
		return fmt.Errorf("--listen-port %d: ports out of range for %d domains", port, len(cfg.Domains))
	}
	k, wg, closeKernel, err := openKernel()
	if err != nil {
		return err
	}
	defer closeKernel()
	o.Domains, o.Interfaces, o.ListenPort, o.Logger = cfg.Domains, cfg.Interfaces(), port, log
	return dummyiface.Run(ctx, k, wg, o)
}
