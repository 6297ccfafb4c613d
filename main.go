// Command wgkex is the WireGuard key exchange of Freifunk mesh networks:
// broker, worker, client and test-gateway tooling in one binary.
package main

import (
	"os"

	"github.com/freifunkMUC/wgkex/cmd"
)

func main() { os.Exit(cmd.Execute()) }
