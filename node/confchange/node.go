package confchange

import (
	"errors"
	"fmt"
)

// Options configure a Node.
type Options struct {
	// ID is this node's id (not 0).
	ID NodeID
	// Members reads members and votes out of configuration data
	// (required).
	Members MembersFunc
	// Quorum, if set, may raise the votes a change needs above a strict
	// majority (see Need). nil: a strict majority.
	Quorum QuorumFunc
	// MaxConfigBytes lowers the configuration size limit (0: MaxConfigBytes).
	MaxConfigBytes int
	// RetryTicks: a phase that has not reached its quorum after this many
	// ticks starts again at a higher ballot; later retries back off
	// exponentially up to MaxBackoffTicks, plus a jitter below RetryTicks
	// so that two duelling proposers drift apart. 0: the defaults.
	RetryTicks      int
	MaxBackoffTicks int
	// ProposalTimeoutTicks: a proposal not decided within this many ticks
	// reports TimedOut. 0: DefaultProposalTimeoutTicks.
	ProposalTimeoutTicks int
	// Seed seeds the jitter (0: derived from ID). There is no other
	// randomness: the same inputs give the same outputs.
	Seed uint64
}

// Outcome is how a proposal ended.
type Outcome uint8

const (
	// Committed: the proposed configuration is committed as Version.
	Committed Outcome = iota + 1
	// Lost: another configuration was committed as Version, concurrently
	// (possibly by this very proposer, which found it accepted in phase 1
	// and had to finish it instead of its own). Retry the change on top of
	// Version.
	Lost
	// Superseded: the cluster committed Version, beyond the one proposed,
	// before this node learned what was committed at the proposed one.
	// Read the current configuration: the change may or may not be in it.
	Superseded
	// TimedOut: no decision within the timeout. The change may still
	// commit later (a voter may have accepted it, and the next proposer
	// would then finish it): watch Applied.
	TimedOut
)

