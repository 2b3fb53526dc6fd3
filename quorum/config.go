package quorum

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// NodeID identifies a node. 0 is not a valid node id: votequorum uses it
// for the quorum device.
type NodeID uint32

// Node is one configured node: corosync's nodelist entry.
type Node struct {
	ID NodeID `json:"id"`
	// Name is shown by Status; it may be empty.
	Name string `json:"name,omitempty"`
	// Votes is corosync's quorum_votes, 1..MaxVotes. corosync's default
	// of 1 is applied by whoever builds the Config; 0 is refused here
	// rather than guessed.
	Votes uint32 `json:"votes"`
}

// TieBreakerMode says how a tie breaker node is chosen.
type TieBreakerMode uint8

const (
	// TieBreakLowest picks the lowest node id (the default of both
	// auto_tie_breaker_node and qnetd's tie_breaker).
	TieBreakLowest TieBreakerMode = iota
	// TieBreakHighest picks the highest node id.
	TieBreakHighest
	// TieBreakList names the nodes, in order of preference (for the
	// witness: exactly one node).
	TieBreakList
)

// TieBreaker is auto_tie_breaker_node ("lowest", "highest" or a list of
// node ids) or the witness's tie_breaker ("lowest", "highest" or one id).
// The zero value is "lowest".
type TieBreaker struct {
	Mode  TieBreakerMode
	Nodes []NodeID // only for TieBreakList
}

// ParseTieBreaker reads "lowest", "highest" or node ids separated by
// spaces or commas ("1 3 5"), as auto_tie_breaker_node is written.
// corosync silently turns auto_tie_breaker off on anything else; here it
// is an error.
func ParseTieBreaker(s string) (TieBreaker, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "", "lowest":
		return TieBreaker{Mode: TieBreakLowest}, nil
	case "highest":
		return TieBreaker{Mode: TieBreakHighest}, nil
	}
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	if len(fields) > MaxNodes {
		return TieBreaker{}, fmt.Errorf("tie breaker %q: more than %d node ids", s, MaxNodes)
	}
	tb := TieBreaker{Mode: TieBreakList}
	for _, f := range fields {
		id, err := strconv.ParseUint(f, 10, 32)
		if err != nil || id == 0 || id > MaxNodeID {
			return TieBreaker{}, fmt.Errorf("tie breaker %q: use lowest, highest or node ids (1..%d), not %q", s, MaxNodeID, f)
		}
		tb.Nodes = append(tb.Nodes, NodeID(id))
	}
	return tb, nil
}

