package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"driftgate/gateway"
)

func newKeyCmd() *cobra.Command {
	c := &cobra.Command{Use: "key", Short: "Frame keys (docs/operations.md, Keys)"}
	c.AddCommand(&cobra.Command{
		Use:   "generate FILE",
		Short: "Write a new random key to FILE (which must not exist), readable by its owner only",
		Long: `generate writes 32 random bytes as hex to FILE, created with mode 0600. Give
the same file to every node (relay.key_file and receive.key_file). To rotate
without a gap, append a new key as a second line on every node, then swap the
two lines everywhere, then remove the old one: receivers accept both keys,
relays sign with the first.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := gateway.GenerateKey(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "wrote a new key to %s (mode 0600)\n", args[0])
			return nil
		},
	})
	return c
}
