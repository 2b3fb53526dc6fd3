package quorum

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Arbiter is the witness's side of the witness vote (corosync-qnetd's
// algorithms, see doc.go): from the nodes connected to the witness and
// the membership each reports, it picks at most one partition to get the
// vote. It is pure; the witness process keeps Active on disk.
type Arbiter struct {
	algo  WitnessAlgorithm
	tb    TieBreaker
	nodes []NodeID // configured, sorted
	// active is the membership of the partition that last got the vote.
	active []NodeID
}

// WitnessClient is a node connected to the witness, with the membership
// it reports (itself included).
type WitnessClient struct {
	ID         NodeID   `json:"id"`
	Membership []NodeID `json:"membership"`
}

// Decision is the witness's answer.
type Decision struct {
	// Winner is the membership of the partition that gets the vote; nil
	// when none does.
	Winner []NodeID `json:"winner"`
	// Granted are the connected nodes of that partition: they get the
	// vote for Winner (an ACK); every other connected node gets a NACK.
	Granted []NodeID `json:"granted"`
	// Reason says why, for logs and tests.
	Reason string `json:"reason"`
	// Unstable: the nodes' reports disagree (a membership change is
	// still going on), so nothing was decided; the witness process waits
	// for the next reports rather than answering (qnetd does the same).
	Unstable bool `json:"unstable,omitempty"`
}

// Grants reports whether node id gets the vote.
func (d Decision) Grants(id NodeID) bool { return slices.Contains(d.Granted, id) }

// NewArbiter builds the arbiter of a configuration with a witness. active
// is what Active returned before a restart (nil for a new witness).
func NewArbiter(cfg Config, active []NodeID) (*Arbiter, error) {
	r, err := cfg.rules()
	if err != nil {
		return nil, err
	}
	if r.witness == nil {
		return nil, errors.New("the configuration has no witness")
	}
	a := &Arbiter{algo: r.witness.Algorithm, tb: r.witness.TieBreaker}
	for _, n := range r.nodes {
		a.nodes = append(a.nodes, n.ID)
	}
	for _, id := range active {
		if slices.Contains(a.nodes, id) && !slices.Contains(a.active, id) {
			a.active = append(a.active, id)
		}
	}
	slices.Sort(a.active)
	return a, nil
}

// Active is the membership of the partition that last got the vote: the
// witness's memory, to persist.
func (a *Arbiter) Active() []NodeID { return slices.Clone(a.active) }

var errUnstable = errors.New("membership not stable")

type witnessPartition struct {
	members []NodeID // sorted
	clients []NodeID // connected, sorted
}

// Decide picks the partition that gets the vote.
func (a *Arbiter) Decide(clients []WitnessClient) Decision {
	parts, err := a.partitions(clients)
	if err != nil {
		return Decision{Reason: err.Error(), Unstable: errors.Is(err, errUnstable)}
	}
	n := len(a.nodes)
	var eligible []witnessPartition
	for _, p := range parts {
		size := len(p.members)
		switch {
		case 2*size > n:
			// More than half of the nodes: no other partition can say
			// the same, so the vote may go here whatever happened before.
			return a.grant(p, "more than half of the nodes")
		case a.algo == FFSplit && 2*size < n:
			// ffsplit never votes for less than half.
		case !sharesAny(p.members, a.active):
			// paddock's rule (DESIGN invariant 3): the witness keeps quorum
			// where it was; it never gives it to nodes that were not in
			// the partition it voted for last.
		default:
			eligible = append(eligible, p)
		}
	}
	switch len(eligible) {
	case 0:
		return Decision{Reason: "no partition may get the vote"}
	case 1:
		return a.grant(eligible[0], "the only partition that may get the vote")
	}
	if a.algo == FFSplit {
		// 50:50 split: the partition with more nodes connected to the
		// witness, then the tie breaker (qnetd_algo_ffsplit_partition_cmp).
		eligible = keepMax(eligible, func(p witnessPartition) int { return len(p.clients) })
		if len(eligible) == 1 {
			return a.grant(eligible[0], "more nodes connected to the witness")
		}
	} else {
		// lms: the largest partition, then the tie breaker
		// (do_lms_algorithm).
		eligible = keepMax(eligible, func(p witnessPartition) int { return len(p.members) })
		if len(eligible) == 1 {
			return a.grant(eligible[0], "the largest partition")
		}
	}
	tb := a.tieBreakerNode(eligible)
	for _, p := range eligible {
		if slices.Contains(p.members, tb) {
			return a.grant(p, fmt.Sprintf("tie broken by node %d", tb))
		}
	}
	// No partition holds the tie breaker (qnetd then keeps whichever
	// partition it looked at first): take the one with the lowest node.
	slices.SortFunc(eligible, func(x, y witnessPartition) int { return cmp.Compare(x.members[0], y.members[0]) })
	return a.grant(eligible[0], "tie broken by the lowest node id, the tie breaker being absent")
}

