package quorum

import (
	"fmt"
	"slices"
)

// NodeInfo is what a node tells its peers about its quorum state: the
// parts of votequorum's nodeinfo message the rules read. Carry it in
// heartbeats; feed what you hear back in through View.Members.
type NodeInfo struct {
	// ExpectedVotes is the sender's expected votes; 0 means "unknown" and
	// makes the rest of the info ignored.
	ExpectedVotes uint32 `json:"expected_votes"`
	// Quorate is the sender's decision.
	Quorate bool `json:"quorate"`
	// WaitingForAll is the sender's wait_for_all_status: it is still
	// waiting to see every expected vote at once.
	WaitingForAll bool `json:"waiting_for_all"`
}

// Member is a node in this node's view of its partition, with the last
// NodeInfo heard from it (the zero NodeInfo when none was heard yet).
type Member struct {
	ID   NodeID
	Info NodeInfo
}

// View is one observation of this node's partition.
type View struct {
	// Members are the nodes this node can talk to. This node is always
	// counted, listed or not; ids not in the configuration are ignored
	// (they have no vote); duplicates count once.
	Members []Member
	// WitnessVoteFor is the membership (node ids) for which the witness
	// granted this node its vote, or nil when it did not. The vote counts
	// only if it names exactly the members of this view: votequorum binds
	// a quorum device's vote to a ring id and ignores a poll for an older
	// ring (message_handler_req_lib_votequorum_qdevice_poll). When the
	// membership changes and a witness is configured, the caller should
	// hold the change back until the witness answered for it (or gave up),
	// as votequorum's sync waits for the device's poll.
	WitnessVoteFor []NodeID
}

// Machine is one node's votequorum: membership, configuration and a
// virtual time in, the quorum decision out. It does no I/O and reads no
// clock. It is not safe for concurrent use.
type Machine struct {
	cfg   Config
	r     *rules
	self  NodeID
	nowMs int64

	// ring is the current membership (votequorum's quorum_members),
	// sorted, self included; nil before the first Update, as
	// quorum_members is empty before the first ring.
	ring []NodeID
	// previous is the membership before the last change
	// (previous_quorum_members).
	previous []NodeID
	// peerSeen is the last NodeInfo processed per member: a peer's info is
	// handled again only when it changes (a nodeinfo message) or the
	// membership changes (every node resends its nodeinfo at sync).
	peerSeen map[NodeID]NodeInfo
	// peerExpected is votequorum's node->expected_votes for the peers
	// whose value counts: quorate ones, or all after setAllExpected.
	peerExpected map[NodeID]uint32

	expected uint32 // us->expected_votes
	quorum   uint32 // never falls unless a rule allows it (allow_decrease)
	total    uint32 // votes counted at the last calculation
	quorate  bool   // cluster_is_quorate
	waiting  bool   // wait_for_all_status

	// lowestSeen and highestSeen are the lowest and highest node ids of
	// the membership at the last time this node was quorate by votes
	// (lowest_node_id / highest_node_id); 0 before that.
	lowestSeen, highestSeen NodeID
	// tieBreaker is the auto_tie_breaker node chosen at that time.
	tieBreaker NodeID

	lmsTimerSet   bool
	lmsDeadlineMs int64

	witnessVote bool // NODE_FLAGS_QDEVICE_CAST_VOTE for the current ring
}

// New starts the machine of node self at time nowMs, as corosync starts:
// alone in its view, with wait_for_all armed when configured.
func New(cfg Config, self NodeID, nowMs int64) (*Machine, error) {
	r, err := cfg.rules()
	if err != nil {
		return nil, err
	}
	if _, ok := r.votes[self]; !ok {
		return nil, fmt.Errorf("node %d is not in the configuration", self)
	}
	m := &Machine{
		cfg:          cloneConfig(cfg),
		r:            r,
		self:         self,
		nowMs:        nowMs,
		peerSeen:     map[NodeID]NodeInfo{},
		peerExpected: map[NodeID]uint32{},
		expected:     r.expected,
		waiting:      r.waitForAll,
	}
	m.recalculate(false, false)
	return m, nil
}

