package quorum

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// sim is a cluster simulator in the style of corosync's vqsim and the
// Proxmox HA simulator: one Machine per running node, a network made of
// segments (a node hears exactly the running nodes of its segment), a
// witness with its Arbiter, and a virtual clock. After every event the
// nodes exchange their NodeInfo in synchronous rounds (as heartbeats
// would) until nothing changes; after every round the safety checks run.
type sim struct {
	cfg   Config
	nowMs int64
	ids   []NodeID
	nodes map[NodeID]*simNode

	witnessUp bool
	arb       *Arbiter
	decision  Decision

	// Safety checks. violations collects every breach of "no two
	// disjoint partitions quorate" and of "expected votes fall only
	// through last_man_standing or by hand".
	violations []string
	// lastExpected is each running machine's expected votes after the
	// previous round.
	lastExpected map[NodeID]uint32
	// fixedExpected: every node's expected votes must stay the configured
	// value (true when neither last_man_standing nor SetExpected is used).
	fixedExpected bool
}

type simNode struct {
	id          NodeID
	up          bool
	m           *Machine
	segment     int
	witnessLink bool
}

// maxRounds bounds the NodeInfo exchange after an event: one round to
// see the new membership, one to hear the peers' new state, one more for
// a vouched-for node's change to reach the rest, and some slack.
const maxRounds = 8

func newSim(cfg Config, up []NodeID) (*sim, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &sim{cfg: cfg, nodes: map[NodeID]*simNode{}, witnessUp: cfg.Witness != nil,
		lastExpected: map[NodeID]uint32{}}
	if cfg.Witness != nil {
		arb, err := NewArbiter(cfg, nil)
		if err != nil {
			return nil, err
		}
		s.arb = arb
	}
	for _, n := range cfg.Nodes {
		s.ids = append(s.ids, n.ID)
		s.nodes[n.ID] = &simNode{id: n.ID, witnessLink: true}
	}
	slices.Sort(s.ids)
	if up == nil {
		up = s.ids
	}
	for _, id := range up {
		if err := s.start(id); err != nil {
			return nil, err
		}
	}
	s.settle()
	return s, nil
}

func (s *sim) node(id NodeID) (*simNode, error) {
	n, ok := s.nodes[id]
	if !ok {
		return nil, fmt.Errorf("no node %d", id)
	}
	return n, nil
}

func (s *sim) start(id NodeID) error {
	n, err := s.node(id)
	if err != nil {
		return err
	}
	if n.up {
		return fmt.Errorf("node %d is already up", id)
	}
	m, err := New(s.cfg, id, s.nowMs)
	if err != nil {
		return err
	}
	n.m, n.up = m, true
	s.lastExpected[id] = m.Status().ExpectedVotes
	return nil
}

func (s *sim) stop(id NodeID) error {
	n, err := s.node(id)
	if err != nil {
		return err
	}
	if !n.up {
		return fmt.Errorf("node %d is already down", id)
	}
	n.m, n.up = nil, false
	delete(s.lastExpected, id)
	return nil
}

// view is what node id hears: the running nodes of its segment.
func (s *sim) view(id NodeID) []NodeID {
	var out []NodeID
	for _, other := range s.ids {
		o := s.nodes[other]
		if o.up && o.segment == s.nodes[id].segment {
			out = append(out, other)
		}
	}
	return out
}

// witnessGrants asks the arbiter; it returns, per node, the membership
// the witness grants it its vote for.
func (s *sim) witnessGrants() map[NodeID][]NodeID {
	grants := map[NodeID][]NodeID{}
	s.decision = Decision{}
	if s.arb == nil {
		return grants
	}
	if !s.witnessUp {
		s.decision.Reason = "witness down"
		return grants
	}
	var clients []WitnessClient
	for _, id := range s.ids {
		if n := s.nodes[id]; n.up && n.witnessLink {
			clients = append(clients, WitnessClient{ID: id, Membership: s.view(id)})
		}
	}
	s.decision = s.arb.Decide(clients)
	for _, id := range s.decision.Granted {
		grants[id] = s.decision.Winner
	}
	return grants
}

// settle delivers the current topology to every running node and lets
// them exchange NodeInfo until nothing changes.
func (s *sim) settle() {
	grants := s.witnessGrants()
	for round := 0; round < maxRounds; round++ {
		infos := map[NodeID]NodeInfo{}
		for _, id := range s.ids {
			if n := s.nodes[id]; n.up {
				infos[id] = n.m.Info()
			}
		}
		changed := false
		for _, id := range s.ids {
			n := s.nodes[id]
			if !n.up {
				continue
			}
			var members []Member
			for _, other := range s.view(id) {
				members = append(members, Member{ID: other, Info: infos[other]})
			}
			n.m.Update(s.nowMs, View{Members: members, WitnessVoteFor: grants[id]})
			if n.m.Info() != infos[id] {
				changed = true
			}
			s.checkExpected(n, infos)
		}
		s.check()
		if !changed {
			return
		}
	}
	s.violations = append(s.violations, fmt.Sprintf("t=%dms: no steady state after %d rounds", s.nowMs, maxRounds))
}

