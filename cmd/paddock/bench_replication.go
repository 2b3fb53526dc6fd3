package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/bench/replbench"
)

func init() {
	cfg := replbench.Config{Dir: replbench.DefaultDir, Reps: replbench.DefaultReps, Runtime: replbench.DefaultRuntime,
		Ramp: replbench.DefaultRamp}
	var size, resync, out, update string
	var asJSON bool
	var names []string
	for _, w := range replbench.Workloads {
		names = append(names, w.Name)
	}
	cmd := &cobra.Command{
		Use:   "replication [--reps 3] [--runtime 5s] [--size 512M] [--resync 256M] [--json] [--out FILE] [--update BENCHMARKS.md]",
		Short: "fio on volumes of 1, 2 and 3 replicas against a single-node export; resync rate and bytes resent",
		Long: `bench replication starts a 3-node cluster of "paddock node" processes on
127.0.0.31-33 (this executable, data in a temporary directory under --dir,
tmpfs by default), volumes with 1, 2 and 3 replicas whose primary is n1, and
"paddock serve" of a file of the same size on 127.0.0.30 as the single-node
baseline. It runs fio's nbd engine against each, interleaved round-robin in
every repetition:

  seq-write-256k-qd16  256 KiB sequential writes, QD16 (MB/s)
  rand-write-4k-qd32   4 KiB random writes, QD32 (IOPS)
  sync-write-4k-qd1    4 KiB random writes at QD1, each followed by an NBD
                       FLUSH (fio --fsync=1): writes/s and the p50/p99
                       latency of the write and of the flush

then a resync trial: n3 is killed with kill -9, --resync bytes are written
through the primary (into one half of a volume twice that size, the halves
in turn), n3 is restarted and "volume status" is polled until
every replica is UpToDate (the resync rate, and bytes resent / bytes
missed). Every cell is the median over --reps. The markdown report goes to
stdout (--json: JSON), to --out, and with --update into the "Replicated
volumes" section of that file (between its markers; the rest is kept).
--perf-dir records "perf record -g" profiles of the nodes during one extra,
unmeasured run of each workload on 3 replicas.

It needs fio (apt-get install fio).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if cfg.SizeBytes, err = parseSize(size); err != nil {
				return err
			}
			if cfg.ResyncBytes, err = parseSize(resync); err != nil {
				return err
			}
			if cfg.Paddock, err = os.Executable(); err != nil {
				return err
			}
			cfg.Progress = cmd.ErrOrStderr()
			cfg.Command = "paddock bench replication"
			for _, name := range []string{"reps", "runtime", "ramp", "size", "resync", "no-resync", "workloads", "dir"} {
				if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
					cfg.Command += " --" + name + "=" + f.Value.String()
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := replbench.Run(ctx, cfg)
			if err != nil {
				return err
			}
			md := rep.Markdown()
			if asJSON {
				b, err := rep.JSON()
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			} else {
				fmt.Fprint(cmd.OutOrStdout(), md)
			}
			if out != "" {
				if err := os.WriteFile(out, []byte(md), 0o644); err != nil {
					return err
				}
			}
			if update != "" {
				if rep.Interrupted {
					return errors.New("interrupted: " + update + " left as it was")
				}
				if err := replbench.UpdateSection(update, md); err != nil {
					return err
				}
			}
			if rep.Interrupted {
				return errors.New("interrupted: the report holds the runs done so far")
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&cfg.Reps, "reps", cfg.Reps, "repetitions (every cell is the median)")
	fl.DurationVar(&cfg.Runtime, "runtime", cfg.Runtime, "fio's measured time per run")
	fl.DurationVar(&cfg.Ramp, "ramp", cfg.Ramp, "fio's ramp time before each measured run")
	fl.StringVar(&size, "size", "512M", "size of every volume and of the baseline's file")
	fl.StringVar(&resync, "resync", "256M", "bytes written while a replica is away (the resync volume is twice that)")
	fl.BoolVar(&cfg.NoResync, "no-resync", false, "skip the resync trials")
	fl.StringVar(&cfg.Workloads, "workloads", "", "comma-separated subset of: "+strings.Join(names, ","))
	fl.StringVar(&cfg.Dir, "dir", cfg.Dir, "directory for the nodes' data and the baseline's file (tmpfs)")
	fl.StringVar(&cfg.PerfDir, "perf-dir", "", "also profile the nodes with perf during an extra run of each workload on 3 replicas")
	fl.BoolVar(&asJSON, "json", false, "print the results as JSON instead of markdown")
	fl.StringVar(&out, "out", "", "also write the markdown report to this file")
	fl.StringVar(&update, "update", "", "also put the report into the \"Replicated volumes\" section of this markdown file (e.g. BENCHMARKS.md)")
	benchCmd.AddCommand(cmd)
}
