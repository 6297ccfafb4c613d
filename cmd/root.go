// Package cmd holds the cobra commands of the wgkex binary: flags and
// wiring only, the work is done in pkg/.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/freifunkMUC/wgkex/pkg/config"
	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// globals are the persistent flags every subcommand shares.
type globals struct {
	configFile string
	logLevel   string
	logFormat  string
}

// Execute runs the command line and returns the exit code.
func Execute() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRootCommand()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "wgkex:", err)
		return 1
	}
	return 0
}

// NewRootCommand builds the whole command tree (also used to generate the
// man pages).
func NewRootCommand() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "wgkex",
		Short:         "WireGuard key exchange for Freifunk mesh networks",
		Long:          "wgkex exchanges WireGuard keys between mesh nodes and gateways: the broker takes\nkeys over HTTP and picks a gateway, workers install them as peers, routes and VXLAN\nFDB entries.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w\nRun '%s --help' for usage", err, c.CommandPath())
	})
	pf := root.PersistentFlags()
	pf.StringVarP(&g.configFile, "config", "c", "", "config file (default $"+config.EnvConfigFile+", else "+config.DefaultFile+")")
	pf.StringVar(&g.logLevel, "log-level", "", "log level: debug, info, warn, error (default info, or log_level from the config)")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")

	root.AddCommand(
		newBrokerCommand(g),
		newWorkerCommand(g),
		newDummyIfaceCommand(g),
		newClientCommand(g),
		newConfigCommand(g),
		newVersionCommand(),
		newParkerCommand(),
	)
	return root
}

// loadConfig reads and validates the configuration and sets up logging,
// before the caller touches the network or the kernel.
func (g *globals) loadConfig(stderr io.Writer) (*config.Config, *slog.Logger, error) {
	return g.loadConfigWith(stderr, nil)
}

// loadConfigWith is loadConfig with flags applied (by override) before
// validation.
func (g *globals) loadConfigWith(stderr io.Writer, override func(*config.Config)) (*config.Config, *slog.Logger, error) {
	cfg, err := config.Load(g.configFile)
	if err != nil {
		return nil, nil, err
	}
	if override != nil {
		override(cfg)
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	log, err := g.logger(stderr, cfg.LogLevel)
	if err != nil {
		return nil, nil, err
	}
	if cfg.File != "" {
		log.Info("configuration loaded", "file", cfg.File)
	} else {
		log.Info("no config file; using environment and defaults", "file", config.DefaultFile)
	}
	for _, n := range cfg.Notes {
		log.Info("config: " + n)
	}
	return cfg, log, nil
}

func (g *globals) logger(w io.Writer, cfgLevel string) (*slog.Logger, error) {
	levelName := g.logLevel
	if levelName == "" {
		levelName = cfgLevel
	}
	level, err := config.ParseLogLevel(levelName)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, errors.New("--log-format: want text or json, got " + g.logFormat)
}

// openKernel opens the rtnetlink socket and the WireGuard control client;
// closeKernel closes both.
func openKernel() (k *kernel.Conn, wg *wgctrl.Client, closeKernel func(), err error) {
	if k, err = kernel.Dial(); err != nil {
		return nil, nil, nil, err
	}
	if wg, err = wgctrl.New(); err != nil {
		k.Close()
		return nil, nil, nil, fmt.Errorf("open wireguard control: %w", err)
	}
	return k, wg, func() { wg.Close(); k.Close() }, nil
}

// vxlanFlags choose the mesh VNI: --vxlan-id, or the id Gluon nodes derive
// from the site's --domain-seed; default wgkex.DefaultVXLANID.
type vxlanFlags struct {
	vni  uint32
	seed string
}

func (f *vxlanFlags) add(c *cobra.Command) {
	c.Flags().Uint32Var(&f.vni, "vxlan-id", wgkex.DefaultVXLANID, "VXLAN id (VNI) of the mesh link")
	c.Flags().StringVar(&f.seed, "domain-seed", "", "site.conf domain_seed (hex): use the VXLAN id Gluon nodes derive from it")
	c.MarkFlagsMutuallyExclusive("vxlan-id", "domain-seed")
}

func (f *vxlanFlags) id() (uint32, error) {
	if f.seed != "" {
		id, err := wgkex.VXLANIDFromSeed(f.seed)
		if err != nil {
			return 0, fmt.Errorf("--domain-seed: %w", err)
		}
		return id, nil
	}
	if f.vni < 1 || f.vni > wgkex.MaxVXLANID {
		return 0, fmt.Errorf("--vxlan-id %d: want 1 to %d (24 bits)", f.vni, wgkex.MaxVXLANID)
	}
	return f.vni, nil
}
