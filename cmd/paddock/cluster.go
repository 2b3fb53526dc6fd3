package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/node"
)

func init() {
	clusterCmd := &cobra.Command{
		Use:   "cluster",
		Short: "Create a cluster, add and remove nodes",
	}
	var co node.CreateOptions
	var dataDir string
	create := &cobra.Command{
		Use:   "create NAME --data-dir DIR --node-name N --cluster-addr IP:PORT",
		Short: "Make a one-node cluster: cluster id, CA, this node's certificate, authkey",
		Long: `create makes a new cluster with this node as its only member (like
"pvecm create"). It writes the cluster CA, this node's certificate, the
heartbeat authkey and version 1 of the configuration into --data-dir. Start
the node afterwards with "paddock node --data-dir DIR".

Every node needs a unique name and static addresses: the cluster address
carries heartbeats (UDP) and node-to-node control (TCP, same port); the
storage address serves NBD and replication; the migration address receives
guests.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			co.ClusterName = args[0]
			cfg, err := node.CreateCluster(node.DataDir{Path: dataDir}, co)
			if err != nil {
				return err
			}
			fmt.Printf("cluster %q created (id %s) in %s; node %q is node 1\n", cfg.ClusterName, cfg.ClusterID, dataDir, co.NodeName)
			fmt.Printf("start it with: paddock node --data-dir %s\n", dataDir)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&dataDir, "data-dir", "", "the node's data directory (created)")
	f.StringVar(&co.NodeName, "node-name", "", "this node's unique name")
	f.StringVar(&co.ClusterAddr, "cluster-addr", "", "static IP:PORT for heartbeats and control")
	f.StringVar(&co.StorageAddr, "storage-addr", "", "static IP:PORT for NBD and replication")
	f.StringVar(&co.MigrationAddr, "migration-addr", "", "static IP:PORT for live migration")
	f.Int64Var(&co.TokenMs, "token-ms", node.DefaultTokenMs, "token timeout: a node silent this long is lost (corosync: 3000 + 650 per node beyond two)")
	for _, req := range []string{"data-dir", "node-name", "cluster-addr"} {
		create.MarkFlagRequired(req)
	}
	clusterCmd.AddCommand(create)

	var tokDir string
	addToken := &cobra.Command{
		Use:   "add-token --data-dir DIR",
		Short: "Print a one-time token that lets a new node join through this node",
		Long: `add-token asks the running node for a join token (valid once, for 24 hours)
and prints the "paddock cluster join" line to run on the new node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var rep node.TokenReply
			if err := node.NewControlClient(node.DataDir{Path: tokDir}, 10*time.Second).Call("POST", "/v1/tokens", struct{}{}, &rep); err != nil {
				return err
			}
			fmt.Println(rep.Token)
			fmt.Fprintf(os.Stderr, "valid once, until %s; on the new node run:\n  paddock cluster join %s --token %s --data-dir DIR --node-name NAME --cluster-addr IP:PORT\n",
				rep.ExpiresAt.Format(time.RFC3339), rep.JoinAddr, rep.Token)
			return nil
		},
	}
	addToken.Flags().StringVar(&tokDir, "data-dir", "", "the data directory of a running node")
	addToken.MarkFlagRequired("data-dir")
	clusterCmd.AddCommand(addToken)

	var jo node.JoinOptions
	var joinDir string
	join := &cobra.Command{
		Use:   "join ADDR --token T --data-dir DIR --node-name N --cluster-addr IP:PORT",
		Short: "Join an existing cluster through the node at ADDR (its cluster address)",
		Long: `join adds this node to a cluster (like "pvecm add"): it checks the existing
node's certificate against the token, asks it to add this node to the
configuration (that needs quorum), and installs the configuration, the cluster
CA and the authkey into --data-dir. Start the node afterwards with
"paddock node --data-dir DIR".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			jo.Addr = args[0]
			cfg, id, err := node.JoinCluster(cmd.Context(), node.DataDir{Path: joinDir}, jo)
			if err != nil {
				return err
			}
			fmt.Printf("joined cluster %q as node %d (%s); configuration version %d, %d nodes\n", cfg.ClusterName, id, jo.NodeName, cfg.Version, len(cfg.Nodes))
			fmt.Printf("start it with: paddock node --data-dir %s\n", joinDir)
			return nil
		},
	}
	jf := join.Flags()
	jf.StringVar(&jo.Token, "token", "", "the token from \"paddock cluster add-token\"")
	jf.StringVar(&joinDir, "data-dir", "", "this node's data directory (created)")
	jf.StringVar(&jo.NodeName, "node-name", "", "this node's unique name")
	jf.StringVar(&jo.ClusterAddr, "cluster-addr", "", "static IP:PORT for heartbeats and control")
	jf.StringVar(&jo.StorageAddr, "storage-addr", "", "static IP:PORT for NBD and replication")
	jf.StringVar(&jo.MigrationAddr, "migration-addr", "", "static IP:PORT for live migration")
	for _, req := range []string{"token", "data-dir", "node-name", "cluster-addr"} {
		join.MarkFlagRequired(req)
	}
	clusterCmd.AddCommand(join)

	var rmDir string
	remove := &cobra.Command{
		Use:   "remove NODE --data-dir DIR",
		Short: "Remove a node from the cluster configuration (needs quorum)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var cfg node.ClusterConfig
			if err := node.NewControlClient(node.DataDir{Path: rmDir}, 60*time.Second).Call("POST", "/v1/nodes/remove", node.RemoveRequest{Name: args[0]}, &cfg); err != nil {
				return err
			}
			fmt.Printf("node %s removed; configuration version %d, %d nodes\n", args[0], cfg.Version, len(cfg.Nodes))
			return nil
		},
	}
	remove.Flags().StringVar(&rmDir, "data-dir", "", "the data directory of a running node")
	remove.MarkFlagRequired("data-dir")
	clusterCmd.AddCommand(remove)

	var wcDir, wcOut string
	witnessCert := &cobra.Command{
		Use:   "witness-cert --data-dir NODE_DIR --out DIR",
		Short: "Sign a certificate for the cluster's witness with the cluster CA",
		Long: `witness-cert makes the data directory of "paddock witness" (as
corosync-qdevice-net-certutil does for qnetd): the cluster CA certificate, a
witness certificate and key signed by the cluster CA, and witness.json naming
the cluster. Run it on any cluster node (it reads NODE_DIR, the node need not
run), copy DIR to the witness machine, and start "paddock witness --data-dir
DIR" there. The CA's key is not copied.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := node.IssueWitnessCert(node.DataDir{Path: wcDir}, wcOut); err != nil {
				return err
			}
			fmt.Printf("witness directory written to %s\ncopy it to the witness machine and run: paddock witness --listen IP:PORT --data-dir DIR\n", wcOut)
			return nil
		},
	}
	witnessCert.Flags().StringVar(&wcDir, "data-dir", "", "a cluster node's data directory")
	witnessCert.Flags().StringVar(&wcOut, "out", "", "the witness data directory to write")
	witnessCert.MarkFlagRequired("data-dir")
	witnessCert.MarkFlagRequired("out")
	clusterCmd.AddCommand(witnessCert)

	var qoDir, witnessAddr, witnessAlgo string
	var twoNode, waitForAll, lms, atb bool
	var expectedVotes uint32
	var lmsWindow time.Duration
	var atbNode string
	qo := &cobra.Command{
		Use:   "quorum-options --data-dir DIR [--two-node] [--wait-for-all] [--expected-votes N] [--last-man-standing [--last-man-standing-window 10s]] [--auto-tie-breaker [--auto-tie-breaker-node lowest|highest|IDS]] [--witness IP:PORT [--witness-algorithm ffsplit|lms]]",
		Short: "Set votequorum options (a configuration change: needs quorum)",
		Long: `quorum-options sets the votequorum options of the cluster configuration, as
the quorum section of corosync.conf does; options not given are reset to
their defaults. --two-node gives a 2-node cluster quorum with one node (and
turns wait_for_all on unless --wait-for-all=false). The change is committed
by a quorum of the current configuration's votes. wait_for_all,
last_man_standing and auto_tie_breaker are read at startup, as corosync does:
they take effect when each node restarts. Conflicting options (two_node with
auto_tie_breaker, auto_tie_breaker with last_man_standing, ...) are refused.

--witness IP:PORT adds the witness ("paddock witness", see its --help): one
more vote (ffsplit, the default) or nodes-1 votes (lms, the last node
standing keeps quorum). It cannot be combined with two_node,
last_man_standing or auto_tie_breaker. To remove the witness, run
quorum-options without --witness (or with --witness "").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o := node.QuorumOptions{TwoNode: twoNode, ExpectedVotes: expectedVotes,
				LastManStanding: lms, LastManStandingWindowMs: lmsWindow.Milliseconds(),
				AutoTieBreaker: atb, AutoTieBreakerNode: atbNode}
			if witnessAddr != "" {
				o.Witness = &node.Witness{Addr: witnessAddr, Algorithm: witnessAlgo}
			} else if cmd.Flags().Changed("witness-algorithm") {
				return fmt.Errorf("--witness-algorithm needs --witness IP:PORT")
			}
			if cmd.Flags().Changed("wait-for-all") {
				o.WaitForAll = &waitForAll
			}
			var cfg node.ClusterConfig
			if err := node.NewControlClient(node.DataDir{Path: qoDir}, 60*time.Second).Call("POST", "/v1/quorum-options", o, &cfg); err != nil {
				return err
			}
			fmt.Printf("quorum options set; configuration version %d\n", cfg.Version)
			return nil
		},
	}
	qo.Flags().StringVar(&qoDir, "data-dir", "", "the data directory of a running node")
	qo.Flags().BoolVar(&twoNode, "two-node", false, "two_node: quorum 1 while the cluster has two nodes")
	qo.Flags().BoolVar(&waitForAll, "wait-for-all", false, "wait_for_all: inquorate until all expected votes were seen at once")
	qo.Flags().Uint32Var(&expectedVotes, "expected-votes", 0, "expected_votes (0: the sum of the nodes' votes)")
	qo.Flags().BoolVar(&lms, "last-man-standing", false, "last_man_standing: recalculate expected votes down after a stable window")
	qo.Flags().DurationVar(&lmsWindow, "last-man-standing-window", 0, "last_man_standing_window (default 10s)")
	qo.Flags().BoolVar(&atb, "auto-tie-breaker", false, "auto_tie_breaker: a 50/50 split goes to the side of the tie-breaker node")
	qo.Flags().StringVar(&atbNode, "auto-tie-breaker-node", "", "auto_tie_breaker_node: lowest (default), highest, or node ids")
	qo.Flags().StringVar(&witnessAddr, "witness", "", "the witness's IP:PORT (\"paddock witness\"); without it the witness is removed")
	qo.Flags().StringVar(&witnessAlgo, "witness-algorithm", "ffsplit", "ffsplit (one vote, breaks 50:50 splits) or lms (nodes-1 votes, the last node standing keeps quorum)")
	qo.MarkFlagRequired("data-dir")
	clusterCmd.AddCommand(qo)
	rootCmd.AddCommand(clusterCmd)

	var nodeDir, metricsAddr, logLevel, fenceIface, fenceMode string
	nodeCmd := &cobra.Command{
		Use:   "node --data-dir DIR",
		Short: "Run the paddock daemon of this host",
		Long: `node runs the daemon: heartbeats on the cluster address, the votequorum
state machine, the control socket (DIR/paddock.sock) for the CLI, and
Prometheus metrics on --metrics-addr.

--fence-interface IFACE turns the network fence on: an eBPF program (XDP, or
tcx with --fence-mode tcx) on IFACE, normally the storage interface, drops
every packet from the addresses of a node the cluster fenced, until
"paddock unfence NODE". The blocked set is kept in the cluster configuration
and re-applied when the node starts. Needs root (CAP_BPF, CAP_NET_ADMIN); a
filter that cannot be attached stops the node from starting. Without the
flag the node drops nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return node.Run(ctx, node.DataDir{Path: nodeDir}, node.Options{MetricsAddr: metricsAddr, Logger: newLogger(logLevel),
				FenceInterface: fenceIface, FenceMode: fenceMode})
		},
	}
	nodeCmd.Flags().StringVar(&nodeDir, "data-dir", "", "the node's data directory")
	nodeCmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9810)")
	nodeCmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	nodeCmd.Flags().StringVar(&fenceIface, "fence-interface", "", "attach the network fence (eBPF) to this interface, e.g. the storage NIC; off when not given")
	nodeCmd.Flags().StringVar(&fenceMode, "fence-mode", "xdp", "where the network fence attaches: xdp or tcx (tc ingress)")
	nodeCmd.MarkFlagRequired("data-dir")
	rootCmd.AddCommand(nodeCmd)

	var statusDir string
	var asJSON bool
	statusCmd := &cobra.Command{
		Use:   "status --data-dir DIR",
		Short: "Show quorum and membership, like pvecm status (exit 0 quorate, 2 not, 1 error)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var s node.Status
			c := node.NewControlClient(node.DataDir{Path: statusDir}, 5*time.Second)
			if err := c.Call("GET", "/v1/status", nil, &s); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				enc.Encode(s)
			} else {
				s.WriteText(os.Stdout)
			}
			if !s.Quorum.Quorate {
				return &exitError{code: 2, err: fmt.Errorf("not quorate: activity blocked")}
			}
			return nil
		},
	}
	statusCmd.Flags().StringVar(&statusDir, "data-dir", "", "the node's data directory")
	statusCmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	statusCmd.MarkFlagRequired("data-dir")
	rootCmd.AddCommand(statusCmd)

	var expDir string
	expectedCmd := &cobra.Command{
		Use:   "expected N --data-dir DIR",
		Short: "Set expected votes by hand (the pvecm expected emergency lever)",
		Long: `expected lowers (or raises) the expected votes of this node's view, the way
"pvecm expected 1" does, so a lone survivor can act. It is refused when N is
below the current total votes or would make a quorate cluster inquorate.

DANGER: if the other nodes are alive on the other side of a broken network,
both sides may act: split brain. Only do this when you know they are down.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var n uint32
			if _, err := fmt.Sscan(args[0], &n); err != nil || n == 0 {
				return fmt.Errorf("expected votes %q: want a positive number", args[0])
			}
			var reply node.ExpectedReply
			c := node.NewControlClient(node.DataDir{Path: expDir}, 5*time.Second)
			if err := c.Call("POST", "/v1/expected", node.ExpectedRequest{Votes: n}, &reply); err != nil {
				return err
			}
			if reply.Warning != "" {
				fmt.Fprintln(os.Stderr, "WARNING:", reply.Warning)
			}
			fmt.Printf("expected votes %d, quorum %d, quorate %v\n", reply.Quorum.ExpectedVotes, reply.Quorum.Quorum, reply.Quorum.Quorate)
			return nil
		},
	}
	expectedCmd.Flags().StringVar(&expDir, "data-dir", "", "the node's data directory")
	expectedCmd.MarkFlagRequired("data-dir")
	rootCmd.AddCommand(expectedCmd)
}