// Update feeds the current view of this node's partition. Call it at every
// membership change and may call it at every tick: an unchanged view
// changes nothing.
func (m *Machine) Update(nowMs int64, v View) {
	m.advance(nowMs)
	ids, infos := m.sanitize(v.Members)
	if !slices.Equal(ids, m.ring) {
		m.syncInit(ids)
	}
	m.witnessVote = m.r.witness != nil && v.WitnessVoteFor != nil && slices.Equal(m.sanitizeIDs(v.WitnessVoteFor), ids)
	for _, id := range ids {
		if id == m.self {
			continue
		}
		info := infos[id]
		if seen, ok := m.peerSeen[id]; ok && seen == info {
			continue
		}
		m.peerSeen[id] = info
		m.nodeinfo(id, info)
	}
	// votequorum_sync_activate: one more calculation with everything in.
	m.recalculate(false, false)
}

// Tick lets virtual time pass: it fires the last_man_standing timer when
// its window is over.
func (m *Machine) Tick(nowMs int64) { m.advance(nowMs) }

// SetWitness says whether the witness grants its vote for the current
// membership (the witness went away, or came back with the same view).
func (m *Machine) SetWitness(nowMs int64, granted bool) {
	m.advance(nowMs)
	v := granted && m.r.witness != nil
	if v != m.witnessVote {
		m.witnessVote = v
		m.recalculate(false, false)
	}
}

// ExpectedResult is what SetExpected did.
type ExpectedResult struct {
	ExpectedVotes uint32 `json:"expected_votes"`
	Quorum        uint32 `json:"quorum"`
	Quorate       bool   `json:"quorate"`
	// Warning is the text to show the operator.
	Warning string `json:"warning"`
}

// SplitBrainWarning is printed with every accepted SetExpected.
const SplitBrainWarning = "WARNING: expected votes were set by hand. This partition now decides quorum " +
	"on its own. If the nodes it cannot see are alive behind a broken network, they may " +
	"act at the same time (split brain) and damage shared data. Do this only when you " +
	"know the missing nodes are down (powered off or fenced). Expected votes rise again " +
	"as soon as more votes are seen."

// SetExpected is the "pvecm expected N" / "corosync-quorumtool -e N"
// lever. Like votequorum's setexpected handler it refuses a value below
// the votes present, and one that would make a quorate partition
// inquorate; otherwise it applies it here. corosync then tells every
// member of the partition (a reconfigure message): the caller should
// deliver the accepted value to the other members' ApplyExpected. An
// inquorate member picks it up anyway from this node's NodeInfo once this
// node is quorate.
func (m *Machine) SetExpected(nowMs int64, expected uint32) (ExpectedResult, error) {
	m.advance(nowMs)
	if expected == 0 || expected > MaxExpectedVotes {
		return ExpectedResult{}, fmt.Errorf("expected votes %d: use 1..%d", expected, MaxExpectedVotes)
	}
	newQuorum, total := m.calculate(true, expected)
	if expected < total {
		return ExpectedResult{}, fmt.Errorf("expected votes %d is below the %d votes present", expected, total)
	}
	if m.quorate && newQuorum > total {
		return ExpectedResult{}, fmt.Errorf("expected votes %d would make this quorate partition inquorate (quorum %d, %d votes present)", expected, newQuorum, total)
	}
	if err := m.ApplyExpected(nowMs, expected); err != nil {
		return ExpectedResult{}, err
	}
	return ExpectedResult{ExpectedVotes: m.expected, Quorum: m.quorum, Quorate: m.quorate, Warning: SplitBrainWarning}, nil
}

// ApplyExpected applies expected votes set on another member of the
// partition (votequorum's reconfigure message): no checks but the bounds,
// and quorum may fall.
func (m *Machine) ApplyExpected(nowMs int64, expected uint32) error {
	m.advance(nowMs)
	if expected == 0 || expected > MaxExpectedVotes {
		return fmt.Errorf("expected votes %d: use 1..%d", expected, MaxExpectedVotes)
	}
	m.setAllExpected(expected)
	m.recalculate(true, false)
	return nil
}

// CancelWaitForAll stops waiting for all nodes (corosync's
// quorum.cancel_wait_for_all key).
func (m *Machine) CancelWaitForAll(nowMs int64) {
	m.advance(nowMs)
	m.waiting = false
	m.recalculate(false, false)
}

