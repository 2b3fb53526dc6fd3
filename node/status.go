package node

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/paddock-io/paddock/quorum"
	"github.com/paddock-io/paddock/quorum/witness"
)

// QuorumView is what the quorum engine says at one moment.
type QuorumView struct {
	Quorate         bool     `json:"quorate"`
	ExpectedVotes   uint32   `json:"expected_votes"`
	HighestExpected uint32   `json:"highest_expected"`
	TotalVotes      uint32   `json:"total_votes"`
	Quorum          uint32   `json:"quorum"`
	Flags           []string `json:"flags"`
	Members         []uint32 `json:"members"`
	// Witness is the witness's votes and whether they count here now;
	// nil without a witness.
	Witness *quorum.WitnessStatus `json:"witness,omitempty"`
}

// NodeStatus is one configured node as this node sees it.
type NodeStatus struct {
	ID          uint32 `json:"id"`
	Name        string `json:"name"`
	Votes       uint32 `json:"votes"`
	ClusterAddr string `json:"cluster_addr"`
	Member      bool   `json:"member"`
	Local       bool   `json:"local"`
}

// Status is what "paddock status" shows, in the shape of
// corosync-quorumtool -s and pvecm status.
type Status struct {
	ClusterName   string       `json:"cluster_name"`
	ClusterID     string       `json:"cluster_id"`
	ConfigVersion uint64       `json:"config_version"`
	NodeID        uint32       `json:"node_id"`
	NodeName      string       `json:"node_name"`
	Nodes         int          `json:"nodes"`
	TokenMs       int64        `json:"token_ms"`
	Quorum        QuorumView   `json:"quorum"`
	Membership    []NodeStatus `json:"membership"`
	Heartbeats    HBStats      `json:"heartbeats"`
	// Witness is this node's link to the witness; nil without one.
	Witness *witness.ClientStatus `json:"witness,omitempty"`
	Time    time.Time             `json:"time"`
}

// HBStats are heartbeat counters.
type HBStats struct {
	Sent     int64 `json:"sent"`
	Accepted int64 `json:"accepted"`
	Forged   int64 `json:"forged"`
	Replayed int64 `json:"replayed"`
	Foreign  int64 `json:"foreign"`
}

func (d *Daemon) buildStatus(v QuorumView, members []uint32) Status {
	cfg := d.loaded.Config
	in := map[uint32]bool{}
	for _, m := range members {
		in[m] = true
	}
	s := Status{
		ClusterName:   cfg.ClusterName,
		ClusterID:     cfg.ClusterID,
		ConfigVersion: cfg.Version,
		NodeID:        d.loaded.Identity.ID,
		NodeName:      d.loaded.Identity.Name,
		Nodes:         len(members),
		TokenMs:       cfg.TokenMs,
		Quorum:        v,
		Witness:       d.wit.status(d.hb.NowMs()),
		Time:          time.Now().UTC(),
		Heartbeats: HBStats{
			Sent:     d.hb.Stats.Sent.Load(),
			Accepted: d.hb.Stats.Accepted.Load(),
			Forged:   d.hb.Stats.Forged.Load(),
			Replayed: d.hb.Stats.Replayed.Load(),
			Foreign:  d.hb.Stats.Foreign.Load(),
		},
	}
	for _, n := range cfg.sortedNodes() {
		s.Membership = append(s.Membership, NodeStatus{
			ID: n.ID, Name: n.Name, Votes: n.Votes, ClusterAddr: n.ClusterAddr,
			Member: in[n.ID], Local: n.ID == d.loaded.Identity.ID,
		})
	}
	return s
}

// WriteText prints the status the way pvecm status does.
func (s *Status) WriteText(w io.Writer) {
	yesNo := map[bool]string{true: "Yes", false: "No"}
	fmt.Fprintf(w, "Cluster information\n-------------------\n")
	fmt.Fprintf(w, "Name:             %s\n", s.ClusterName)
	fmt.Fprintf(w, "Config Version:   %d\n", s.ConfigVersion)
	fmt.Fprintf(w, "Transport:        udp heartbeats (HMAC-SHA256), token %d ms\n", s.TokenMs)
	fmt.Fprintf(w, "\nQuorum information\n------------------\n")
	fmt.Fprintf(w, "Date:             %s\n", s.Time.Format(time.ANSIC))
	fmt.Fprintf(w, "Quorum provider:  paddock votequorum\n")
	fmt.Fprintf(w, "Nodes:            %d\n", s.Nodes)
	fmt.Fprintf(w, "Node ID:          0x%08x\n", s.NodeID)
	fmt.Fprintf(w, "Quorate:          %s\n", yesNo[s.Quorum.Quorate])
	fmt.Fprintf(w, "\nVotequorum information\n----------------------\n")
	fmt.Fprintf(w, "Expected votes:   %d\n", s.Quorum.ExpectedVotes)
	fmt.Fprintf(w, "Highest expected: %d\n", s.Quorum.HighestExpected)
	fmt.Fprintf(w, "Total votes:      %d\n", s.Quorum.TotalVotes)
	blocked := ""
	if !s.Quorum.Quorate {
		blocked = " Activity blocked"
	}
	fmt.Fprintf(w, "Quorum:           %d%s\n", s.Quorum.Quorum, blocked)
	fmt.Fprintf(w, "Flags:            %s\n", strings.Join(s.Quorum.Flags, " "))
	fmt.Fprintf(w, "\nMembership information\n----------------------\n")
	fmt.Fprintf(w, "    Nodeid      Votes Name\n")
	for _, n := range s.Membership {
		if !n.Member {
			continue
		}
		local := ""
		if n.Local {
			local = " (local)"
		}
		fmt.Fprintf(w, "0x%08x %10d %s%s\n", n.ID, n.Votes, n.Name, local)
	}
	if wt := s.Quorum.Witness; wt != nil {
		// As corosync-quorumtool shows a quorum device: id 0, its votes
		// when they count here, else 0 and the votes it would have.
		if wt.Vote {
			fmt.Fprintf(w, "0x%08x %10d Qdevice\n", 0, wt.Votes)
		} else {
			fmt.Fprintf(w, "0x%08x %10d Qdevice (votes %d)\n", 0, 0, wt.Votes)
		}
	}
	if wl := s.Witness; wl != nil {
		fmt.Fprintf(w, "\nWitness:          %s\n", wl.Text())
	}
	var away []string
	for _, n := range s.Membership {
		if !n.Member {
			away = append(away, fmt.Sprintf("%s (0x%08x)", n.Name, n.ID))
		}
	}
	if len(away) > 0 {
		fmt.Fprintf(w, "\nNot reachable:    %s\n", strings.Join(away, ", "))
	}
	if hb := s.Heartbeats; hb.Forged+hb.Replayed+hb.Foreign > 0 {
		fmt.Fprintf(w, "\nDropped heartbeats: %d forged, %d replayed, %d foreign\n", hb.Forged, hb.Replayed, hb.Foreign)
	}
}