// check runs the safety checks on the current state.
func (s *sim) check() {
	type q struct {
		id      NodeID
		members []NodeID
	}
	var quorate []q
	for _, id := range s.ids {
		n := s.nodes[id]
		if !n.up {
			continue
		}
		st := n.m.Status()
		if st.Quorate {
			var ms []NodeID
			for _, mb := range st.Members {
				ms = append(ms, mb.ID)
			}
			quorate = append(quorate, q{id, ms})
		}
	}
	for i := range quorate {
		for j := i + 1; j < len(quorate); j++ {
			if !sharesAny(quorate[i].members, quorate[j].members) {
				s.violate(fmt.Sprintf("t=%dms: split brain: node %d (members %s) and node %d (members %s) are both quorate",
					s.nowMs, quorate[i].id, fmtIDs(quorate[i].members), quorate[j].id, fmtIDs(quorate[j].members)))
			}
		}
	}
}

// checkExpected: after a membership round, a node's expected votes may
// only have fallen by taking those of a quorate peer (then raised to the
// votes present): the peer's came from last_man_standing or SetExpected.
// With neither in use they never move from the configured value.
func (s *sim) checkExpected(n *simNode, infos map[NodeID]NodeInfo) {
	st := n.m.Status()
	now := st.ExpectedVotes
	defer func() { s.lastExpected[n.id] = now }()
	if s.fixedExpected {
		if r, _ := s.cfg.rules(); now != r.expected {
			s.violate(fmt.Sprintf("t=%dms: expected votes of node %d are %d, not the configured %d", s.nowMs, n.id, now, r.expected))
		}
		return
	}
	last, ok := s.lastExpected[n.id]
	if !ok || now >= last {
		return
	}
	var present uint32
	for _, mb := range st.Members {
		present += mb.Votes
	}
	if st.Witness != nil {
		present += st.Witness.Votes
	}
	for _, mb := range st.Members {
		if info, ok := infos[mb.ID]; ok && mb.ID != n.id && info.Quorate && max(info.ExpectedVotes, present) == now {
			return
		}
	}
	s.violate(fmt.Sprintf("t=%dms: expected votes of node %d fell from %d to %d on their own", s.nowMs, n.id, last, now))
}

func (s *sim) violate(v string) {
	if !slices.Contains(s.violations, v) {
		s.violations = append(s.violations, v)
	}
}

// advance moves the clock and ticks every running node.
func (s *sim) advance(ms int64) {
	s.nowMs += ms
	for _, id := range s.ids {
		if n := s.nodes[id]; n.up {
			before := n.m.Status().ExpectedVotes
			n.m.Tick(s.nowMs)
			after := n.m.Status().ExpectedVotes
			if after < before && !s.cfg.LastManStanding {
				s.violate(fmt.Sprintf("t=%dms: expected votes of node %d fell from %d to %d with time, without last_man_standing", s.nowMs, id, before, after))
			}
			s.lastExpected[id] = after
		}
	}
	s.settle()
}

// setExpected runs SetExpected on one node; like votequorum's reconfigure
// message, an accepted value is applied by every member of its partition.
func (s *sim) setExpected(on NodeID, expected uint32) (ExpectedResult, error) {
	n, err := s.node(on)
	if err != nil {
		return ExpectedResult{}, err
	}
	if !n.up {
		return ExpectedResult{}, fmt.Errorf("node %d is down", on)
	}
	res, err := n.m.SetExpected(s.nowMs, expected)
	if err != nil {
		return res, err
	}
	for _, id := range s.view(on) {
		if id != on {
			if err := s.nodes[id].m.ApplyExpected(s.nowMs, expected); err != nil {
				return res, err
			}
		}
		s.lastExpected[id] = s.nodes[id].m.Status().ExpectedVotes
	}
	s.settle()
	return res, nil
}

// split sets the network segments: "1,2|3,4,5". Every node must be named
// once.
func (s *sim) split(spec string) error {
	seen := map[NodeID]bool{}
	groups := strings.Split(spec, "|")
	for g, group := range groups {
		ids, err := parseIDs(group)
		if err != nil {
			return err
		}
		for _, id := range ids {
			n, err := s.node(id)
			if err != nil {
				return err
			}
			if seen[id] {
				return fmt.Errorf("node %d named twice", id)
			}
			seen[id] = true
			n.segment = g
		}
	}
	if len(seen) != len(s.ids) {
		return fmt.Errorf("split must name every node once (%d named, %d nodes)", len(seen), len(s.ids))
	}
	s.settle()
	return nil
}

