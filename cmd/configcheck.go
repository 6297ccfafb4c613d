package cmd

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/freifunkMUC/wgkex/pkg/config"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

func newConfigCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Inspect the configuration",
		Args:  cobra.NoArgs,
	}
	var name string
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration (file + environment) and print the effective values, secrets masked",
		Long: "check loads the configuration as broker and worker do, prints the effective values (secrets\n" +
			"masked) and the transport each side will use, and warns on stderr about settings that are\n" +
			"valid but probably wrong. It lists every problem and exits non-zero when the configuration\n" +
			"is invalid. It touches neither the network nor the kernel.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return runConfigCheck(c.OutOrStdout(), c.ErrOrStderr(), g, name)
		},
	}
	check.Flags().StringVar(&name, "name", "", "worker name, as wgkex worker --name (default worker.name, else the host name)")
	c.AddCommand(check, newMosquittoACLCommand(g))
	return c
}

func runConfigCheck(out, errOut io.Writer, g *globals, nameFlag string) error {
	cfg, err := config.Load(g.configFile)
	if err != nil {
		return listProblems(errOut, err)
	}
	printConfig(out, cfg)
	if err := cfg.Validate(); err != nil {
		return listProblems(errOut, err)
	}
	name, nameFrom, err := resolveWorkerName(nameFlag, cfg)
	if err != nil {
		return err
	}
	// The same options broker and worker build: this also reads the TLS files.
	mo, err := mqtt.OptionsFromConfig(cfg)
	if err != nil {
		return err
	}
	printTransports(out, cfg, append([]*url.URL{mo.Server}, mo.Fallbacks...))
	external, externalFrom := cfg.ExternalAddress(name), "externalName"
	if cfg.ExternalName == "" {
		externalFrom = "the worker name"
	}
	fmt.Fprintf(out, "# worker: name %q (%s), hands nodes the Address %q (%s)\n", name, nameFrom, external, externalFrom)
	for _, w := range cfg.Warnings(name) {
		fmt.Fprintf(errOut, "warning: %s\n", w)
	}
	fmt.Fprintln(out, "# configuration OK")
	return nil
}

// listProblems prints every problem of a *config.Error on a line of its own.
func listProblems(w io.Writer, err error) error {
	var ce *config.Error
	if !errors.As(err, &ce) {
		return err
	}
	fmt.Fprintf(w, "%d problem(s):\n", len(ce.Problems))
	for _, p := range ce.Problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
	return errors.New("configuration invalid")
}

// resolveWorkerName names the worker as runWorker does: --name, else
// worker.name, else the host name.
func resolveWorkerName(flag string, cfg *config.Config) (name, from string, err error) {
	switch {
	case flag != "":
		name, from = flag, "from --name"
	case cfg.Worker.Name != "":
		name, from = cfg.Worker.Name, "from worker.name"
	default:
		if name, err = os.Hostname(); err != nil {
			return "", "", fmt.Errorf("worker name: %w", err)
		}
		from = "the host name"
	}
	if !wgkex.ValidName(name) {
		return "", "", fmt.Errorf("worker name %q (%s) cannot stand in an MQTT topic", name, from)
	}
	return name, from, nil
}

// printTransports says how each side connects, as pkg/mqtt dials servers
// (the URLs OptionsFromConfig gives, in the order they are tried), and as
// the broker serves HTTP.
func printTransports(w io.Writer, c *config.Config, servers []*url.URL) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	if c.Embedded() {
		server := servers[0]
		p("# broker -> MQTT: %s (its own embedded server, plain TCP)", server.Redacted())
		p("# worker -> MQTT: %s (plain TCP, to the embedded server of a broker on this host)", server.Redacted())
		auth := "username and password required"
		if c.MQTT.Username == "" && c.MQTT.Password == "" {
			auth = "no credentials: loopback only"
		}
		p("# embedded MQTT server: plain TCP on %s (%s)", c.MQTT.Listen, auth)
	} else {
		for _, side := range []string{"broker", "worker"} {
			for i, server := range servers {
				via := "MQTT"
				if i > 0 {
					via = fmt.Sprintf("MQTT, fallback %d", i)
				}
				p("# %s -> %s: %s (%s)", side, via, server.Redacted(), mqttTransport(c, server))
			}
		}
	}
	p("# HTTP API (broker): plain HTTP on %s", c.BrokerListen.Addr())
	if c.Worker.MetricsListen != "" {
		p("# worker metrics: plain HTTP on %s", c.Worker.MetricsListen)
	}
}

// mqttTransport describes the connection to an external MQTT server.
func mqttTransport(c *config.Config, server *url.URL) string {
	if !config.TLSScheme(server.Scheme) {
		kind := "plain TCP"
		if server.Scheme == "ws" {
			kind = "websocket"
		}
		kind += ", unencrypted"
		if c.MQTT.Password != "" && !loopbackHost(server.Hostname()) {
			kind += ", password sent in clear text"
		}
		return kind
	}
	kind := "TLS"
	if server.Scheme == "wss" {
		kind = "websocket over TLS"
	}
	kind += ", server certificate checked against system roots"
	if c.MQTT.CAFile != "" {
		kind += " + ca_file"
	}
	if c.MQTT.CertFile != "" {
		kind += ", client certificate from cert_file"
	}
	return kind
}

func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// redactURL masks the password of a broker_url entry that carries one.
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil && strings.Contains(raw, "://") {
		return u.Redacted()
	}
	return raw
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
	switch urls := c.MQTT.BrokerURLs; len(urls) {
	case 0:
		p("  broker_url: \"\"   # embedded server (broker)")
	case 1:
		p("  broker_url: %q", redactURL(urls[0]))
	default:
		quoted := make([]string, len(urls))
		for i, u := range urls {
			quoted[i] = strconv.Quote(redactURL(u))
		}
		p("  broker_url: [%s]   # tried in this order", strings.Join(quoted, ", "))
	}
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
