package cmd

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/freifunkMUC/wgkex/pkg/config"
	"github.com/freifunkMUC/wgkex/pkg/mqttserver"
)

func newMosquittoACLCommand(g *globals) *cobra.Command {
	var passwordFile string
	c := &cobra.Command{
		Use:   "mosquitto-acl",
		Short: "Print a Mosquitto ACL file that gives the broker and each worker only its own topics",
		Long: "mosquitto-acl prints an acl_file for Mosquitto with the rights the embedded MQTT server\n" +
			"gives with a password file (docs/protocol.md §3.5): the broker user (mqtt.username)\n" +
			"publishes keys and reads worker state; a worker, whose MQTT user name is its worker\n" +
			"name, publishes only its own state and reads keys. Workers listed in workers: get a\n" +
			"block each, otherwise one pattern covers every user. The comments at the top list the\n" +
			"mosquitto_passwd commands that create the users.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := config.Load(g.configFile)
			if err != nil {
				return err
			}
			return writeMosquittoACL(c.OutOrStdout(), cfg.MQTT.Username, slices.Sorted(maps.Keys(cfg.Workers)), passwordFile)
		},
	}
	c.Flags().StringVar(&passwordFile, "password-file", "/etc/mosquitto/passwd", "password file named in the hints")
	return c
}

// writeMosquittoACL writes the ACL for brokerUser and workers (none: a
// pattern for every user).
func writeMosquittoACL(w io.Writer, brokerUser string, workers []string, passwordFile string) error {
	if brokerUser == "" {
		return errors.New("mqtt.username is empty: the broker needs a user of its own on the bus")
	}
	for _, name := range append([]string{brokerUser}, workers...) {
		// Mosquitto reads a user name up to the end of the line; a pattern
		// would substitute % sequences in it.
		if strings.ContainsAny(name, " \t\r\n%") || strings.ContainsAny(name, "/+#") && name != brokerUser {
			return fmt.Errorf("user %q cannot stand in a Mosquitto ACL file", name)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Mosquitto ACL for wgkex (docs/protocol.md §3.5), from wgkex config mosquitto-acl.\n")
	fmt.Fprintf(&b, "# mosquitto.conf:\n#   allow_anonymous false\n#   password_file %s\n#   acl_file <this file>\n", passwordFile)
	fmt.Fprintf(&b, "# Users (the same file serves the embedded server as mqtt.password_file):\n")
	fmt.Fprintf(&b, "#   mosquitto_passwd -c %s %s   # the broker (mqtt.username); -c creates the file\n", passwordFile, brokerUser)
	if len(workers) == 0 {
		fmt.Fprintf(&b, "#   mosquitto_passwd %s <worker>   # each worker; the user name is its worker name\n", passwordFile)
	}
	for _, name := range workers {
		fmt.Fprintf(&b, "#   mosquitto_passwd %s %s\n", passwordFile, name)
	}
	fmt.Fprintf(&b, "# then give each worker its user name and password as mqtt.username/mqtt.password,\n")
	fmt.Fprintf(&b, "# and reload Mosquitto (SIGHUP) after changes.\n")

	fmt.Fprintf(&b, "\n# The broker publishes keys and its status, and reads the workers' state.\nuser %s\n", brokerUser)
	writeRules(&b, "topic", mqttserver.BrokerRules())
	if len(workers) == 0 {
		fmt.Fprintf(&b, "\n# Every other user is the worker of the same name: it speaks only for itself.\n")
		fmt.Fprintf(&b, "# (Mosquitto warns that the read patterns hold no %%u: they are meant for every user.)\n")
		writeRules(&b, "pattern", mqttserver.WorkerRules("%u"))
	}
	for _, name := range workers {
		fmt.Fprintf(&b, "\n# Worker %s\nuser %s\n", name, name)
		writeRules(&b, "topic", mqttserver.WorkerRules(name))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeRules writes one line per filter: readwrite where both apply.
func writeRules(b *strings.Builder, keyword string, r mqttserver.Rules) {
	for _, f := range r.Write {
		access := "write"
		if slices.Contains(r.Read, f) {
			access = "readwrite"
		}
		fmt.Fprintf(b, "%s %s %s\n", keyword, access, f)
	}
	for _, f := range r.Read {
		if !slices.Contains(r.Write, f) {
			fmt.Fprintf(b, "%s read %s\n", keyword, f)
		}
	}
}
