package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/bench/nbdbench"
)

// benchCmd groups the benchmarks; each writes a section of BENCHMARKS.md.
var benchCmd = &cobra.Command{
	Use:   "bench",
	Short: "Benchmarks (their results go to BENCHMARKS.md)",
	Args:  cobra.NoArgs,
}

func init() {
	cfg := nbdbench.DefaultConfig()
	var size, out string
	var asJSON bool
	var names []string
	for _, w := range nbdbench.Workloads {
		names = append(names, w.Name)
	}
	cmd := &cobra.Command{
		Use:   "nbd [--runtime 10s] [--reps 3] [--size 1G] [--servers LIST] [--workloads LIST] [--json] [--out FILE]",
		Short: "fio over NBD against paddock serve, qemu-nbd, nbdkit and go-nbd",
		Long: `bench nbd runs the same fio workloads (fio's nbd engine) against paddock
serve (this executable), qemu-nbd, nbdkit file, nbdkit memory and go-nbd's
server, all on the same tmpfs file rewritten identically before every run,
interleaved and repeated, and prints a markdown table of the medians with
paddock's ratio to the best peer, the queue-depth growth with a 1 ms backend,
and the servers' peak RSS.

It needs fio; servers whose program is missing are left out and named. The
go-nbd peer is built from bench/gonbdserver with "go build" unless --gonbd
gives its executable: run it from inside the paddock repository.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if cfg.SizeBytes, err = nbdbench.ParseSize(size); err != nil {
				return err
			}
			if cfg.PaddockBin == "" {
				if cfg.PaddockBin, err = os.Executable(); err != nil {
					return fmt.Errorf("finding this executable: %w (give --paddock)", err)
				}
			}
			cfg.Progress = cmd.ErrOrStderr()
			cfg.Command = "paddock bench nbd"
			for _, name := range []string{"runtime", "ramp", "reps", "size", "servers", "workloads", "dir", "paddock", "gonbd", "json", "out"} {
				if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
					cfg.Command += " --" + name + "=" + f.Value.String()
				}
			}
			return nbdbench.Main(cmd.Context(), cfg, asJSON, out, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.DurationVar(&cfg.Runtime, "runtime", cfg.Runtime, "fio's measured time per run")
	fl.DurationVar(&cfg.Ramp, "ramp", cfg.Ramp, "fio's ramp time before each measured run")
	fl.IntVar(&cfg.Reps, "reps", cfg.Reps, "repetitions of every run (the median is reported)")
	fl.StringVar(&size, "size", "1G", "size of the exported file (K, M, G suffixes)")
	fl.StringVar(&cfg.Servers, "servers", "", "comma-separated subset of: "+strings.Join(nbdbench.ServerNames, ","))
	fl.StringVar(&cfg.Workloads, "workloads", "", "comma-separated subset of: "+strings.Join(names, ","))
	fl.StringVar(&cfg.Dir, "dir", cfg.Dir, "directory for the exported file (tmpfs)")
	fl.StringVar(&cfg.PaddockBin, "paddock", "", "paddock executable to benchmark (default: this one)")
	fl.StringVar(&cfg.GoNBDBin, "gonbd", "", "go-nbd wrapper executable (default: go build ./bench/gonbdserver)")
	fl.BoolVar(&asJSON, "json", false, "print the results as JSON instead of markdown")
	fl.StringVar(&out, "out", "", "also write the markdown report to this file")
	benchCmd.AddCommand(cmd)
	rootCmd.AddCommand(benchCmd)
}
