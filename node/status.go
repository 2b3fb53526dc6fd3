package node

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/paddock-io/paddock/fence"
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
	// Fencing is each node's fence state and this node's network filter;
	// filled in when status is asked for (fencingStatus).
	Fencing *FencingStatus `json:"fencing,omitempty"`
	// Lease is this node's self-fence lease (fence/lease.go) as of its
	// last HA tick; its times are on the node's heartbeat clock (ms since
	// the daemon started). Filled in when status is asked for.
	Lease *fence.LeaseState `json:"lease,omitempty"`
}

// leaseStatus is this node's self-fence lease (nil before the volume
// manager runs).
func (d *Daemon) leaseStatus() *fence.LeaseState {
	if d.vols == nil || d.vols.ha == nil {
		return nil
	}
	a := d.vols.ha
	a.mu.Lock()
	st := a.leaseState
	a.mu.Unlock()
	if st.Phase == "" {
		return nil // the HA agent has not run (no storage address)
	}
	now := d.hb.NowMs()
	st.MayAck = st.MayAckAt(now)
	if st.ExpiresAtMs != 0 {
		st.RemainingMs = max(st.ExpiresAtMs-now, 0)
	}
	return &st
}

// FencingStatus is the fence part of status.
type FencingStatus struct {
	// Filter is this node's network fence; nil without --fence-interface.
	Filter *NetFilterStatus     `json:"filter,omitempty"`
	Nodes  []NodeFenceStatus    `json:"nodes"`
	Counts []fence.HistoryCount `json:"counts"`
}

// NodeFenceStatus is one node's fence state as this node knows it.
type NodeFenceStatus struct {
	ID   uint32 `json:"id"`
	Name string `json:"name"`
	// Fenced: network-fenced (the configuration's blocked set), or
	// power-fenced by this node and not back yet.
	Fenced      bool      `json:"fenced"`
	NetBlocked  bool      `json:"net_blocked"`
	PowerFenced bool      `json:"power_fenced"`
	Block       *NetBlock `json:"block,omitempty"`
	// Last is this node's newest fence history entry for the node.
	Last *fence.HistoryEntry `json:"last,omitempty"`
}

// fencingStatus gathers the fence state: blocks from the configuration,
// power fences and history from this node's HA agent.
func (d *Daemon) fencingStatus() *FencingStatus {
	cfg := d.config()
	hist := d.history()
	var power map[uint32]bool
	if d.vols != nil && d.vols.ha != nil {
		power = map[uint32]bool{}
		for _, id := range d.vols.ha.status().Fenced {
			power[id] = true
		}
	}
	fs := &FencingStatus{Filter: d.netFilterStatus(), Nodes: []NodeFenceStatus{}, Counts: hist.Counts()}
	for _, n := range cfg.sortedNodes() {
		ns := NodeFenceStatus{ID: n.ID, Name: n.Name, PowerFenced: power[n.ID]}
		if b, ok := cfg.netBlock(n.Name); ok {
			ns.NetBlocked, ns.Block = true, &b
		}
		ns.Fenced = ns.NetBlocked || ns.PowerFenced
		if e, ok := hist.Last(n.Name); ok {
			ns.Last = &e
		}
		fs.Nodes = append(fs.Nodes, ns)
	}
	return fs
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
	if l := s.Lease; l != nil {
		acks := "does not acknowledge writes"
		if l.MayAck {
			acks = fmt.Sprintf("may acknowledge writes, %d ms left", l.RemainingMs)
		}
		fmt.Fprintf(w, "\nSelf-fence lease: %s (%s)\n", l.Phase, acks)
	}
	if fs := s.Fencing; fs != nil {
		writeFencingText(w, fs)
	}
	if hb := s.Heartbeats; hb.Forged+hb.Replayed+hb.Foreign > 0 {
		fmt.Fprintf(w, "\nDropped heartbeats: %d forged, %d replayed, %d foreign\n", hb.Forged, hb.Replayed, hb.Foreign)
	}
}

// writeFencingText prints the fence part of status: one line per node,
// then the filter.
func writeFencingText(w io.Writer, fs *FencingStatus) {
	fmt.Fprintf(w, "\nFencing information\n-------------------\n")
	fmt.Fprintf(w, "    Nodeid Name             Fenced     Last fence\n")
	for _, n := range fs.Nodes {
		state := "no"
		switch {
		case n.NetBlocked && n.PowerFenced:
			state = "power+net"
		case n.NetBlocked:
			state = "network"
		case n.PowerFenced:
			state = "power"
		}
		last := "-"
		if e := n.Last; e != nil {
			last = fmt.Sprintf("%s %s", time.UnixMilli(e.TimeMs).UTC().Format("2006-01-02 15:04:05"), e.Method)
			if e.Action != "" {
				last += " " + string(e.Action)
			}
			if e.Device != "" {
				last += " (" + e.Device + ")"
			}
			last += fmt.Sprintf(" %s in %d ms", e.Result, e.DurationMs)
		}
		fmt.Fprintf(w, "0x%08x %-16s %-10s %s\n", n.ID, n.Name, state, last)
	}
	if f := fs.Filter; f != nil {
		var addrs []string
		for _, b := range f.Blocked {
			addrs = append(addrs, fmt.Sprintf("%s (%d dropped)", b.Addr, b.Dropped))
		}
		if len(addrs) == 0 {
			addrs = []string{"none"}
		}
		fmt.Fprintf(w, "Network filter:   %s (%s), %d packets dropped; blocking %s\n", f.Interface, f.Mode, f.DroppedPackets, strings.Join(addrs, ", "))
		if f.Error != "" {
			fmt.Fprintf(w, "Network filter error: %s\n", f.Error)
		}
	} else {
		fmt.Fprintf(w, "Network filter:   none on this node (paddock node --fence-interface)\n")
	}
}
