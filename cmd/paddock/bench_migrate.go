package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/bench/migratebench"
	"github.com/paddock-io/paddock/migrate"
)

func init() {
	cfg := migratebench.DefaultConfig()
	var sizes, rates []string
	var asJSON bool
	var cpuProfile string
	cmd := &cobra.Command{
		Use:   "migrate [--sizes 1G,2G,4G] [--dirty-rates 0,50M,200M] [--patterns uniform,hotset,sequential] [--contents random,halfzero] [--transports quic,tcp] [--reps 3] [--json]",
		Short: "Live migration of synthetic guests over QUIC and TCP on loopback",
		Long: `bench migrate migrates synthetic guests (paddock guest run's workload) on
loopback for every combination of size, dirty rate, write pattern and
content, over each transport in the same run (interleaved), and prints a
markdown table of medians over --reps: total time, downtime, rounds, bytes
sent, and total time against the floor RAM / --link-rate. The guest moves
back and forth: the destination of one repetition is the next one's source.
Sizes and rates take K, M, G suffixes (powers of 1024 for sizes; rates are
read the same way, so 50M is 52.4 MB/s).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.SizesBytes, cfg.DirtyBytesPerSec = nil, nil
			for _, s := range sizes {
				n, err := parseSize(s)
				if err != nil {
					return err
				}
				cfg.SizesBytes = append(cfg.SizesBytes, n)
			}
			for _, s := range rates {
				n, err := parseSize(s)
				if err != nil {
					return err
				}
				cfg.DirtyBytesPerSec = append(cfg.DirtyBytesPerSec, n)
			}
			cfg.Log = os.Stderr
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := migratebench.Run(ctx, cfg)
			if err != nil {
				if res != nil && len(res.Rows) > 0 {
					// Interrupted: the finished configurations still count.
					fmt.Print(res.Markdown("paddock bench migrate " + strings.Join(os.Args[3:], " ") + " (interrupted)"))
				}
				return err
			}
			if asJSON {
				fmt.Println(res.JSON())
				return nil
			}
			fmt.Print(res.Markdown("paddock bench migrate " + strings.Join(os.Args[3:], " ")))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&sizes, "sizes", []string{"1G", "2G", "4G"}, "guest RAM sizes")
	fl.StringSliceVar(&rates, "dirty-rates", []string{"0", "50M", "200M"}, "dirty rates in bytes per second")
	fl.StringSliceVar(&cfg.Patterns, "patterns", cfg.Patterns, "write patterns: "+strings.Join(migrate.SynthPatterns, ", "))
	fl.StringSliceVar(&cfg.Contents, "contents", cfg.Contents, "contents: random, halfzero")
	fl.StringSliceVar(&cfg.Transports, "transports", cfg.Transports, "transports: quic, tcp")
	fl.IntVar(&cfg.Reps, "reps", cfg.Reps, "repetitions per configuration and transport (medians reported)")
	fl.IntVar(&cfg.Streams, "streams", cfg.Streams, "page streams")
	fl.DurationVar(&cfg.DowntimeLimit, "downtime", cfg.DowntimeLimit, "downtime limit")
	fl.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "per-migration timeout")
	fl.Float64Var(&cfg.LinkBytesPerSecond, "link-rate", cfg.LinkBytesPerSecond, "link rate of the floor, bytes per second (default 10 GbE)")
	fl.BoolVar(&cfg.VerifyRAM, "verify-ram", false, "both sides rehash all of RAM inside the pause for the digest check")
	fl.BoolVar(&cfg.HugePages, "hugepages", false, "put both sides' guest RAM on 2 MiB huge pages (the hugetlb pool must hold twice the largest size: sysctl vm.nr_hugepages)")
	fl.BoolVar(&cfg.WarmPool, "warm-pool", true, "with --hugepages: touch every free page of the pool once before the run, as on a host that has run guests (on a VM the first touch is the host's fault)")
	fl.BoolVar(&asJSON, "json", false, "print JSON rows")
	fl.StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile of the run to this file")
	benchCmd.AddCommand(cmd)
}
