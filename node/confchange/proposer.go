package confchange

import "fmt"

// The proposer: at most one proposal per node at a time. A proposal turns
// the committed version v into v+1:
//
//  1. Prepare(v+1, b) to every voter of v, with a ballot b above every
//     round this node used or saw (the round is persisted before the
//     Prepare leaves).
//  2. With promises from voters holding the quorum of v's votes: if any of
//     them had accepted a value, the value accepted at the highest ballot
//     must be proposed instead of our own (it may already be chosen);
//     otherwise our own. Accept(v+1, b, value) to every voter.
//  3. With Accepted from voters holding the quorum: the value is chosen.
//     Apply it, Commit it to every member of v and of v+1.
//
// A refusal (a higher promise) or silence past the retry deadline starts
// again at step 1 with a higher ballot, after an exponential backoff with
// jitter; past the proposal timeout the proposal reports TimedOut.

type phase uint8

const (
	phaseBackoff phase = iota // waiting for the retry deadline
	phasePrepare
	phaseAccept
)

func (p phase) String() string {
	switch p {
	case phasePrepare:
		return "prepare"
	case phaseAccept:
		return "accept"
	}
	return "backoff"
}

type proposal struct {
	id     uint64
	own    Config // the proposed configuration (version base+1)
	voters Votes  // of the base version: they decide
	need   uint64 // votes for a quorum

	ballot       Ballot
	phase        phase
	attempt      int
	startTicks   int64
	retryAtTicks int64

	// phase 1
	promised      map[NodeID]bool
	promisedVotes uint64
	bestBallot    Ballot // the highest accepted ballot reported
	bestValue     Config
	// phase 2
	value         Config // own, or adopted
	accepted      map[NodeID]bool
	acceptedVotes uint64
	// caughtUp: voters sent a catch-up in this attempt (once each).
	caughtUp map[NodeID]bool
}

// Propose starts a change from the committed version base to data as
// version base+1. quorate is votequorum's current verdict: an inquorate
// node's configuration is read-only. (Safety does not rest on the flag;
// it rests on the promise quorum, so a node that wrongly thinks it is
// quorate still cannot commit without a quorum of the voters.)
//
// The returned id comes back in a Result once the proposal ends. An error
// means nothing was started and nothing changed.
func (n *Node) Propose(quorate bool, base uint64, data []byte) (uint64, Output, error) {
	c := n.hs.Committed
	switch {
	case !quorate:
		return 0, Output{}, ErrInquorate
	case c.IsZero():
		return 0, Output{}, ErrNoConfig
	case n.prop != nil:
		return 0, Output{}, ErrBusy
	case base != c.Version:
		return 0, Output{}, &StaleError{Base: base, Committed: c.Version}
	case len(data) > n.opts.MaxConfigBytes:
		return 0, Output{}, fmt.Errorf("confchange: configuration is %d bytes; at most %d", len(data), n.opts.MaxConfigBytes)
	case c.Version >= MaxVersion:
		return 0, Output{}, fmt.Errorf("confchange: version %d is the last", c.Version)
	}
	if _, ok := n.members[n.opts.ID]; !ok {
		return 0, Output{}, ErrNotMember
	}
	own := NewConfig(c.Version+1, data)
	ownMembers, err := decodeMembers(n.opts.Members, own)
	if err != nil {
		return 0, Output{}, fmt.Errorf("confchange: %w", err)
	}
	voters := n.members.Voters()
	if err := CheckVoterChange(voters, ownMembers.Voters()); err != nil {
		return 0, Output{}, err
	}
	need, err := Need(voters, n.opts.Quorum)
	if err != nil {
		return 0, Output{}, err
	}
	n.lastProposalID++
	n.prop = &proposal{id: n.lastProposalID, own: own, voters: voters, need: need, startTicks: n.nowTicks}
	n.startAttempt()
	return n.lastProposalID, n.finishInput(), nil
}

// backoffTicks is the wait before retry number attempt+1: RetryTicks
// doubled per attempt up to MaxBackoffTicks, plus jitter below RetryTicks.
func (n *Node) backoffTicks(attempt int) int64 {
	d := int64(n.opts.RetryTicks)
	for i := 1; i < attempt && d < int64(n.opts.MaxBackoffTicks); i++ {
		d *= 2
	}
	d = min(d, int64(n.opts.MaxBackoffTicks))
	return d + int64(n.rand()%uint64(n.opts.RetryTicks))
}

