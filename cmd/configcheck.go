package cmd

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/freifunkMUC/wgkex/pkg/config"
)

func newConfigCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Inspect the configuration",
		Args:  cobra.NoArgs,
	}
	c.AddCommand(&cobra.Command{
		Use:   "check",
		Short: "Validate the configuration (file + environment) and print the effective values, secrets masked",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := config.Load(g.configFile)
			if err != nil {
				return err
			}
			printConfig(c.OutOrStdout(), cfg)
			if err := cfg.Validate(); err != nil {
				var ce *config.Error
				if errors.As(err, &ce) {
					fmt.Fprintf(c.ErrOrStderr(), "%d problem(s):\n", len(ce.Problems))
					for _, p := range ce.Problems {
						fmt.Fprintf(c.ErrOrStderr(), "  %s\n", p)
					}
					return fmt.Errorf("configuration invalid")
				}
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), "# configuration OK")
			return nil
		},
	})
	return c
}

func mask(s string) string {
	if s == "" {
		return `""`
	}
	return `"********"`
}

// printConfig writes the effective configuration as YAML.
func printConfig(w io.Writer, c *config.Config) {
	file := c.File
	if file == "" {
		file = "(none: environment and defaults)"
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("# effective configuration; file: %s", file)
	for _, n := range c.Notes {
		p("# note: %s", n)
	}
	p("domains: [%s]", strings.Join(c.Domains, ", "))
	p("domain_prefixes: [%s]", strings.Join(c.DomainPrefixes, ", "))
	if len(c.Domains) > 0 && len(c.DomainPrefixes) > 0 {
		p("# interfaces:")
		ifs := c.Interfaces()
		for _, d := range c.Domains {
			if i, ok := ifs[d]; ok {
				p("#   %s: %s, %s", d, i.WireGuard, i.VXLAN)
			}
		}
	}
	names := make([]string, 0, len(c.Workers))
	for n := range c.Workers {
		names = append(names, n)
	}
	sort.Strings(names)
	p("workers:")
	for _, n := range names {
		p("  %s: {weight: %d}", n, c.Workers[n])
	}
	p("externalName: %q", c.ExternalName)
	p("mqtt:")
	p("  broker_url: %q%s", c.MQTT.BrokerURL, map[bool]string{true: "   # embedded server (broker)", false: ""}[c.Embedded()])
	p("  broker_port: %d", c.MQTT.Port)
	p("  username: %q", c.MQTT.Username)
	p("  password: %s", mask(c.MQTT.Password))
	p("  keepalive: %d", c.MQTT.Keepalive)
	p("  tls: %t", c.MQTT.TLS)
	p("  ca_file: %q", c.MQTT.CAFile)
	p("  cert_file: %q", c.MQTT.CertFile)
	p("  key_file: %q", c.MQTT.KeyFile)
	p("  listen: %q", c.MQTT.Listen)
	p("broker_listen: {host: %q, port: %d}", c.BrokerListen.Host, c.BrokerListen.Port)
	p("worker:")
	p("  name: %q", c.Worker.Name)
	p("  metrics_interval: %s", c.Worker.MetricsInterval)
	p("  cleanup_interval: %s", c.Worker.CleanupInterval)
	p("  peer_timeout: %s", c.Worker.PeerTimeout)
	p("  new_peer_grace: %s", c.Worker.NewPeerGrace)
	p("  metrics_listen: %q", c.Worker.MetricsListen)
	p("client: {broker_url: %q}", c.Client.BrokerURL)
	p("log_level: %q", c.LogLevel)
}
