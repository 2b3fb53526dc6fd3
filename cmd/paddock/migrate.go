package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/migrate"
	"github.com/paddock-io/paddock/node"
)

func init() {
	var (
		sock, to, toNode, transport, serverName, compress, bandwidth string
		dataDir                                                      string
		downtime, timeout, handoffTimeout                            time.Duration
		streams, maxRounds, downtimeMs                               int
		noAutoConverge, asJSON, verifyRAM                            bool
	)
	cmd := &cobra.Command{
		Use:   "migrate NAME --to NODE|HOST:PORT [--to-node NODE] [--transport quic|tcp] [--downtime 100ms] [--timeout 10m] [--streams 8] [--compress auto] [--bandwidth 0] [--json]",
		Short: "Live-migrate a guest to a destination waiting for it",
		Long: `migrate asks the guest process NAME (through its control socket) to move
itself, running, to the destination --to: pre-copy rounds while it runs,
then a pause of about --downtime, a digest check and a two-phase commit. It
shows a progress bar and ends with the stats; --json prints the stats as
JSON instead. If the migration fails, or is interrupted (Ctrl-C), the guest
keeps running where it was. The exit status is 0 only when the guest runs on the destination.

A guest started with --volume takes its volumes along: inside the pause,
after the destination verified the RAM and before the commit, the primary
role of each volume moves to the destination's node (--to-node, or the node
named by the destination's cluster certificate), and the migration waits
until that node serves them. The time counts in the downtime and is shown
as handoff_ms. If the hand-off fails the migration is cancelled and the
guest keeps running here with its volumes primary where they were.

--to NODE (a node name of the cluster) has that node start the receiving
guest process itself: the guest's node (--data-dir, by default the one the
guest was started with) asks NODE over the cluster's mutual-TLS peer API,
NODE starts "paddock guest receive" with its own data dir on its migration
address (its --migration-addr and the ports after it, else its storage IP
at ports 7800-7863), and answers with the address once it listens; the
guest's volumes go to NODE (--to-node is implied). A receiver that no
migration uses stops after 2 minutes; one left waiting by a failed attempt
is used again by the next. "paddock guest list --data-dir DIR" on NODE shows
it and its control socket. Unknown or down nodes, and receivers that fail
to start (with the end of their stderr), are reported before any RAM moves.

--to HOST:PORT migrates to a receiver started by hand there ("paddock guest
receive --listen HOST:PORT").`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := guestSock(args[0], sock)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("downtime-ms") {
				downtime = time.Duration(downtimeMs) * time.Millisecond
			}
			bw, err := parseSize(bandwidth)
			if err != nil {
				return fmt.Errorf("--bandwidth: %w", err)
			}
			req := guestRequest{Op: "migrate", Migrate: &migrateRequest{
				To: to, ToNode: toNode, ServerName: serverName, Transport: transport,
				DowntimeMs: downtime.Milliseconds(), TimeoutMs: timeout.Milliseconds(),
				Streams: streams, Compress: compress, BandwidthBytesPerSecond: bw, HandoffTimeoutMs: handoffTimeout.Milliseconds(),
				MaxRounds: maxRounds, NoAutoConverge: noAutoConverge, VerifyRAM: verifyRAM,
			}}
			if _, _, err := net.SplitHostPort(to); err != nil {
				// Not HOST:PORT: a node of the cluster, which starts the
				// receiver. Check the request's other fields first, so
				// that a bad flag starts no process there.
				req.Migrate.To = "127.0.0.1:1"
				b, _ := json.Marshal(req)
				if _, err := parseGuestRequest(b); err != nil {
					return err
				}
				rec, err := receiverOnNode(s, to, toNode, dataDir)
				if err != nil {
					return fmt.Errorf("migrate %s to node %s: %w; the guest keeps running here", args[0], to, err)
				}
				how := "started a receiver"
				if rec.Reused {
					how = "has a receiver waiting"
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "node %s %s for %s at %s (pid %d, control socket %s)\n", rec.Node, how, rec.Name, rec.Addr, rec.Pid, rec.ControlSock)
				req.Migrate.To, req.Migrate.ToNode = rec.Addr, rec.Node
			} else if dataDir != "" {
				return errors.New("--data-dir is for --to NODE: with --to HOST:PORT no node is asked")
			}
			b, _ := json.Marshal(req)
			if _, err := parseGuestRequest(b); err != nil {
				return err
			}
			// Ctrl-C closes the control connection: the guest cancels.
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			var bar *progressbar.ProgressBar
			round := -1
			var final guestResponse
			callErr := make(chan error, 1)
			go func() {
				callErr <- guestCall(s, req, timeout+time.Minute, func(r guestResponse) error {
					if r.Progress != nil && !asJSON {
						pr := r.Progress
						if bar == nil || pr.Round != round {
							if bar != nil {
								bar.Finish()
							}
							round = pr.Round
							bar = progressbar.NewOptions64(int64(max(pr.RoundBytes, 1)),
								progressbar.OptionSetWriter(cmd.ErrOrStderr()),
								progressbar.OptionShowBytes(true),
								progressbar.OptionSetWidth(30),
								progressbar.OptionThrottle(100*time.Millisecond),
								progressbar.OptionClearOnFinish())
						}
						bar.Describe(fmt.Sprintf("round %d %s, dirty %s/s, throttle %d%%", pr.Round, pr.Status,
							humanBytes(int64(pr.DirtyBytesPerSecond)), pr.ThrottlePercent))
						bar.Set64(int64(pr.RoundBytes - pr.RemainingBytes))
					}
					if r.Done {
						final = r
					}
					return nil
				})
			}()
			select {
			case err = <-callErr:
			case <-sigs:
				return errors.New("interrupted: the guest cancels the migration and keeps running")
			}
			if bar != nil {
				bar.Finish()
			}
			if err != nil {
				return err
			}
			st := final.Stats
			if asJSON && st != nil {
				out, _ := json.Marshal(st)
				fmt.Fprintln(cmd.OutOrStdout(), string(out))
			} else if st != nil {
				fmt.Fprintln(cmd.OutOrStdout(), statsLine(args[0], st))
				if final.Handoff != nil {
					fmt.Fprintln(cmd.OutOrStdout(), args[0]+": "+handoffLine(final.Handoff))
				}
			}
			if final.Error != "" {
				return errors.New(final.Error)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	guestSocketFlag(cmd, &sock)
	fl.StringVar(&to, "to", "", "destination: a node of the cluster (it starts the receiver), or HOST:PORT of a guest receive started by hand")
	fl.StringVar(&toNode, "to-node", "", "the destination's node, where the guest's volumes move (default: --to NODE, or the node named by the destination's certificate)")
	fl.StringVar(&dataDir, "data-dir", "", "with --to NODE: the data dir of the node to ask (default: the guest's --data-dir)")
	fl.DurationVar(&handoffTimeout, "handoff-timeout", defaultHandoffTimeout, "how long the destination's node may take to serve the guest's volumes before the hand-off is undone and the migration cancelled")
	fl.StringVar(&serverName, "server-name", "", "name the destination's certificate must carry (default: HOST of --to)")
	fl.StringVar(&transport, "transport", migrate.TransportQUIC, "quic or tcp")
	fl.DurationVar(&downtime, "downtime", migrate.DefaultDowntimeLimit, "downtime limit: switch over when the rest can go in this long")
	fl.IntVar(&downtimeMs, "downtime-ms", 0, "downtime limit in milliseconds (instead of --downtime)")
	fl.DurationVar(&timeout, "timeout", migrate.DefaultTimeout, "cancel the migration (guest stays) after this long")
	fl.IntVar(&streams, "streams", 8, "parallel page streams")
	fl.IntVar(&maxRounds, "max-rounds", 0, fmt.Sprintf("cancel after this many rounds (0 = %d)", migrate.DefaultMaxRounds))
	fl.StringVar(&compress, "compress", "auto", "page compression: auto, none, s2, zstd")
	fl.StringVar(&bandwidth, "bandwidth", "0", "cap on the page streams in bytes per second (K, M, G suffixes; 0 = none)")
	fl.BoolVar(&noAutoConverge, "no-auto-converge", false, "never throttle the guest (cancel at the timeout instead)")
	fl.BoolVar(&verifyRAM, "verify-ram", false, "rehash all of the guest's RAM inside the pause for the digest check, so that it also catches a page changed without the dirty tracker seeing it (costs a read of all of RAM in the downtime)")
	fl.BoolVar(&asJSON, "json", false, "print the final stats as JSON, no progress bar")
	cmd.MarkFlagRequired("to")
	rootCmd.AddCommand(cmd)
}

// receiverCallTimeout bounds asking the local node for a receiver on
// another node: it forwards and waits for the child to listen (both
// bounded inside the node).
const receiverCallTimeout = 60 * time.Second

// receiverOnNode asks a node for a receiver of the guest at sock on the
// node named nodeName, through the node of dataDir (default: the guest's).
func receiverOnNode(sock, nodeName, toNode, dataDir string) (node.GuestReceiver, error) {
	if !guestNameRE.MatchString(nodeName) {
		return node.GuestReceiver{}, fmt.Errorf("--to %q: neither HOST:PORT nor a node name", nodeName)
	}
	if toNode != "" && toNode != nodeName {
		return node.GuestReceiver{}, fmt.Errorf("--to-node %s: the guest goes to node %s, its volumes must too", toNode, nodeName)
	}
	var st guestStatus
	err := guestCall(sock, guestRequest{Op: "status"}, 10*time.Second, func(r guestResponse) error {
		if r.Error != "" {
			return errors.New(r.Error)
		}
		if r.Status != nil {
			st = *r.Status
		}
		return nil
	})
	if err != nil {
		return node.GuestReceiver{}, err
	}
	if st.State != "running" {
		return node.GuestReceiver{}, fmt.Errorf("the guest is %s, not running", st.State)
	}
	if dataDir == "" {
		dataDir = st.NodeDir
	}
	if dataDir == "" {
		return node.GuestReceiver{}, errors.New("the guest runs beside no node (no --data-dir): give migrate --data-dir DIR of the node to ask")
	}
	var rec node.GuestReceiver
	req := node.GuestReceiveRequest{Name: st.Name, RAMBytes: st.RAMBytes, Node: nodeName, HugePages: st.HugePages}
	if err := node.NewControlClient(node.DataDir{Path: dataDir}, receiverCallTimeout).Call("POST", "/v1/guests/receive", req, &rec); err != nil {
		return node.GuestReceiver{}, err
	}
	return rec, nil
}

// statsLine is the one-line summary a person reads.
func statsLine(name string, st *migrate.Stats) string {
	p := st.Pages
	handoff := ""
	if st.HandoffMs > 0 {
		handoff = fmt.Sprintf(" (volume hand-off %.1f ms)", st.HandoffMs)
	}
	return fmt.Sprintf("%s: %s over %s x%d in %.0f ms, downtime %.1f ms%s, %d rounds, %s sent of %s RAM (%d zero, %d raw, %d s2, %d zstd, %d delta pages), %.0f Mbit/s, throttle %d%%",
		name, st.Status, st.Transport, st.PageStreams, st.TotalTimeMs, st.DowntimeMs, handoff, st.Rounds,
		humanBytes(int64(st.TransferredBytes)), humanBytes(int64(st.TotalBytes)),
		p.ZeroPages, p.RawPages, p.S2Pages, p.ZstdPages, p.DeltaPages, st.Mbps, st.ThrottlePercent)
}
