package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/node"
)

// unfenceTimeout covers the configuration change (its own bound is
// shorter) and every member's answer.
const unfenceTimeout = 60 * time.Second

func init() {
	var dataDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "unfence NODE --data-dir DIR",
		Short: "Lift a node's network fence on every node (needs quorum)",
		Long: `unfence removes NODE's network block from the cluster configuration (a
configuration change: it needs quorum) and asks every member to let the
node's packets through again now. The node then rejoins: it is a secondary
of the volumes whose primary role moved while it was away, and they resync
it. While it is blocked it is never chosen as a primary.

Make sure the node is healthy first (powered on again, its network sane):
unfence is the operator's word that it may talk to the replicas again.

Errors: no such node; the node is not fenced; this node's partition is not
quorate.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var rep node.UnfenceReply
			c := node.NewControlClient(node.DataDir{Path: dataDir}, unfenceTimeout)
			if err := c.Call("POST", "/v1/fence/unfence", node.UnfenceRequest{Node: args[0]}, &rep); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			if rep.ConfigVersion > 0 {
				fmt.Printf("node %s unfenced (configuration version %d)\n", rep.Node, rep.ConfigVersion)
			} else {
				fmt.Printf("node %s unfenced (its block was not in the configuration)\n", rep.Node)
			}
			for _, m := range rep.Members {
				switch {
				case m.Error != "":
					fmt.Printf("  %s: %s\n", m.Node, m.Error)
				case !m.Filter:
					fmt.Printf("  %s: no network filter\n", m.Node)
				default:
					fmt.Printf("  %s: passes %v again\n", m.Node, m.Addrs)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the data directory of a running node")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.MarkFlagRequired("data-dir")
	rootCmd.AddCommand(cmd)
}