func (a *Arbiter) grant(p witnessPartition, reason string) Decision {
	a.active = slices.Clone(p.members)
	return Decision{Winner: slices.Clone(p.members), Granted: slices.Clone(p.clients), Reason: reason}
}

// tieBreakerNode is the tie breaker: ffsplit takes lowest or highest of
// the configured nodes, lms of the connected ones; or the node named.
func (a *Arbiter) tieBreakerNode(parts []witnessPartition) NodeID {
	if a.tb.Mode == TieBreakList {
		return a.tb.Nodes[0]
	}
	pool := a.nodes
	if a.algo == LMS {
		pool = nil
		for _, p := range parts {
			pool = append(pool, p.clients...)
		}
	}
	if len(pool) == 0 {
		return 0
	}
	if a.tb.Mode == TieBreakHighest {
		return slices.Max(pool)
	}
	return slices.Min(pool)
}

// partitions groups the connected nodes by the membership they report and
// checks that membership is stable (qnetd_algo_ffsplit_is_membership_stable):
// every connected node a membership names reports that same membership.
func (a *Arbiter) partitions(clients []WitnessClient) ([]witnessPartition, error) {
	reported := map[NodeID][]NodeID{}
	var order []NodeID
	for _, c := range clients {
		if !slices.Contains(a.nodes, c.ID) {
			continue // not a node of this cluster
		}
		if _, dup := reported[c.ID]; dup {
			return nil, fmt.Errorf("node %d is connected twice", c.ID)
		}
		var m []NodeID
		for _, id := range c.Membership {
			if slices.Contains(a.nodes, id) && !slices.Contains(m, id) {
				m = append(m, id)
			}
		}
		if !slices.Contains(m, c.ID) {
			m = append(m, c.ID)
		}
		slices.Sort(m)
		reported[c.ID] = m
		order = append(order, c.ID)
	}
	slices.Sort(order)
	var parts []witnessPartition
	key := func(m []NodeID) string { return fmt.Sprint(m) }
	index := map[string]int{}
	for _, id := range order {
		m := reported[id]
		for _, other := range m {
			if om, ok := reported[other]; ok && !slices.Equal(om, m) {
				return nil, fmt.Errorf("%w: node %d reports %s, node %d reports %s", errUnstable, id, fmtIDs(m), other, fmtIDs(om))
			}
		}
		k := key(m)
		i, ok := index[k]
		if !ok {
			i = len(parts)
			index[k] = i
			parts = append(parts, witnessPartition{members: m})
		}
		parts[i].clients = append(parts[i].clients, id)
	}
	return parts, nil
}

func keepMax(parts []witnessPartition, score func(witnessPartition) int) []witnessPartition {
	best := -1
	var out []witnessPartition
	for _, p := range parts {
		switch s := score(p); {
		case s > best:
			best, out = s, []witnessPartition{p}
		case s == best:
			out = append(out, p)
		}
	}
	return out
}

func sharesAny(a, b []NodeID) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}

func fmtIDs(ids []NodeID) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	return strings.Join(s, ",")
}
