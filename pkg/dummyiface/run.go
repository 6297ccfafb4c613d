package dummyiface

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgdevice"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// RunOptions say which domains' gateway interfaces Run builds or removes.
type RunOptions struct {
	Domains    []string                    // in this order
	Interfaces map[string]wgkex.Interfaces // of each domain
	// ListenPort is wg-X's port for the first domain; the next domains
	// get the following ports.
	ListenPort int
	// Delete removes the interfaces instead of building them.
	Delete bool
	// Userspace, VXLANID and LivenessHTTP are as in Options.
	Userspace    bool
	VXLANID      uint32
	LivenessHTTP bool
	// Out receives one line per domain.
	Out    io.Writer
	Logger *slog.Logger
}

// Run builds the gateway interfaces of every domain (or removes them, with
// Delete) and prints a line for each. When the gateways need this process
// (userspace WireGuard, liveness server) it stays until ctx ends or one of
// its interfaces is removed from outside, and then removes what it made.
func Run(ctx context.Context, k *kernel.Conn, wg *wgctrl.Client, o RunOptions) error {
	return run(ctx, realSystem(k, wg), o)
}

func run(ctx context.Context, sys system, o RunOptions) error {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	log := o.Logger
	if o.Delete {
		return removeAll(sys.links, o)
	}

	var made []*Gateway
	// stop removes what needs this process; kernel WireGuard without a
	// liveness server is left in place, as after a successful run.
	stop := func() {
		for _, gw := range made {
			if gw.running() {
				if err := gw.close(sys.links); err != nil {
					log.Warn("remove interfaces", "err", err)
				}
			}
		}
	}
	for i, d := range o.Domains {
		gw, err := create(sys, Options{Interfaces: o.Interfaces[d], ListenPort: o.ListenPort + i,
			VXLANID: o.VXLANID, LivenessHTTP: o.LivenessHTTP, Userspace: o.Userspace, Logger: log})
		if err != nil {
			stop()
			return fmt.Errorf("%s: %w", d, err)
		}
		made = append(made, gw)
		ifs := gw.interfaces
		fmt.Fprintf(o.Out, "%s: %s public key %s port %d link address %s [%s]; %s vxlan id %d local %s dev %s, %s\n",
			d, ifs.WireGuard, gw.PublicKey, gw.listenPort, gw.LinkAddress, gw.mode(),
			ifs.VXLAN, gw.vxlanID, gw.LinkAddress, ifs.WireGuard, gatewayAddress)
	}
	running := false
	for _, gw := range made {
		running = running || gw.running()
	}
	if !running {
		return nil
	}
	log.Info("running (userspace WireGuard or liveness HTTP); Ctrl-C (SIGINT/SIGTERM) stops and removes what was made")
	if name := waitForRemoval(ctx, made); name != "" {
		log.Warn("interface removed from outside; removing the others and exiting", "interface", name)
	}
	stop()
	return nil
}

// waitForRemoval waits until ctx ends or the userspace device of one of
// the gateways stops (its interface was removed from outside), and
// returns that interface's name ("" when ctx ended).
func waitForRemoval(ctx context.Context, gws []*Gateway) string {
	ctx, cancel := context.WithCancel(ctx)
	gone := make(chan string, len(gws))
	var watchers sync.WaitGroup
	defer func() {
		cancel()
		watchers.Wait()
	}()
	for _, gw := range gws {
		if gw.device == nil {
			continue
		}
		watchers.Go(func() {
			select {
			case <-gw.device.Done():
				gone <- gw.interfaces.WireGuard
			case <-ctx.Done():
			}
		})
	}
	select {
	case <-ctx.Done():
		return ""
	case name := <-gone:
		return name
	}
}

// removeAll removes every domain's interfaces, vx-X then wg-X.
func removeAll(k wgdevice.Links, o RunOptions) error {
	var errs []error
	for _, d := range o.Domains {
		ifs := o.Interfaces[d]
		if err := deleteInterfaces(k, ifs, nil); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(o.Out, "%s: removed %s and %s\n", d, ifs.WireGuard, ifs.VXLAN)
	}
	return errors.Join(errs...)
}
