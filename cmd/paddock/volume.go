package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/blockrep"
	"github.com/paddock-io/paddock/node"
)

// volumeTimeout bounds a volume command: a configuration change needs
// the quorum's answer.
const volumeTimeout = 60 * time.Second

func init() {
	volCmd := &cobra.Command{
		Use:   "volume",
		Short: "Create, inspect and manage replicated volumes",
		Long: `A volume is a block device of fixed size mirrored synchronously on
--replicas nodes (DRBD protocol C): a write is acknowledged once every
up-to-date replica and a majority have it. Every node serves every volume
over NBD on its storage address, so attach a hypervisor to its own node:

  qemu-system-x86_64 -drive file=nbd://STORAGE_ADDR/NAME,format=raw,cache=none

Creating, deleting and promoting change the cluster configuration and need
quorum.`,
	}
	var dataDir string
	var asJSON bool
	// watch and watchInterval: volume status --watch.
	var watch bool
	var watchInterval time.Duration
	addCommon := func(c *cobra.Command, withJSON bool) {
		c.Flags().StringVar(&dataDir, "data-dir", "", "the local node's data directory")
		c.MarkFlagRequired("data-dir")
		if withJSON {
			c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
		}
	}
	client := func() *node.ControlClient { return node.NewControlClient(node.DataDir{Path: dataDir}, volumeTimeout) }
	printJSON := func(v any) error {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}

	var req node.VolumeCreateRequest
	var size, region, nodes, rateMax, rateMin string
	create := &cobra.Command{
		Use:   "create NAME --size 10G [--replicas 3] [--nodes a,b,c]",
		Short: "Create a replicated volume (needs quorum)",
		Long: `create adds a volume to the cluster configuration. Each replica node
creates a sparse data file and its metadata; the first node listed (or this
node, when the cluster chooses) becomes the primary and promotes itself.

--write-quorum raises how many replicas must accept each write (at least a
majority; a lower value could let two primaries both acknowledge writes).
--on-no-quorum says what the primary does while it cannot reach a write
quorum: suspend (hold I/O until it can, the default) or io-error.
--resync-granularity is the size of a region in the out-of-sync bitmaps:
smaller means less resent after an outage, more memory (one bit each).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			var err error
			if req.SizeBytes, err = parseSize(size); err != nil {
				return err
			}
			if req.SizeBytes <= 0 {
				return fmt.Errorf("--size is required (e.g. 10G)")
			}
			if req.RegionBytes, err = parseSize(region); err != nil {
				return err
			}
			if req.ResyncMaxBytesPerSecond, err = parseSize(rateMax); err != nil {
				return fmt.Errorf("--resync-rate-max: %w", err)
			}
			if req.ResyncMinBytesPerSecond, err = parseSize(rateMin); err != nil {
				return fmt.Errorf("--resync-rate-min: %w", err)
			}
			if nodes != "" {
				req.Nodes = strings.Split(nodes, ",")
				if !cmd.Flags().Changed("replicas") {
					req.Replicas = len(req.Nodes)
				}
			}
			var v node.VolumeConfig
			if err := client().Call("POST", "/v1/volumes", req, &v); err != nil {
				return err
			}
			if asJSON {
				return printJSON(v)
			}
			fmt.Printf("volume %q created: %s, %d replicas, id %d\n", v.Name, humanBytes(v.SizeBytes), len(v.Replicas), v.ID)
			fmt.Printf("status: paddock volume status %s --data-dir %s\n", v.Name, dataDir)
			return nil
		},
	}
	create.Flags().StringVar(&size, "size", "", "size, e.g. 10G (a multiple of 4 KiB)")
	create.Flags().IntVar(&req.Replicas, "replicas", 3, "number of replicas")
	create.Flags().StringVar(&nodes, "nodes", "", "comma-separated node names to hold the replicas (the first is the primary)")
	create.Flags().IntVar(&req.WriteQuorum, "write-quorum", 0, "replicas that must accept a write (default: a majority)")
	create.Flags().StringVar(&req.OnNoQuorum, "on-no-quorum", "suspend", "suspend or io-error")
	create.Flags().StringVar(&region, "resync-granularity", "", "out-of-sync region size (default 64K)")
	create.Flags().StringVar(&rateMax, "resync-rate-max", "", "resync ceiling per second, e.g. 500M (default: no cap)")
	create.Flags().StringVar(&rateMin, "resync-rate-min", "", "resync floor per second while clients write, e.g. 50M (default: the ceiling)")
	create.Flags().IntVar(&req.ScrubIntervalHours, "scrub-interval-hours", 0, "hours between background scrubs (default 168, weekly)")
	addCommon(create, true)
	volCmd.AddCommand(create)

	list := &cobra.Command{
		Use:   "list",
		Short: "List the volumes of the cluster",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var out []node.VolumeListEntry
			if err := client().Call("GET", "/v1/volumes", nil, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(out)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSIZE\tPRIMARY\tREPLICAS\tURI (this node)")
			for _, v := range out {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Name, humanBytes(v.SizeBytes), v.Primary, strings.Join(v.Replicas, ","), v.URI)
			}
			return tw.Flush()
		},
	}
	addCommon(list, true)
	volCmd.AddCommand(list)

	status := &cobra.Command{
		Use:   "status NAME",
		Short: "Show each replica: role, state, epoch, generation, resync progress",
		Long: `status asks every replica's node and shows, per replica: its role
(primary or secondary), its state (UpToDate, Syncing, Outdated, Unknown when
its node does not answer), the epoch it promised, the generation it holds
and, while it resyncs, how much is left, the resync rate over the last
seconds and the time left at that rate (ETA).

With --watch it shows the table again every --interval until every replica
is UpToDate (or Ctrl-C): the way to follow a resync.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if watchInterval <= 0 || watchInterval > time.Hour {
				return fmt.Errorf("--interval %v: between 1ms and 1h", watchInterval)
			}
			for {
				var st node.VolumeStatus
				if err := client().Call("GET", "/v1/volumes/"+args[0], nil, &st); err != nil {
					return err
				}
				if asJSON {
					if err := printJSON(st); err != nil {
						return err
					}
				} else {
					printVolumeStatus(st)
				}
				if !watch || volumeUpToDate(st) {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(watchInterval):
				}
				if !asJSON {
					fmt.Println()
				}
			}
		},
	}
	addCommon(status, true)
	status.Flags().BoolVar(&watch, "watch", false, "show the status again every --interval until every replica is UpToDate")
	status.Flags().DurationVar(&watchInterval, "interval", time.Second, "time between two looks with --watch")
	volCmd.AddCommand(status)

	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a volume and every replica's data (needs quorum)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := client().Call("POST", "/v1/volumes/"+args[0]+"/delete", struct{}{}, nil); err != nil {
				return err
			}
			fmt.Printf("volume %q deleted\n", args[0])
			return nil
		},
	}
	addCommon(del, false)
	volCmd.AddCommand(del)

	var promoteNode string
	promote := &cobra.Command{
		Use:   "promote NAME --node N",
		Short: "Move the primary role to another replica (needs quorum)",
		Long: `promote makes node N the volume's primary. N collects promises for a
higher epoch from a majority of the replicas, so the old primary can get no
write acknowledged from then on; N must hold the newest generation (or the
promotion fails and "volume status" says why).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v node.VolumeConfig
			if err := client().Call("POST", "/v1/volumes/"+args[0]+"/promote", node.VolumePromoteRequest{Node: promoteNode}, &v); err != nil {
				return err
			}
			fmt.Printf("volume %q: primary role given to %s; it promotes itself now\n", args[0], promoteNode)
			return nil
		},
	}
	promote.Flags().StringVar(&promoteNode, "node", "", "the node to become primary")
	promote.MarkFlagRequired("node")
	addCommon(promote, false)
	volCmd.AddCommand(promote)

	var discard string
	resolve := &cobra.Command{
		Use:   "resolve NAME --discard NODE",
		Short: "Throw away one replica's data and resync it from the primary",
		Long: `resolve --discard NODE is DRBD's --discard-my-data: NODE's replica
leaves the up-to-date set (it can no longer become primary), is compared
region by region with the primary (only digests cross the network) and
overwritten wherever it differs, then rejoins. Use it for a replica you
know holds bad or unwanted data. The primary's own data is never discarded:
move the primary role first (volume promote).

(With epochs, two replicas cannot both take writes under different
primaries, so the split-brain DRBD resolves this way does not arise by
itself; resolve is the manual lever for every other reason.)`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := client().Call("POST", "/v1/volumes/"+args[0]+"/resolve", node.ResolveRequest{Discard: discard}, nil); err != nil {
				return err
			}
			fmt.Printf("volume %q: the replica on %s is being overwritten from the primary; watch: paddock volume status %s\n", args[0], discard, args[0])
			return nil
		},
	}
	resolve.Flags().StringVar(&discard, "discard", "", "the node whose replica's data is thrown away")
	resolve.MarkFlagRequired("discard")
	addCommon(resolve, false)
	volCmd.AddCommand(resolve)

	for _, repair := range []bool{false, true} {
		use, short, long := "verify NAME", "Compare the replicas online (digests and block checksums); change nothing",
			`verify has the primary check every block of every replica against its
checksum (each replica reads its own disk) and compare the replicas region
by region by 64-bit digests (only digests cross the network). It reports
what differs and changes nothing; exit status 0 when all is clean, 3 when
something was found. Client I/O goes on meanwhile.`
		if repair {
			use, short, long = "scrub NAME", "Find silent corruption and repair it from a good copy",
				`scrub does what verify does and repairs: a bad block on the primary is
read from a replica whose copy passes its checksum; a bad block or a
differing region on a replica is sent from the primary. Exit status 0 when
the volume was clean or is now repaired, 1 when a repair failed. Every
primary also scrubs in the background (--scrub-interval-hours at create,
weekly by default, at a limited rate).`
		}
		cmd := &cobra.Command{
			Use: use, Short: short, Long: long, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				var rep blockrep.ScrubReport
				c := node.NewControlClient(node.DataDir{Path: dataDir}, 6*time.Hour)
				if err := c.Call("POST", "/v1/volumes/"+args[0]+"/scrub", node.ScrubRequest{Repair: repair}, &rep); err != nil {
					return err
				}
				if asJSON {
					if err := printJSON(rep); err != nil {
						return err
					}
				} else {
					fmt.Printf("%s of %s: %s scanned in %.1fs\n", map[bool]string{false: "verify", true: "scrub"}[repair], args[0], humanBytes(rep.BytesScanned), rep.Seconds)
					tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NODE\tBAD BLOCKS\tDIFFERENT REGIONS\tREPAIRED\tERROR")
					for _, n := range rep.Nodes {
						fmt.Fprintf(tw, "%d\t%d %v\t%d\t%s\t%s\n", n.Node, n.BadBlockCount, n.BadBlocks, n.DifferentRegions, humanBytes(n.Repaired), n.Error)
					}
					tw.Flush()
				}
				failed := false
				for _, n := range rep.Nodes {
					failed = failed || n.Error != ""
				}
				switch {
				case failed || !rep.Complete:
					return &exitError{code: 1, err: fmt.Errorf("%s did not complete on every replica", use[:5])}
				case !repair && !rep.Clean():
					return &exitError{code: 3, err: fmt.Errorf("replicas of %s differ or hold corrupt blocks: run \"paddock volume scrub %s\"", args[0], args[0])}
				}
				return nil
			},
		}
		addCommon(cmd, true)
		volCmd.AddCommand(cmd)
	}

	rootCmd.AddCommand(volCmd)
}

// printVolumeStatus prints one volume's status table.
func printVolumeStatus(st node.VolumeStatus) {
	v := st.Volume
	fmt.Printf("volume %s: %s, id %d, primary %s\n", v.Name, humanBytes(v.SizeBytes), v.ID, st.Primary)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tSTATE\tEPOCH\tGENERATION\tOUT OF SYNC\tRESENT\tRATE\tETA\tDETAIL")
	for _, r := range st.Replicas {
		rate, eta := "-", "-"
		if r.ResyncBytesPerSecond > 0 {
			rate = humanBytes(r.ResyncBytesPerSecond) + "/s"
			eta = (time.Duration(r.ResyncETASeconds * float64(time.Second))).Round(100 * time.Millisecond).String()
		}
		detail := r.Detail
		if detail == "" && r.State == "UpToDate" && r.LastResyncEndedAgo != "" {
			detail = lastResyncDetail(r)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Node, r.Role, r.State, r.Epoch, r.Generation,
			humanBytes(r.OutOfSyncBytes), humanBytes(r.ResentBytes), rate, eta, detail)
	}
	tw.Flush()
}

// lastResyncDetail describes an up-to-date replica's last resync: "last
// resync: 256 MiB in 410ms (655 MB/s), 2m3s ago".
func lastResyncDetail(r node.ReplicaRow) string {
	took := time.Duration(r.LastResyncSeconds * float64(time.Second))
	out := fmt.Sprintf("last resync: %s in %s", humanBytes(r.LastResyncResentBytes), took.Round(time.Millisecond))
	if r.LastResyncSeconds > 0 && r.LastResyncResentBytes > 0 {
		out += fmt.Sprintf(" (%s/s)", humanBytes(int64(float64(r.LastResyncResentBytes)/r.LastResyncSeconds)))
	}
	if ago, err := time.ParseDuration(r.LastResyncEndedAgo); err == nil {
		if ago = ago.Round(time.Second); ago > 0 {
			out += ", " + ago.String() + " ago"
		} else {
			out += ", just now"
		}
	}
	return out
}

// volumeUpToDate says whether every replica of a status is UpToDate.
func volumeUpToDate(st node.VolumeStatus) bool {
	for _, r := range st.Replicas {
		if r.State != "UpToDate" || r.OutOfSyncBytes != 0 {
			return false
		}
	}
	return len(st.Replicas) > 0
}
