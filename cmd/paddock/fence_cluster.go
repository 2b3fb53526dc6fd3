package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/node"
)

// The fencing commands that go through the daemon: devices and levels in
// the cluster configuration, a fence by hand, the history.

func init() {
	var dataDir string
	var asJSON bool
	addDir := func(c *cobra.Command) {
		c.Flags().StringVar(&dataDir, "data-dir", "", "the local node's data directory")
		c.MarkFlagRequired("data-dir")
	}
	client := func(timeout time.Duration) *node.ControlClient {
		return node.NewControlClient(node.DataDir{Path: dataDir}, timeout)
	}
	printJSON := func(v any) error {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}

	device := &cobra.Command{Use: "device", Short: "Fence devices in the cluster configuration"}
	var agent string
	var params, envParams []string
	var timeoutMs int64
	devAdd := &cobra.Command{
		Use:   "add NAME --agent fence_ipmilan --param ip=10.0.0.5 --param-env password=VAR ...",
		Short: "Add (or replace) a fence device (needs quorum)",
		Long: `device add stores a fence device in the cluster configuration: the
fence-agents program and its parameters, as "paddock fence agent-test" takes
them (test them there first). Passwords are stored in the configuration
(cluster.json, mode 0600, copied only over the cluster's mutual TLS) and are
never shown. Then give the device to a node with "paddock fence level add".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := parseParams(params, envParams)
			if err != nil {
				return err
			}
			req := node.FenceDeviceRequest{Device: node.FenceDeviceConfig{Name: args[0], Agent: agent, Params: p, TimeoutMs: timeoutMs}}
			var v node.FenceConfigView
			if err := client(60*time.Second).Call("POST", "/v1/fence/devices", req, &v); err != nil {
				return err
			}
			fmt.Printf("fence device %q stored\n", args[0])
			return nil
		},
	}
	devAdd.Flags().StringVar(&agent, "agent", "", "fence agent program (e.g. fence_ipmilan)")
	devAdd.Flags().StringArrayVar(&params, "param", nil, "agent parameter KEY=VALUE (repeatable)")
	devAdd.Flags().StringArrayVar(&envParams, "param-env", nil, "agent parameter KEY=ENVVAR read from the environment (keeps passwords out of ps)")
	devAdd.Flags().Int64Var(&timeoutMs, "timeout-ms", 0, "bound on one run of the agent (default 20000)")
	devAdd.MarkFlagRequired("agent")
	addDir(devAdd)
	devRemove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a fence device (needs quorum; not while a level uses it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := node.FenceDeviceRequest{Device: node.FenceDeviceConfig{Name: args[0]}, Remove: true}
			return client(60*time.Second).Call("POST", "/v1/fence/devices", req, nil)
		},
	}
	addDir(devRemove)
	device.AddCommand(devAdd, devRemove)

	level := &cobra.Command{Use: "level", Short: "Fence levels: which devices fence a node, in which order"}
	var levelNo int
	var devices string
	levelAdd := &cobra.Command{
		Use:   "add NODE --level 1 --devices ipmi-n1[,pdu-a,...]",
		Short: "Set one fence level of a node (needs quorum)",
		Long: `Levels are tried in order (1 first); a level succeeds when every one of
its devices verified the node off (e.g. two PDUs feeding two power
supplies). When every level fails, the survivors wait out the lost node's
self-fence lease before they promote another replica.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := node.FenceLevelRequest{Node: args[0], Level: levelNo, Devices: strings.Split(devices, ",")}
			return client(60*time.Second).Call("POST", "/v1/fence/levels", req, nil)
		},
	}
	levelAdd.Flags().IntVar(&levelNo, "level", 1, "level number (1 is tried first)")
	levelAdd.Flags().StringVar(&devices, "devices", "", "comma-separated device names")
	levelAdd.MarkFlagRequired("devices")
	addDir(levelAdd)
	levelRemove := &cobra.Command{
		Use:   "remove NODE --level N",
		Short: "Remove one fence level of a node (needs quorum)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return client(60*time.Second).Call("POST", "/v1/fence/levels", node.FenceLevelRequest{Node: args[0], Level: levelNo}, nil)
		},
	}
	levelRemove.Flags().IntVar(&levelNo, "level", 1, "level number")
	addDir(levelRemove)
	level.AddCommand(levelAdd, levelRemove)

	var settings node.FenceSettingsRequest
	settingsCmd := &cobra.Command{
		Use:   "settings",
		Short: "Set the fence-race delay and the total fence timeout (needs quorum)",
		Long: `--delay-base-ms and --delay-max-ms are Pacemaker's pcmk_delay_base and
pcmk_delay_max: before shooting, wait base plus a random part up to max. In
a two-node cluster both sides may want to shoot at once; the delay decides
the survivor. --total-timeout-ms bounds one fence operation (all levels).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return client(60*time.Second).Call("POST", "/v1/fence/settings", settings, nil)
		},
	}
	settingsCmd.Flags().Int64Var(&settings.DelayBaseMs, "delay-base-ms", 0, "fixed fence delay")
	settingsCmd.Flags().Int64Var(&settings.DelayMaxMs, "delay-max-ms", 0, "largest fence delay (random between base and max)")
	settingsCmd.Flags().Int64Var(&settings.TotalTimeoutMs, "total-timeout-ms", 0, "bound on one fence operation (default 120000)")
	addDir(settingsCmd)

	show := &cobra.Command{
		Use:   "show",
		Short: "Show devices (passwords hidden), levels, this node's lease and the fence history",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var rep node.FenceReply
			if err := client(10*time.Second).Call("GET", "/v1/fence", nil, &rep); err != nil {
				return err
			}
			if asJSON {
				return printJSON(rep)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE\tAGENT\tPARAMETERS")
			for _, d := range rep.Config.Devices {
				var ps []string
				for k, v := range d.Params {
					ps = append(ps, k+"="+v)
				}
				sort.Strings(ps)
				fmt.Fprintf(tw, "%s\t%s\t%s\n", d.Name, d.Agent, strings.Join(ps, " "))
			}
			tw.Flush()
			fmt.Println()
			for _, l := range rep.Config.Levels {
				fmt.Printf("node %s level %d: %s\n", l.Node, l.Level, strings.Join(l.Devices, ", "))
			}
			for _, b := range rep.Config.Blocked {
				fmt.Printf("node %s network-fenced since %s by %s: %s dropped (paddock unfence %s)\n", b.Node,
					time.UnixMilli(b.SinceMs).Format(time.RFC3339), b.By, strings.Join(b.Addrs, ", "), b.Node)
			}
			fmt.Printf("\nthis node's lease: %s (may acknowledge writes: %v)\n", rep.HA.Lease.Phase, rep.HA.Lease.MayAck)
			fmt.Println("\nhistory:")
			tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tTARGET\tMETHOD\tDEVICE\tLEVEL\tRESULT\tDURATION\tERROR")
			for _, h := range rep.HA.History {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d ms\t%s\n", time.UnixMilli(h.TimeMs).Format(time.RFC3339), h.Target, h.Method, h.Device, h.Level, h.Result, h.DurationMs, h.Error)
			}
			return tw.Flush()
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addDir(show)

	nodeCmd := &cobra.Command{
		Use:   "node NODE",
		Short: "Fence NODE now through its levels (needs quorum)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out map[string]any
			err := client(30*time.Minute).Call("POST", "/v1/fence/run", node.FenceRequest{Node: args[0]}, &out)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(out)
			}
			fmt.Printf("node %s fenced (level %v, %v ms)\n", args[0], out["level"], out["duration_ms"])
			return nil
		},
	}
	nodeCmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addDir(nodeCmd)
	testCmd := &cobra.Command{
		Use:   "test DEVICE",
		Short: "Ask a configured device for the power status (changes nothing)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out map[string]any
			if err := client(2*time.Minute).Call("POST", "/v1/fence/run", node.FenceRequest{Device: args[0]}, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(out)
			}
			fmt.Printf("device %s: power %v\n", args[0], out["power"])
			return nil
		},
	}
	testCmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addDir(testCmd)
	fenceCmd.AddCommand(device, level, settingsCmd, show, nodeCmd, testCmd)
}
