package cmd

import (
	"context"
	"errors"
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
			return runDummyIface(c.Context(), g, domains, port, del, dummyiface.Options{Userspace: userspace, VXLANID: id, LivenessHTTP: http})
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

func runDummyIface(ctx context.Context, g *globals, domains []string, port int, del bool, opts dummyiface.Options) error {
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
	ifaces := cfg.Interfaces()

	if del {
		var errs []error
		for _, d := range cfg.Domains {
			if err := dummyiface.Delete(k, ifaces[d], nil); err != nil {
				errs = append(errs, err)
				continue
			}
			fmt.Printf("%s: removed %s and %s\n", d, ifaces[d].WireGuard, ifaces[d].VXLAN)
		}
		return errors.Join(errs...)
	}

	var made []*dummyiface.Gateway
	cleanup := func() {
		for _, gw := range made {
			if gw.Running() {
				if err := gw.Close(k); err != nil {
					log.Warn("remove interfaces", "err", err)
				}
			}
		}
	}
	for i, d := range cfg.Domains {
		o := opts
		o.Interfaces, o.ListenPort, o.Logger = ifaces[d], port+i, log
		gw, err := dummyiface.Create(k, wg, o)
		if err != nil {
			cleanup()
			return fmt.Errorf("%s: %w", d, err)
		}
		made = append(made, gw)
		mode := "kernel"
		if gw.Userspace != nil {
			mode = "userspace (this process)"
		}
		if gw.Existed {
			mode = "already there, left as it is"
		}
		fmt.Printf("%s: %s public key %s port %d link address %s [%s]; %s vxlan id %d local %s dev %s, %s\n",
			d, gw.Interfaces.WireGuard, gw.PublicKey, gw.ListenPort, gw.LinkAddress, mode,
			gw.Interfaces.VXLAN, gw.VXLANID, gw.LinkAddress, gw.Interfaces.WireGuard, dummyiface.GatewayAddress)
	}
	running := false
	for _, gw := range made {
		running = running || gw.Running()
	}
	if !running {
		return nil
	}
	log.Info("running (userspace WireGuard or liveness HTTP); Ctrl-C (SIGINT/SIGTERM) stops and removes what was made")
	gone := make(chan string, len(made))
	for _, gw := range made {
		if gw.Userspace != nil {
			go func() {
				select {
				case <-gw.Userspace.Done():
					gone <- gw.Interfaces.WireGuard
				case <-ctx.Done():
				}
			}()
		}
	}
	select {
	case <-ctx.Done():
	case name := <-gone:
		log.Warn("interface removed from outside; removing the others and exiting", "interface", name)
	}
	cleanup()
	return nil
}
