package cmd

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex/pkg/client"
	"github.com/freifunkMUC/wgkex/pkg/config"
	"github.com/freifunkMUC/wgkex/pkg/kernel"
)

// clientFlags are shared by the client subcommands.
type clientFlags struct {
	broker  string
	domain  string
	timeout time.Duration
	retries int
}

func (f *clientFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.broker, "broker", "", "broker base URL (default client.broker_url, else "+config.DefaultClientBroker+")")
	c.Flags().StringVar(&f.domain, "domain", "", "mesh domain, e.g. ffmuc_welt (required)")
	c.Flags().DurationVar(&f.timeout, "timeout", 10*time.Second, "timeout of each request")
	c.Flags().IntVar(&f.retries, "retries", 3, "retries on network errors and 5xx answers, with backoff")
	_ = c.MarkFlagRequired("domain")
}

func (f *clientFlags) pushOptions(g *globals) (client.PushOptions, error) {
	broker := f.broker
	if broker == "" {
		cfg, err := config.Load(g.configFile)
		if err != nil {
			return client.PushOptions{}, err
		}
		broker = cfg.Client.BrokerURL
	}
	return client.PushOptions{Broker: broker, Domain: f.domain, Timeout: f.timeout, Retries: f.retries,
		UserAgent: "wgkex-client/" + version}, nil
}

func newClientCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "client",
		Short: "Register a key with a broker and join the mesh, as a node does",
		Args:  cobra.NoArgs,
	}
	c.AddCommand(newClientPushCommand(g), newClientConnectCommand(g), newClientDisconnectCommand(g))
	return c
}

func newClientPushCommand(g *globals) *cobra.Command {
	var (
		f                        clientFlags
		pub, keyFile, iface, api string
		asJSON                   bool
	)
	c := &cobra.Command{
		Use:   "push",
		Short: "Register a WireGuard public key with the broker and show the gateway it picked",
		Example: "  wgkex client push --domain ffmuc_welt --public-key TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=\n" +
			"  wgkex client push --domain ffmuc_welt --interface wg-mesh --json",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			key, err := publicKey(pub, keyFile, iface)
			if err != nil {
				return err
			}
			po, err := f.pushOptions(g)
			if err != nil {
				return err
			}
			po.PublicKey, po.API = key, api
			res, err := client.Push(c.Context(), po)
			if err != nil {
				return err
			}
			out := c.OutOrStdout()
			if asJSON {
				fmt.Fprintln(out, strings.TrimSpace(string(res.Raw)))
				return nil
			}
			if res.Endpoint == nil {
				fmt.Fprintf(out, "key registered (%s): %s\n", res.API, res.Message)
				return nil
			}
			e := res.Endpoint
			fmt.Fprintf(out, "key registered (%s)\ngateway:      %s\nport:         %s\npublic key:   %s\nlink address: %s\n",
				res.API, e.Address, e.Port, e.PublicKey, e.AllowedIPs[0])
			return nil
		},
	}
	f.add(c)
	c.Flags().StringVar(&pub, "public-key", "", "the public key to register")
	c.Flags().StringVar(&keyFile, "private-key-file", "", "derive the public key from this private key file")
	c.Flags().StringVar(&iface, "interface", "", "read the public key from this WireGuard interface")
	c.Flags().StringVar(&api, "api", "v2", "API version: v2 (falls back to v1 when the broker has no v2) or v1")
	c.Flags().BoolVar(&asJSON, "json", false, "print the broker's raw JSON answer")
	c.MarkFlagsOneRequired("public-key", "private-key-file", "interface")
	c.MarkFlagsMutuallyExclusive("public-key", "private-key-file", "interface")
	return c
}