// String gives the form ParseTieBreaker reads.
func (t TieBreaker) String() string {
	switch t.Mode {
	case TieBreakLowest:
		return "lowest"
	case TieBreakHighest:
		return "highest"
	}
	ids := make([]string, len(t.Nodes))
	for i, id := range t.Nodes {
		ids[i] = strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(ids, " ")
}

// MarshalText writes the tie breaker as a string in JSON.
func (t TieBreaker) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (t *TieBreaker) UnmarshalText(b []byte) error {
	v, err := ParseTieBreaker(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

func (t TieBreaker) isDefault() bool { return t.Mode == TieBreakLowest && len(t.Nodes) == 0 }

// WitnessAlgorithm is how the witness decides which partition gets its
// vote, after corosync-qnetd's algorithms (corosync-qdevice(8)).
type WitnessAlgorithm string

const (
	// FFSplit ("fifty-fifty split") gives one vote to the partition with
	// more than half of the nodes, or breaks a 50:50 tie. Every node and
	// the witness have exactly one vote.
	FFSplit WitnessAlgorithm = "ffsplit"
	// LMS ("last man standing") gives many votes (by default one less
	// than the nodes have together) to one partition, so that even a
	// single node with the witness stays quorate.
	LMS WitnessAlgorithm = "lms"
)

// WitnessConfig is the witness vote: corosync's quorum.device section.
type WitnessConfig struct {
	Algorithm WitnessAlgorithm `json:"algorithm"`
	// Votes is quorum.device.votes. 0 takes the default: 1 for ffsplit,
	// the sum of node votes minus one for lms (which corosync computes
	// only when every node has 1 vote).
	Votes uint32 `json:"votes,omitempty"`
	// TieBreaker is qnetd's tie_breaker: lowest, highest or one node id.
	TieBreaker TieBreaker `json:"tie_breaker"`
}

// Config is the quorum part of the cluster configuration: corosync's
// nodelist and quorum sections. It must be the same on every node.
type Config struct {
	Nodes []Node `json:"nodes"`
	// ExpectedVotes is quorum.expected_votes; 0 means the sum of the
	// nodes' votes plus the witness's. It may not be lower than that sum
	// (corosync allows it; two partitions could then both be quorate).
	ExpectedVotes uint32 `json:"expected_votes,omitempty"`
	// TwoNode is two_node: quorum 1 while no more than two nodes are
	// seen. It only takes effect when exactly two nodes are configured.
	TwoNode bool `json:"two_node,omitempty"`
	// WaitForAll is wait_for_all; nil follows TwoNode, as corosync does
	// when the key is absent.
	WaitForAll *bool `json:"wait_for_all,omitempty"`
	// LastManStanding is last_man_standing, with its window in ms (0:
	// DefaultLastManStandingWindowMs).
	LastManStanding         bool  `json:"last_man_standing,omitempty"`
	LastManStandingWindowMs int64 `json:"last_man_standing_window_ms,omitempty"`
	// AutoTieBreaker is auto_tie_breaker, AutoTieBreakerNode its node.
	AutoTieBreaker     bool       `json:"auto_tie_breaker,omitempty"`
	AutoTieBreakerNode TieBreaker `json:"auto_tie_breaker_node"`
	// Witness is the quorum device; nil when there is none.
	Witness *WitnessConfig `json:"witness,omitempty"`
}

// ErrRestartRequired is returned by Reconfigure for a change of an option
// corosync reads only at startup (wait_for_all, last_man_standing and its
// window, auto_tie_breaker and its node): make a new Machine instead.
var ErrRestartRequired = errors.New("quorum option can only change at startup")

// rules is a validated Config with every default applied.
type rules struct {
	nodes        []Node // sorted by id
	votes        map[NodeID]uint32
	sumVotes     uint32 // node votes only
	witnessVotes uint32 // 0 without a witness
	expected     uint32 // configured expected votes, witness included
	twoNode      bool   // effective: configured and exactly two nodes
	waitForAll   bool   // effective
	wfaAutoset   bool   // wait_for_all follows two_node
	lms          bool
	lmsWindowMs  int64
	atb          bool
	atbNode      TieBreaker
	witness      *WitnessConfig // with defaults applied
}

// Validate checks the configuration. It refuses what corosync refuses
// (and what it quietly repairs, see doc.go), and input no cluster can
// mean: no nodes, too many, duplicate ids or names, out-of-range votes,
// expected votes below the configured votes. All problems are reported.
func (c Config) Validate() error {
	_, err := c.rules()
	return err
}

func (c Config) rules() (*rules, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	r := &rules{votes: make(map[NodeID]uint32, len(c.Nodes))}
	switch {
	case len(c.Nodes) == 0:
		bad("no nodes: a cluster needs at least one node")
	case len(c.Nodes) > MaxNodes:
		bad("%d nodes: at most %d are supported", len(c.Nodes), MaxNodes)
	}
	names := map[string]NodeID{}
	allOne := true
	for i, n := range c.Nodes {
		if i >= MaxNodes {
			break
		}
		switch {
		case n.ID == 0:
			bad("node id 0 is reserved (votequorum's quorum device id); use 1..%d", MaxNodeID)
			continue
		case n.ID > MaxNodeID:
			bad("node id %d: use 1..%d", n.ID, MaxNodeID)
			continue
		}
		if _, dup := r.votes[n.ID]; dup {
			bad("node id %d appears twice", n.ID)
			continue
		}
		if n.Votes == 0 || n.Votes > MaxVotes {
			bad("node %d has %d votes: use 1..%d", n.ID, n.Votes, MaxVotes)
			continue
		}
		if err := checkName(n.Name); err != nil {
			bad("node %d: %v", n.ID, err)
		} else if n.Name != "" {
			if other, dup := names[n.Name]; dup {
				bad("node name %q is used by nodes %d and %d", n.Name, other, n.ID)
			}
			names[n.Name] = n.ID
		}
		r.votes[n.ID] = n.Votes
		r.nodes = append(r.nodes, n)
		r.sumVotes += n.Votes
		if n.Votes != 1 {
			allOne = false
		}
	}
	if len(errs) > 0 {
		// The option checks below count nodes and votes: with a node
		// already refused they would only report echoes of it.
		return nil, errors.Join(errs...)
	}
	slices.SortFunc(r.nodes, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	nodeCount := len(r.nodes)
	known := func(id NodeID) bool { _, ok := r.votes[id]; return ok }

	// two_node: corosync applies quorum 1 whenever at most two nodes are
	// in view. Here it applies only when exactly two are configured (the
	// man page: "if more than 2 nodes join the cluster, the two_node
	// option is automatically disabled"), so that a lone node of three
	// can never be quorate on its own.
	r.twoNode = c.TwoNode && nodeCount == 2
	r.wfaAutoset = c.WaitForAll == nil
	if c.WaitForAll != nil {
		r.waitForAll = *c.WaitForAll
	} else {
		r.waitForAll = r.twoNode
	}

	r.lms = c.LastManStanding
	r.lmsWindowMs = c.LastManStandingWindowMs
	if r.lmsWindowMs == 0 {
		r.lmsWindowMs = DefaultLastManStandingWindowMs
	}
	if r.lmsWindowMs < MinLastManStandingWindowMs || r.lmsWindowMs > MaxLastManStandingWindowMs {
		bad("last_man_standing_window %d ms: use %d..%d ms", c.LastManStandingWindowMs, MinLastManStandingWindowMs, MaxLastManStandingWindowMs)
	}
	if c.LastManStanding && !allOne {
		// votequorum disables LMS at runtime when it sees a node with more
		// than one vote ("supported only when all cluster nodes votes are
		// set to 1"); a configuration that would do that is refused.
		bad("last_man_standing needs every node to have exactly 1 vote")
	}

	r.atb = c.AutoTieBreaker
	r.atbNode = c.AutoTieBreakerNode
	if !c.AutoTieBreaker && !c.AutoTieBreakerNode.isDefault() {
		bad("auto_tie_breaker_node is %q but auto_tie_breaker is off", c.AutoTieBreakerNode)
	}
	if err := checkTieBreaker(c.AutoTieBreakerNode, known, MaxNodes); err != nil {
		bad("auto_tie_breaker_node: %v", err)
	}
	if c.TwoNode && c.AutoTieBreaker {
		// corosync logs "two_node and auto_tie_breaker are both specified
		// but are not compatible" and turns two_node off.
		bad("two_node and auto_tie_breaker cannot be used together: two_node lets a fence race decide a 50:50 split, auto_tie_breaker decides it by node id")
	}
	if c.AutoTieBreaker && r.sumVotes%2 == 1 && !r.waitForAll {
		// corosync: with an odd number of votes, a half+1 partition that
		// lacks the tie breaker could otherwise become quorate after a
		// restart while the tie breaker's half holds quorum.
		if c.LastManStanding {
			bad("auto_tie_breaker and last_man_standing are not available when the votes add up to an odd number (%d) without wait_for_all", r.sumVotes)
		} else {
			bad("auto_tie_breaker needs wait_for_all when the votes add up to an odd number (%d)", r.sumVotes)
		}
	}

	if w := c.Witness; w != nil {
		wc := *w
		switch wc.Algorithm {
		case FFSplit:
			if !allOne {
				bad("witness algorithm ffsplit needs every node to have exactly 1 vote")
			}
			if wc.Votes == 0 {
				wc.Votes = 1
			} else if wc.Votes != 1 {
				bad("witness algorithm ffsplit needs the witness to have exactly 1 vote, not %d", wc.Votes)
			}
		case LMS:
			if wc.Votes == 0 {
				if !allOne || c.ExpectedVotes != 0 {
					bad("witness votes must be given when not every node has 1 vote or expected_votes is set")
				} else if nodeCount > 1 {
					wc.Votes = uint32(nodeCount - 1)
				}
			}
		default:
			bad("witness algorithm %q: use ffsplit or lms", wc.Algorithm)
		}
		if wc.Votes > MaxWitnessVotes {
			bad("witness has %d votes: at most %d", wc.Votes, MaxWitnessVotes)
		}
		if nodeCount < 2 {
			bad("a witness needs at least two nodes to arbitrate between")
		}
		if wc.TieBreaker.Mode == TieBreakList && len(wc.TieBreaker.Nodes) != 1 {
			bad("witness tie_breaker: use lowest, highest or exactly one node id")
		} else if err := checkTieBreaker(wc.TieBreaker, known, 1); err != nil {
			bad("witness tie_breaker: %v", err)
		}
		if c.TwoNode {
			bad("two_node and a witness cannot be configured at the same time")
		}
		if c.LastManStanding {
			bad("a witness is not compatible with last_man_standing")
		}
		if c.AutoTieBreaker {
			bad("a witness is not compatible with auto_tie_breaker")
		}
		r.witness = &wc
		r.witnessVotes = wc.Votes
	}

	configured := r.sumVotes + r.witnessVotes
	r.expected = configured
	if c.ExpectedVotes != 0 {
		switch {
		case c.ExpectedVotes > MaxExpectedVotes:
			bad("expected_votes %d: at most %d", c.ExpectedVotes, MaxExpectedVotes)
		case c.ExpectedVotes < configured:
			bad("expected_votes %d is below the %d configured votes: two partitions could both be quorate", c.ExpectedVotes, configured)
		default:
			r.expected = c.ExpectedVotes
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

func checkTieBreaker(t TieBreaker, known func(NodeID) bool, maxLen int) error {
	switch t.Mode {
	case TieBreakLowest, TieBreakHighest:
		if len(t.Nodes) != 0 {
			return fmt.Errorf("%s takes no node list", t)
		}
		return nil
	case TieBreakList:
	default:
		return fmt.Errorf("unknown mode %d", t.Mode)
	}
	if len(t.Nodes) == 0 {
		return errors.New("an empty node list")
	}
	if len(t.Nodes) > maxLen {
		return fmt.Errorf("%d node ids: at most %d", len(t.Nodes), maxLen)
	}
	seen := map[NodeID]bool{}
	for _, id := range t.Nodes {
		if !known(id) {
			return fmt.Errorf("node %d is not configured", id)
		}
		if seen[id] {
			return fmt.Errorf("node %d is listed twice", id)
		}
		seen[id] = true
	}
	return nil
}

func checkName(name string) error {
	if len(name) > maxNameBytes {
		return fmt.Errorf("name is longer than %d bytes", maxNameBytes)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return fmt.Errorf("name %q: no spaces or control characters", name)
		}
	}
	return nil
}

// startupOnlyEqual reports whether two configurations agree on every
// option votequorum reads only at startup (votequorum_set_icmap_ro_keys).
func startupOnlyEqual(a, b Config) error {
	var diff []string
	if (a.WaitForAll == nil) != (b.WaitForAll == nil) || (a.WaitForAll != nil && *a.WaitForAll != *b.WaitForAll) {
		diff = append(diff, "wait_for_all")
	}
	if a.LastManStanding != b.LastManStanding {
		diff = append(diff, "last_man_standing")
	}
	if a.LastManStandingWindowMs != b.LastManStandingWindowMs {
		diff = append(diff, "last_man_standing_window")
	}
	if a.AutoTieBreaker != b.AutoTieBreaker {
		diff = append(diff, "auto_tie_breaker")
	}
	if a.AutoTieBreakerNode.String() != b.AutoTieBreakerNode.String() {
		diff = append(diff, "auto_tie_breaker_node")
	}
	if len(diff) > 0 {
		return fmt.Errorf("%w: %s", ErrRestartRequired, strings.Join(diff, ", "))
	}
	return nil
}
