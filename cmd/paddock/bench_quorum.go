package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/bench/quorumbench"
)

func init() {
	var cfg quorumbench.Config
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "quorum [--trials 20] [--load] [--soak 10m] [--witness] [--json]",
		Short: "Time to detect a killed node and a partition (3 local nodes)",
		Long: `bench quorum starts a 3-node cluster on 127.0.0.1-3 and measures, over
--trials trials each, the time from kill -9 of a node to the survivors
reporting the new membership, and from cutting a node off (nftables, needs
root) to that node reporting inquorate. --load runs stress-ng on every core
meanwhile; --soak then watches the loaded cluster for false losses (a node
seeing fewer than 3 members or no quorum). --witness adds a paddock witness
(ffsplit) on 127.0.0.10 and counts lapses of its vote in the soak.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.Paddock = exe
			cfg.Log = os.Stderr
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := quorumbench.Run(ctx, cfg)
			if err != nil {
				return err
			}
			if asJSON {
				fmt.Println(res.JSON())
				return nil
			}
			fmt.Print(res.Markdown("paddock bench quorum " + strings.Join(os.Args[3:], " ")))
			return nil
		},
	}
	cmd.Flags().IntVar(&cfg.Trials, "trials", 20, "trials of each measurement")
	cmd.Flags().BoolVar(&cfg.Load, "load", false, "load every CPU with stress-ng meanwhile")
	cmd.Flags().DurationVar(&cfg.Soak, "soak", 0, "afterwards, watch the cluster this long for false losses")
	cmd.Flags().BoolVar(&cfg.Witness, "witness", false, "add a paddock witness on 127.0.0.10; the soak also counts lapses of its vote")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	benchCmd.AddCommand(cmd)
}