// Reconfigure switches to a new configuration, as a corosync.conf reload
// does: node votes, expected votes, two_node and the witness may change;
// expected votes are reset to the configured value and quorum may fall.
// The options corosync reads only at startup give ErrRestartRequired.
func (m *Machine) Reconfigure(nowMs int64, cfg Config) error {
	r, err := cfg.rules()
	if err != nil {
		return err
	}
	if _, ok := r.votes[m.self]; !ok {
		return fmt.Errorf("node %d is not in the new configuration", m.self)
	}
	if err := startupOnlyEqual(m.cfg, cfg); err != nil {
		return err
	}
	m.advance(nowMs)
	votesChanged := len(r.votes) != len(m.r.votes)
	for id, v := range r.votes {
		if m.r.votes[id] != v {
			votesChanged = true
		}
	}
	m.cfg, m.r = cloneConfig(cfg), r
	if !r.waitForAll {
		// two_node went off and took an automatic wait_for_all with it.
		m.waiting = false
	}
	if r.witness == nil {
		m.witnessVote = false
	}
	if m.ring != nil {
		kept := m.ring[:0:0]
		for _, id := range m.ring {
			if _, ok := r.votes[id]; ok {
				kept = append(kept, id)
			} else {
				delete(m.peerSeen, id)
				delete(m.peerExpected, id)
			}
		}
		m.ring = kept
	}
	expectedChanged := r.expected != m.expected
	if expectedChanged {
		m.setAllExpected(r.expected)
	}
	m.recalculate(expectedChanged || votesChanged, false)
	return nil
}

// Info is what this node tells its peers.
func (m *Machine) Info() NodeInfo {
	return NodeInfo{ExpectedVotes: m.expected, Quorate: m.quorate, WaitingForAll: m.waiting}
}

// Quorate is the decision.
func (m *Machine) Quorate() bool { return m.quorate }

// NodeID is this machine's node.
func (m *Machine) NodeID() NodeID { return m.self }

// Config is the configuration in force.
func (m *Machine) Config() Config { return cloneConfig(m.cfg) }

// advance moves virtual time forward (never back: a clock that jumps back
// is ignored) and fires the last_man_standing timer when it is due.
func (m *Machine) advance(nowMs int64) {
	if nowMs > m.nowMs {
		m.nowMs = nowMs
	}
	if m.lmsTimerSet && m.nowMs >= m.lmsDeadlineMs {
		m.lmsTimerSet = false
		m.lastManStandingTimer()
	}
}

// sanitize keeps configured ids, once each, adds self and sorts.
func (m *Machine) sanitize(members []Member) ([]NodeID, map[NodeID]NodeInfo) {
	infos := make(map[NodeID]NodeInfo, len(members))
	ids := []NodeID{m.self}
	seen := map[NodeID]bool{m.self: true}
	for _, mb := range members {
		if _, ok := m.r.votes[mb.ID]; !ok || seen[mb.ID] {
			continue
		}
		seen[mb.ID] = true
		ids = append(ids, mb.ID)
		infos[mb.ID] = mb.Info
	}
	slices.Sort(ids)
	return ids, infos
}

func (m *Machine) sanitizeIDs(list []NodeID) []NodeID {
	members := make([]Member, len(list))
	for i, id := range list {
		members[i] = Member{ID: id}
	}
	ids, _ := m.sanitize(members)
	return ids
}

// members is who counts: the ring, or this node alone before the first.
func (m *Machine) members() []NodeID {
	if m.ring == nil {
		return []NodeID{m.self}
	}
	return m.ring
}

// setAllExpected is update_node_expected_votes: every member, this node
// included, is taken to expect n votes.
func (m *Machine) setAllExpected(n uint32) {
	m.expected = n
	for _, id := range m.members() {
		if id != m.self {
			m.peerExpected[id] = n
		}
	}
}

func cloneConfig(c Config) Config {
	c.Nodes = slices.Clone(c.Nodes)
	c.AutoTieBreakerNode.Nodes = slices.Clone(c.AutoTieBreakerNode.Nodes)
	if c.WaitForAll != nil {
		v := *c.WaitForAll
		c.WaitForAll = &v
	}
	if c.Witness != nil {
		w := *c.Witness
		w.TieBreaker.Nodes = slices.Clone(w.TieBreaker.Nodes)
		c.Witness = &w
	}
	return c
}