// publicKey takes the key from exactly one of its three sources.
func publicKey(pub, keyFile, iface string) (string, error) {
	switch {
	case pub != "":
		if _, err := wgtypes.ParseKey(pub); err != nil {
			return "", fmt.Errorf("--public-key: %w", err)
		}
		return pub, nil
	case keyFile != "":
		data, err := os.ReadFile(keyFile)
		if err != nil {
			return "", fmt.Errorf("--private-key-file: %w", err)
		}
		k, err := wgtypes.ParseKey(strings.TrimSpace(string(data)))
		if err != nil {
			return "", fmt.Errorf("--private-key-file %s: %w", keyFile, err)
		}
		return k.PublicKey().String(), nil
	case iface != "":
		wg, err := wgctrl.New()
		if err != nil {
			return "", err
		}
		defer wg.Close()
		dev, err := wg.Device(iface)
		if err != nil {
			return "", fmt.Errorf("--interface %s: %w", iface, err)
		}
		return dev.PublicKey.String(), nil
	}
	return "", errors.New("give --public-key, --private-key-file or --interface")
}

func newClientConnectCommand(g *globals) *cobra.Command {
	var (
		f                clientFlags
		wgIface, vxIface string
		keyFile          string
		userspace, watch bool
		interval         time.Duration
		vni              vxlanFlags
	)
	c := &cobra.Command{
		Use:   "connect",
		Short: "Join the mesh: WireGuard interface, key exchange, gateway peer and VXLAN link",
		Long: "connect does what a Gluon node does after the key exchange: it creates (or reuses) the\n" +
			"WireGuard interface with the key in --private-key-file (created 0600 when absent),\n" +
			"registers the key (v2), adds the chosen gateway as peer (keepalive 25 s) and creates a\n" +
			"VXLAN link (port 8472; id 99, --vxlan-id, or the id Gluon derives from --domain-seed)\n" +
			"to the gateway's link address. With --watch, or with\n" +
			"userspace WireGuard, it stays in the foreground.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if watch && interval <= 0 {
				return fmt.Errorf("--interval %s: want a positive duration", interval)
			}
			log, err := g.logger(os.Stderr, "")
			if err != nil {
				return err
			}
			po, err := f.pushOptions(g)
			if err != nil {
				return err
			}
			id, err := vni.id()
			if err != nil {
				return err
			}
			if keyFile == "" {
				keyFile = "/var/lib/wgkex/" + wgIface + ".key"
			}
			k, wg, closeKernel, err := openKernel()
			if err != nil {
				return err
			}
			defer closeKernel()
			return client.Run(c.Context(), k, wg, client.ConnectOptions{Push: po, WireGuard: wgIface, VXLAN: vxIface,
				KeyFile: keyFile, Userspace: userspace, VXLANID: id, Watch: watch, Interval: interval,
				Out: c.OutOrStdout(), Logger: log})
		},
	}
	f.add(c)
	c.Flags().StringVar(&wgIface, "interface", "wg-mesh", "WireGuard interface")
	c.Flags().StringVar(&vxIface, "vxlan", "vx-mesh", "VXLAN interface")
	c.Flags().StringVar(&keyFile, "private-key-file", "", "private key file (default /var/lib/wgkex/<interface>.key)")
	c.Flags().BoolVar(&userspace, "userspace", false, "use userspace WireGuard even when the kernel has it")
	c.Flags().BoolVar(&watch, "watch", false, "keep checking the link and register again when it is down")
	c.Flags().DurationVar(&interval, "interval", time.Minute, "how often --watch checks the link")
	vni.add(c)
	return c
}

func newClientDisconnectCommand(g *globals) *cobra.Command {
	var wgIface, vxIface string
	c := &cobra.Command{
		Use:   "disconnect",
		Short: "Remove the interfaces connect made",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			k, err := kernel.Dial()
			if err != nil {
				return err
			}
			defer k.Close()
			return client.Disconnect(k, wgIface, vxIface)
		},
	}
	c.Flags().StringVar(&wgIface, "interface", "wg-mesh", "WireGuard interface")
	c.Flags().StringVar(&vxIface, "vxlan", "vx-mesh", "VXLAN interface")
	return c
}
