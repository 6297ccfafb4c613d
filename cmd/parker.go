package cmd

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/freifunkMUC/wgkex/pkg/signify"
)

func newParkerCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "parker",
		Short: "Tools for Parker (v3) node configuration",
	}
	c.AddCommand(newParkerKeygenCommand())
	return c
}

func newParkerKeygenCommand() *cobra.Command {
	var secretPath, publicPath, comment string
	c := &cobra.Command{
		Use:   "keygen",
		Short: "Write a signify key pair for signing Parker replies",
		Long: "keygen writes an unencrypted signify key pair (like `signify -G -n`): the broker signs\n" +
			"every Parker reply with the secret key, nodes check it with the public key. Existing files\n" +
			"are never overwritten. It prints the public key line: the site's config_pubkey\n" +
			"(parker.nodeconfig.config_pubkey) in site.conf.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			key, err := signify.WriteKeyPair(secretPath, publicPath, comment)
			if err != nil {
				return fmt.Errorf("parker keygen: %w", err)
			}
			fmt.Fprintln(c.ErrOrStderr(), "wrote", secretPath, "and", publicPath, "- config_pubkey for site.conf:")
			fmt.Fprintln(c.OutOrStdout(), key.Public().String())
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&secretPath, "secret-key", "", "where to write the secret key (mode 0600)")
	f.StringVar(&publicPath, "public-key", "", "where to write the public key")
	f.StringVar(&comment, "comment", "", "comment in the key files' untrusted comment line (default \""+signify.DefaultComment+"\")")
	c.MarkFlagRequired("secret-key")
	c.MarkFlagRequired("public-key")
	return c
}
