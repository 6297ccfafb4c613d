// Command genman writes the man pages of wgkex (cobra/doc) into a folder:
// go run ./scripts/genman [DIR] (default build/man).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra/doc"

	"github.com/freifunkMUC/wgkex/cmd"
)

func main() {
	dir := "build/man"
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	root := cmd.NewRootCommand()
	root.DisableAutoGenTag = true
	header := &doc.GenManHeader{Title: "WGKEX", Section: "8", Source: "wgkex", Manual: "wgkex manual"}
	if err := doc.GenManTree(root, header, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("man pages in", dir)
}
