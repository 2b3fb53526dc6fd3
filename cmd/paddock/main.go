// Command paddock is the one binary of paddock: the node daemon, the
// one-node NBD export, the witness, and every command-line tool.
//
// Each command lives in a file of its own (serve.go, demo.go, ...) and
// registers itself on rootCmd from an init function, so that commands can
// be added without touching this file.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:   "paddock",
	Short: "Replicated block volumes, quorum, fencing and live migration for hypervisor clusters",
	Long: `paddock keeps the disks and the memory of virtual machines alive across a
small cluster of hypervisor hosts: replicated block volumes exported over NBD,
a votequorum core with fencing, and live migration of running guests.

Run "paddock demo" for a local walk-through, "paddock serve --help" to export
a single file over NBD.`,
	SilenceUsage:  true,
	SilenceErrors: true,
}

// exitError carries a process exit status through cobra, for commands whose
// status is part of their interface (paddock status: 0 quorate, 2 inquorate).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "paddock:", err)
		if ee, ok := err.(*exitError); ok {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}