func (o Outcome) String() string {
	switch o {
	case Committed:
		return "committed"
	case Lost:
		return "lost"
	case Superseded:
		return "superseded"
	case TimedOut:
		return "timed out"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Result reports the end of a proposal this node started.
type Result struct {
	ID      uint64 // as returned by Propose
	Outcome Outcome
	// Version: the version decided (Committed, Lost), the newest committed
	// (Superseded), or the one that was being decided (TimedOut).
	Version uint64
}

// Output is what one input produced, in the order the daemon must handle
// it (as etcd-io/raft's Ready):
//
//  1. Persist, if not nil: write it durably; only then
//  2. send Messages (any order, any transport; losing some is fine),
//  3. use Applied (each is also in Persist.Committed already): the new
//     configurations, in increasing version order,
//  4. report Results to whoever proposed.
//
// Slices in an Output are the caller's; configuration Data is shared and
// must not be modified.
type Output struct {
	Persist  *HardState
	Messages []Message
	Applied  []Config
	Results  []Result
}

// IsEmpty says whether there is nothing to do.
func (o *Output) IsEmpty() bool {
	return o.Persist == nil && len(o.Messages) == 0 && len(o.Applied) == 0 && len(o.Results) == 0
}

// Errors of Propose. None of them changes anything.
var (
	ErrInquorate = errors.New("confchange: this node is not quorate: the configuration is read-only")
	ErrBusy      = errors.New("confchange: a proposal is already in flight on this node")
	ErrNoConfig  = errors.New("confchange: this node has no committed configuration yet")
	ErrNotMember = errors.New("confchange: this node is not a member of the committed configuration")
)

// StaleError: the proposal's base is not this node's committed version.
type StaleError struct {
	Base, Committed uint64
}

func (e *StaleError) Error() string {
	return fmt.Sprintf("confchange: base version %d is stale: the committed version is %d", e.Base, e.Committed)
}

// Node is one node's part of the protocol: an acceptor (which matters when
// the committed configuration gives the node votes), a proposer (at most
// one proposal at a time) and a learner. It does no I/O, reads no clock
// and starts no goroutine; it is not safe for concurrent use.
type Node struct {
	opts    Options
	hs      HardState
	members Votes // of hs.Committed; nil while joining
	dirty   bool  // hs changed since the last Output

	nowTicks       int64
	prop           *proposal
	lastProposalID uint64
	// seenRound is the highest round seen in a refusal; the next attempt
	// goes above it. Volatile: after a restart, refusals teach it again.
	seenRound uint64
	rng       uint64

	askedTicks     int64 // when a catch-up was last asked for
	asked          bool
	servedThisTick int // catch-up replies sent in this tick

	local []Message // messages to self, delivered before the input returns
	out   Output
}

// New makes a node from its options and the state it persisted (Bootstrap
// or Joining for a new node). A state that does not check out is refused.
func New(opts Options, hs HardState) (*Node, error) {
	if opts.ID == 0 {
		return nil, errors.New("confchange: node id 0")
	}
	if opts.Members == nil {
		return nil, errors.New("confchange: Options.Members is required")
	}
	if opts.MaxConfigBytes == 0 {
		opts.MaxConfigBytes = MaxConfigBytes
	}
	if opts.MaxConfigBytes < 0 || opts.MaxConfigBytes > MaxConfigBytes {
		return nil, fmt.Errorf("confchange: MaxConfigBytes %d is outside 1..%d", opts.MaxConfigBytes, MaxConfigBytes)
	}
	if opts.RetryTicks == 0 {
		opts.RetryTicks = DefaultRetryTicks
	}
	if opts.MaxBackoffTicks == 0 {
		opts.MaxBackoffTicks = max(DefaultMaxBackoffTicks, opts.RetryTicks)
	}
	if opts.ProposalTimeoutTicks == 0 {
		opts.ProposalTimeoutTicks = DefaultProposalTimeoutTicks
	}
	for _, t := range []struct {
		name string
		v    int
	}{{"RetryTicks", opts.RetryTicks}, {"MaxBackoffTicks", opts.MaxBackoffTicks}, {"ProposalTimeoutTicks", opts.ProposalTimeoutTicks}} {
		if t.v < 1 || t.v > maxTimerTicks {
			return nil, fmt.Errorf("confchange: %s %d is outside 1..%d", t.name, t.v, maxTimerTicks)
		}
	}
	if opts.MaxBackoffTicks < opts.RetryTicks {
		return nil, fmt.Errorf("confchange: MaxBackoffTicks %d is below RetryTicks %d", opts.MaxBackoffTicks, opts.RetryTicks)
	}
	if err := hs.check(opts.MaxConfigBytes, opts.Members); err != nil {
		return nil, err
	}
	n := &Node{opts: opts, hs: hs, rng: opts.Seed}
	if n.rng == 0 {
		n.rng = uint64(opts.ID) * 0x9e3779b97f4a7c15
	}
	if !hs.Committed.IsZero() {
		n.members, _ = decodeMembers(opts.Members, hs.Committed) // checked above
	}
	return n, nil
}

// Step hands the node a message from a peer. A message that fails
// validation (garbage, forged, or contradicting what this node knows is
// committed) returns an error and changes nothing; one that is merely old
// or unsolicited (a late reply, a duplicate) is ignored without error.
func (n *Node) Step(m Message) (Output, error) {
	vm, err := n.check(&m)
	if err != nil {
		return Output{}, err
	}
	n.handle(m, vm)
	return n.finishInput(), nil
}

// Tick advances the node's virtual time by one tick: proposals retry and
// time out on ticks.
func (n *Node) Tick() Output {
	n.nowTicks++
	n.servedThisTick = 0
	n.tickProposal()
	return n.finishInput()
}

// Committed is the newest committed configuration this node knows (zero
// while joining).
func (n *Node) Committed() Config { return n.hs.Committed }

// Members is the members and votes of the committed configuration (nil
// while joining).
func (n *Node) Members() Votes {
	if n.members == nil {
		return nil
	}
	return n.members.clone()
}

// check validates a message against the limits and against this node's
// state, and reads the members of the configuration it carries.
func (n *Node) check(m *Message) (Votes, error) {
	if err := m.Validate(n.opts.MaxConfigBytes); err != nil {
		return nil, err
	}
	if m.To != n.opts.ID {
		return nil, errf("%s for node %d reached node %d", m.Type, m.To, n.opts.ID)
	}
	var vm Votes
	if !m.Value.IsZero() {
		var err error
		if vm, err = decodeMembers(n.opts.Members, m.Value); err != nil {
			return nil, errf("%s: %v", m.Type, err)
		}
	}
	c := n.hs.Committed
	switch m.Type {
	case MsgCommit, MsgCatchUp, MsgNack:
		// A committed configuration of our own version must be ours: two
		// different ones would mean the protocol failed or the message is
		// forged. Refuse it rather than follow it.
		if !m.Value.IsZero() && c.Version > 0 && m.Value.Version == c.Version && m.Value.Digest != c.Digest {
			return nil, errf("%s says %s is committed, but %s is", m.Type, m.Value, c)
		}
	case MsgPrepare, MsgAccept:
		if c.Version > 0 && m.Version == c.Version+1 {
			// Only members propose on top of our committed version.
			if _, ok := n.members[m.From]; !ok {
				return nil, errf("%s for version %d from node %d, not a member of version %d", m.Type, m.Version, m.From, c.Version)
			}
			if m.Type == MsgAccept {
				// The proposer checked this too; an acceptor does not
				// take its word for it.
				if err := CheckVoterChange(n.members.Voters(), vm.Voters()); err != nil {
					return nil, errf("Accept of %s: %v", m.Value, err)
				}
				if n.hs.AcceptedBallot == m.Ballot && n.hs.Accepted.Digest != m.Value.Digest {
					return nil, errf("Accept of %s at %s, which already named %s", m.Value, m.Ballot, n.hs.Accepted)
				}
			}
		}
	}
	return vm, nil
}

// handle dispatches a valid message. vm is the members of m.Value.
func (n *Node) handle(m Message, vm Votes) {
	switch m.Type {
	case MsgPrepare:
		n.onPrepare(m)
	case MsgAccept:
		n.onAccept(m)
	case MsgPromise:
		n.onPromise(m)
	case MsgAccepted:
		n.onAccepted(m)
	case MsgNack:
		n.onNack(m, vm)
	case MsgCommit, MsgCatchUp:
		n.learn(m.Value, vm)
	case MsgCatchUpRequest:
		n.onCatchUpRequest(m)
	}
}

// send queues a message; one to this node itself is delivered in-process
// before the input returns (its effects land in the same Persist record,
// which is written before any message leaves, so nothing a peer sees can
// rest on an unpersisted promise).
func (n *Node) send(m Message) {
	m.From = n.opts.ID
	if m.To == m.From {
		n.local = append(n.local, m)
		return
	}
	n.out.Messages = append(n.out.Messages, m)
}

// finishInput delivers messages to self and returns the Output.
func (n *Node) finishInput() Output {
	for i := 0; len(n.local) > 0; i++ {
		if i >= maxLocalSteps {
			// Cannot happen (each local message makes at most one local
			// reply, four at most in a row); if it did, dropping the rest
			// is a lost message, which the protocol survives.
			n.local = nil
			break
		}
		m := n.local[0]
		n.local = n.local[1:]
		var vm Votes
		if !m.Value.IsZero() {
			vm, _ = decodeMembers(n.opts.Members, m.Value) // our own, checked when made
		}
		n.handle(m, vm)
	}
	n.local = nil
	out := n.out
	n.out = Output{}
	if n.dirty {
		hs := n.hs
		out.Persist = &hs
		n.dirty = false
	}
	return out
}

// rand is splitmix64: deterministic jitter, no global state.
func (n *Node) rand() uint64 {
	n.rng += 0x9e3779b97f4a7c15
	z := n.rng
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// Status is a snapshot of the node's state, for status output and tests.
type Status struct {
	ID             NodeID
	NowTicks       int64
	Committed      uint64
	Digest         Digest
	Promised       Ballot
	AcceptedBallot Ballot
	Accepted       uint64 // version of the accepted value (0: none)
	AcceptedDigest Digest
	Proposal       *ProposalStatus
}

// ProposalStatus describes the proposal in flight.
type ProposalStatus struct {
	ID      uint64
	Version uint64 // being decided
	Ballot  Ballot
	Phase   string // "prepare", "accept", or "backoff" (waiting to retry)
	Attempt int
	// Adopted: phase 2 carries another proposer's accepted value, not
	// this proposal's (which has then lost).
	Adopted      bool
	StartedTicks int64
}

// Status reports the node's state.
func (n *Node) Status() Status {
	s := Status{
		ID: n.opts.ID, NowTicks: n.nowTicks,
		Committed: n.hs.Committed.Version, Digest: n.hs.Committed.Digest,
		Promised: n.hs.Promised, AcceptedBallot: n.hs.AcceptedBallot,
		Accepted: n.hs.Accepted.Version, AcceptedDigest: n.hs.Accepted.Digest,
	}
	if p := n.prop; p != nil {
		s.Proposal = &ProposalStatus{
			ID: p.id, Version: p.own.Version, Ballot: p.ballot, Phase: p.phase.String(),
			Attempt: p.attempt, Adopted: p.phase == phaseAccept && p.value.Digest != p.own.Digest,
			StartedTicks: p.startTicks,
		}
	}
	return s
}