func (s *sim) isolate(id NodeID) error {
	n, err := s.node(id)
	if err != nil {
		return err
	}
	used := map[int]bool{}
	for _, o := range s.nodes {
		used[o.segment] = true
	}
	seg := 0
	for used[seg] {
		seg++
	}
	n.segment = seg
	s.settle()
	return nil
}

func (s *sim) heal() {
	for _, n := range s.nodes {
		n.segment = 0
	}
	s.settle()
}

// reconfigure gives every running node a new configuration (a node join
// or leave); a node not in it is stopped and forgotten.
func (s *sim) reconfigure(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s.cfg = cfg
	known := map[NodeID]bool{}
	for _, n := range cfg.Nodes {
		known[n.ID] = true
		if _, ok := s.nodes[n.ID]; !ok {
			s.nodes[n.ID] = &simNode{id: n.ID, witnessLink: true, segment: s.nodes[s.ids[0]].segment}
			s.ids = append(s.ids, n.ID)
		}
	}
	var ids []NodeID
	for _, id := range s.ids {
		if !known[id] {
			delete(s.nodes, id)
			delete(s.lastExpected, id)
			continue
		}
		ids = append(ids, id)
		if n := s.nodes[id]; n.up {
			if err := n.m.Reconfigure(s.nowMs, cfg); err != nil {
				return err
			}
			s.lastExpected[id] = n.m.Status().ExpectedVotes
		}
	}
	slices.Sort(ids)
	s.ids = ids
	if s.arb != nil || cfg.Witness != nil {
		if cfg.Witness == nil {
			s.arb = nil
		} else {
			var active []NodeID
			if s.arb != nil {
				active = s.arb.Active()
			}
			arb, err := NewArbiter(cfg, active)
			if err != nil {
				return err
			}
			s.arb = arb
		}
	}
	return nil
}

// print writes one line per node, then the witness's decision.
func (s *sim) print(b *strings.Builder) {
	for _, id := range s.ids {
		n := s.nodes[id]
		if !n.up {
			fmt.Fprintf(b, "%d: down\n", id)
			continue
		}
		st := n.m.Status()
		yes := "no"
		if st.Quorate {
			yes = "yes"
		}
		fmt.Fprintf(b, "%d: quorate=%s total=%d expected=%d", id, yes, st.TotalVotes, st.ExpectedVotes)
		if st.HighestExpected != st.ExpectedVotes {
			fmt.Fprintf(b, " highest=%d", st.HighestExpected)
		}
		fmt.Fprintf(b, " quorum=%d", st.Quorum)
		flags := strings.Join(st.Flags.Names(), ",")
		if flags == "" {
			flags = "-"
		}
		fmt.Fprintf(b, " flags=%s", flags)
		if st.WaitingForAll {
			b.WriteString(" waiting")
		}
		if st.Witness != nil {
			if st.Witness.Vote {
				b.WriteString(" witness=vote")
			} else {
				b.WriteString(" witness=none")
			}
		}
		if st.LastManStandingDeadlineMs != nil {
			fmt.Fprintf(b, " lms-at=%s", fmtMs(*st.LastManStandingDeadlineMs))
		}
		var ms []NodeID
		for _, mb := range st.Members {
			ms = append(ms, mb.ID)
		}
		fmt.Fprintf(b, " members=%s\n", fmtIDs(ms))
	}
	if s.arb != nil {
		switch {
		case !s.witnessUp:
			b.WriteString("witness: down\n")
		case s.decision.Winner == nil:
			fmt.Fprintf(b, "witness: no vote (%s)\n", s.decision.Reason)
		default:
			fmt.Fprintf(b, "witness: vote to %s via %s (%s)\n", fmtIDs(s.decision.Winner), fmtIDs(s.decision.Granted), s.decision.Reason)
		}
	}
}

func fmtMs(ms int64) string {
	if ms%1000 == 0 {
		return strconv.FormatInt(ms/1000, 10) + "s"
	}
	return strconv.FormatInt(ms, 10) + "ms"
}

func parseIDs(s string) ([]NodeID, error) {
	var out []NodeID
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		v, err := strconv.ParseUint(f, 10, 32)
		if err != nil || v == 0 {
			return nil, fmt.Errorf("bad node id %q", f)
		}
		out = append(out, NodeID(v))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no node ids in %q", s)
	}
	return out, nil
}
