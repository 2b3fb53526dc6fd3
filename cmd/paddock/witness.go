package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/quorum/witness"
)

func init() {
	var listen, dataDir, logLevel string
	cmd := &cobra.Command{
		Use:   "witness --listen IP:PORT --data-dir DIR",
		Short: "Run the tie-breaker vote of a cluster on a third machine (like corosync-qnetd)",
		Long: `witness runs the cluster's tie breaker: a diskless voter on a machine outside
the cluster, for clusters with an even number of nodes (2 nodes + witness
stay quorate when either node fails).

Set it up in three steps:
  1. on a cluster node:   paddock cluster witness-cert --data-dir NODE_DIR --out wdir
     (signs a witness certificate with the cluster CA)
  2. copy wdir to the witness machine and run there:
                          paddock witness --listen IP:PORT --data-dir wdir
  3. on a cluster node:   paddock cluster quorum-options --data-dir NODE_DIR --witness IP:PORT

Every node keeps one TLS connection to the witness (both sides prove their
certificates come from the cluster CA) and reports the membership it sees.
The witness gives its vote to at most one partition (algorithm ffsplit or
lms, set by quorum-options), for exactly that membership and with a short
lease (3/4 of the token timeout) that the node's reports renew. It never
gives the vote back to nodes that lost quorum: it remembers the partition
it voted for last in DIR/state.json, and after a restart it waits out the
leases of its previous life before it votes again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := witness.LoadDir(dataDir)
			if err != nil {
				return err
			}
			log := newLogger(logLevel)
			srv, err := witness.NewServer(d, log)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("witness listener: %w", err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				if err := serveWitnessVolumes(ctx, d, listen, log); err != nil {
					log.Error("witness volume vote stopped", "err", err)
				}
			}()
			return srv.Serve(ctx, ln)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "IP:PORT to accept the nodes' connections on (TCP)")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the directory made by \"paddock cluster witness-cert\"; the witness keeps its state there")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.MarkFlagRequired("listen")
	cmd.MarkFlagRequired("data-dir")
	rootCmd.AddCommand(cmd)
}