// startAttempt begins phase 1 at a new ballot.
func (n *Node) startAttempt() {
	p := n.prop
	round := max(n.hs.Round, n.seenRound, n.hs.Promised.Round, n.hs.AcceptedBallot.Round) + 1
	if round > MaxRound {
		n.finishProposal(TimedOut, p.own.Version)
		return
	}
	// Persisted with this Output, before the Prepare leaves: a restart
	// never reuses the round.
	n.hs.Round = round
	n.dirty = true
	p.attempt++
	p.ballot = Ballot{Round: round, Proposer: n.opts.ID}
	p.phase = phasePrepare
	p.retryAtTicks = n.nowTicks + n.backoffTicks(p.attempt)
	p.promised, p.promisedVotes = map[NodeID]bool{}, 0
	p.bestBallot, p.bestValue = Ballot{}, Config{}
	p.value = Config{}
	p.accepted, p.acceptedVotes = map[NodeID]bool{}, 0
	p.caughtUp = map[NodeID]bool{}
	for _, id := range p.voters.IDs() {
		n.send(Message{Type: MsgPrepare, To: id, Version: p.own.Version, Ballot: p.ballot})
	}
}

// current says whether m answers the proposal's current ballot.
func (n *Node) current(m Message) (*proposal, bool) {
	p := n.prop
	if p == nil || m.Version != p.own.Version || m.Ballot != p.ballot {
		return nil, false
	}
	if _, ok := p.voters[m.From]; !ok {
		return nil, false
	}
	return p, true
}

func (n *Node) onPromise(m Message) {
	p, ok := n.current(m)
	if !ok || p.phase != phasePrepare || p.promised[m.From] {
		return
	}
	p.promised[m.From] = true
	p.promisedVotes += uint64(p.voters[m.From])
	if !m.AcceptedBallot.IsZero() && p.bestBallot.Less(m.AcceptedBallot) {
		p.bestBallot, p.bestValue = m.AcceptedBallot, m.Value
	}
	if p.promisedVotes < p.need {
		return
	}
	// A quorum promised: no lower ballot can be chosen any more unless it
	// was accepted by one of them, and then we must carry that value.
	p.value = p.own
	if !p.bestBallot.IsZero() {
		p.value = p.bestValue
	}
	p.phase = phaseAccept
	for _, id := range p.voters.IDs() {
		n.send(Message{Type: MsgAccept, To: id, Version: p.own.Version, Ballot: p.ballot, Value: p.value})
	}
}

func (n *Node) onAccepted(m Message) {
	p, ok := n.current(m)
	if !ok || p.phase != phaseAccept || p.accepted[m.From] {
		return
	}
	p.accepted[m.From] = true
	p.acceptedVotes += uint64(p.voters[m.From])
	if p.acceptedVotes < p.need {
		return
	}
	// Chosen. Tell every member of the old and the new configuration (a
	// node being added learns it is in; one being removed learns it is
	// out).
	v := p.value
	targets := n.members.clone()
	vm, _ := decodeMembers(n.opts.Members, v) // checked when it entered
	for id := range vm {
		targets[id] = 0
	}
	n.apply(v, vm) // resolves the proposal: Committed, or Lost if adopted
	for _, id := range targets.IDs() {
		if id != n.opts.ID {
			n.send(Message{Type: MsgCommit, To: id, Version: v.Version, Value: v})
		}
	}
}

func (n *Node) onNack(m Message, vm Votes) {
	switch m.Reason {
	case NackDecided:
		// Our base is stale: learn the committed configuration (this
		// resolves the proposal).
		n.learn(m.Value, vm)
	case NackBehind:
		p, ok := n.current(m)
		if ok && p.phase != phaseBackoff && !p.caughtUp[m.From] {
			p.caughtUp[m.From] = true
			n.send(Message{Type: MsgCatchUp, To: m.From, Version: n.hs.Committed.Version, Value: n.hs.Committed})
		}
	case NackBallot:
		n.seenRound = max(n.seenRound, m.Promised.Round)
		if p, ok := n.current(m); ok {
			// Someone holds a higher ballot: stop this one and retry at
			// the deadline (not at once: two proposers pre-empting each
			// other at once would duel forever).
			p.phase = phaseBackoff
		}
	}
}

// tickProposal times the proposal out, or retries it at its deadline.
func (n *Node) tickProposal() {
	p := n.prop
	if p == nil {
		return
	}
	if n.nowTicks-p.startTicks >= int64(n.opts.ProposalTimeoutTicks) {
		n.finishProposal(TimedOut, p.own.Version)
		return
	}
	if n.nowTicks >= p.retryAtTicks {
		n.startAttempt()
	}
}

// finishProposal reports the proposal's end and drops it.
func (n *Node) finishProposal(o Outcome, version uint64) {
	n.out.Results = append(n.out.Results, Result{ID: n.prop.id, Outcome: o, Version: version})
	n.prop = nil
}
