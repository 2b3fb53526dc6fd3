package confchange

import (
	"errors"
	"fmt"
)

// MsgType says what a message is.
type MsgType uint8

// The messages. Version is always the version being decided (the
// proposer's base + 1), except in catch-up messages.
const (
	// MsgPrepare, proposer to each voter of the base version: phase 1,
	// "promise me Version at Ballot".
	MsgPrepare MsgType = iota + 1
	// MsgPromise, voter to proposer: "I promised Ballot for Version; here
	// is the value I accepted for it, if any" (AcceptedBallot, Value).
	MsgPromise
	// MsgAccept, proposer to each voter: phase 2, "accept Value as Version
	// at Ballot".
	MsgAccept
	// MsgAccepted, voter to proposer: "I accepted your value at Ballot".
	MsgAccepted
	// MsgNack, voter to proposer: a refusal of Prepare or Accept at Ballot,
	// for Reason.
	MsgNack
	// MsgCommit, proposer to every member of the old and the new
	// configuration: "Value is committed as Version".
	MsgCommit
	// MsgCatchUpRequest, a node that knows it is behind to a peer that is
	// ahead: "I have Version; send me your committed configuration".
	MsgCatchUpRequest
	// MsgCatchUp: "Value is my committed configuration" (Version =
	// Value.Version). Configurations are whole, so one message brings a
	// node that is behind to the newest version.
	MsgCatchUp
	msgTypeEnd
)

var msgTypeNames = [...]string{"", "Prepare", "Promise", "Accept", "Accepted", "Nack", "Commit", "CatchUpRequest", "CatchUp"}

func (t MsgType) String() string {
	if t >= msgTypeEnd {
		return fmt.Sprintf("MsgType(%d)", uint8(t))
	}
	return msgTypeNames[t]
}

// NackReason says why a voter refused.
type NackReason uint8

const (
	// NackBallot: the voter promised a higher ballot (Promised) for this
	// version; the proposer retries later with a higher round.
	NackBallot NackReason = iota + 1
	// NackDecided: the voter already committed this version or a later one;
	// Value is its committed configuration (Committed = Value.Version). The
	// proposer's base is stale: it learns the configuration.
	NackDecided
	// NackBehind: the voter has not yet committed the proposer's base
	// (Committed is what it has); the proposer sends it a catch-up.
	NackBehind
	nackReasonEnd
)

var nackReasonNames = [...]string{"", "ballot", "decided", "behind"}

func (r NackReason) String() string {
	if r >= nackReasonEnd {
		return fmt.Sprintf("NackReason(%d)", uint8(r))
	}
	return nackReasonNames[r]
}

// Message is one protocol message. The daemon carries it between nodes
// (EncodeMessage/DecodeMessage give a wire format) over an authenticated
// transport: this package checks that every field is consistent, not who
// sent it. Fields a type does not use must be zero.
type Message struct {
	Type     MsgType
	From, To NodeID
	// Version: the version being decided (Prepare through Nack, Commit);
	// CatchUpRequest: the version the sender has; CatchUp: Value.Version.
	Version uint64
	// Ballot: the proposer's ballot (Prepare, Accept) or the one answered
	// (Promise, Accepted, Nack).
	Ballot Ballot
	// AcceptedBallot: in a Promise, the ballot at which the voter accepted
	// Value for Version (zero: it accepted nothing).
	AcceptedBallot Ballot
	// Value: a configuration (Promise with an accepted value, Accept,
	// Commit, CatchUp, Nack with NackDecided).
	Value Config
	// Reason, Promised, Committed: Nack only. Promised is the higher ballot
	// (NackBallot); Committed is the voter's committed version.
	Reason    NackReason
	Promised  Ballot
	Committed uint64
}

// errf makes a validation error.
func errf(format string, args ...any) error {
	return fmt.Errorf("confchange: bad message: "+format, args...)
}

// Validate checks a message's fields against each other and against the
// limits, without any node's state: a message that fails is garbage or
// forged and must be dropped. maxConfigBytes is the receiver's limit (0
// means MaxConfigBytes).
func (m *Message) Validate(maxConfigBytes int) error {
	if maxConfigBytes <= 0 || maxConfigBytes > MaxConfigBytes {
		maxConfigBytes = MaxConfigBytes
	}
	if m.Type == 0 || m.Type >= msgTypeEnd {
		return errf("unknown type %d", uint8(m.Type))
	}
	if m.From == 0 || m.To == 0 {
		return errf("%s from %d to %d: node ids start at 1", m.Type, m.From, m.To)
	}
	if m.From == m.To {
		return errf("%s from node %d to itself", m.Type, m.From)
	}
	if m.Version > MaxVersion {
		return errf("%s version %d is above %d", m.Type, m.Version, uint64(MaxVersion))
	}
	if err := m.Ballot.checkOptional(); err != nil {
		return errf("%s: %v", m.Type, err)
	}
	if err := m.AcceptedBallot.checkOptional(); err != nil {
		return errf("%s accepted ballot: %v", m.Type, err)
	}
	if err := m.Promised.checkOptional(); err != nil {
		return errf("%s promised ballot: %v", m.Type, err)
	}
	hasValue := !m.Value.IsZero()
	if hasValue {
		if err := m.Value.check(maxConfigBytes); err != nil {
			return errf("%s: %v", m.Type, err)
		}
	}
	// unused returns an error when a field the type does not use is set.
	unused := func(accepted, value, nack bool) error {
		if !accepted && !m.AcceptedBallot.IsZero() {
			return errf("%s carries an accepted ballot", m.Type)
		}
		if !value && hasValue {
			return errf("%s carries a configuration", m.Type)
		}
		if !nack && (m.Reason != 0 || !m.Promised.IsZero() || m.Committed != 0) {
			return errf("%s carries nack fields", m.Type)
		}
		return nil
	}
	switch m.Type {
	case MsgPrepare, MsgPromise, MsgAccept, MsgAccepted, MsgNack:
		// Version 1 is the one a cluster is created with; Paxos decides
		// versions from 2 on.
		if m.Version < 2 {
			return errf("%s for version %d: versions from 2 on are decided", m.Type, m.Version)
		}
		if err := m.Ballot.check(); err != nil {
			return errf("%s: %v", m.Type, err)
		}
		// The ballot names its proposer: the sender of a Prepare or Accept,
		// the receiver of an answer.
		proposer := m.To
		if m.Type == MsgPrepare || m.Type == MsgAccept {
			proposer = m.From
		}
		if m.Ballot.Proposer != proposer {
			return errf("%s ballot %s names proposer %d, not node %d", m.Type, m.Ballot, m.Ballot.Proposer, proposer)
		}
	}
	switch m.Type {
	case MsgPrepare, MsgAccepted:
		return unused(false, false, false)
	case MsgPromise:
		if err := unused(true, true, false); err != nil {
			return err
		}
		if m.AcceptedBallot.IsZero() != !hasValue {
			return errf("Promise: an accepted ballot and a value go together")
		}
		if hasValue {
			if m.Value.Version != m.Version {
				return errf("Promise for version %d carries version %d", m.Version, m.Value.Version)
			}
			// An acceptor accepts only at ballots it promised, and
			// promises only upwards.
			if m.Ballot.Less(m.AcceptedBallot) {
				return errf("Promise at %s reports a value accepted at the higher %s", m.Ballot, m.AcceptedBallot)
			}
		}
		return nil
	case MsgAccept:
		if err := unused(false, true, false); err != nil {
			return err
		}
		if !hasValue || m.Value.Version != m.Version {
			return errf("Accept for version %d must carry that version", m.Version)
		}
		return nil
	case MsgNack:
		if err := unused(false, true, true); err != nil {
			return err
		}
		switch m.Reason {
		case NackBallot:
			if hasValue || m.Committed != 0 {
				return errf("Nack (ballot) carries a configuration")
			}
			if !m.Ballot.Less(m.Promised) {
				return errf("Nack (ballot) of %s names promised %s, which is not higher", m.Ballot, m.Promised)
			}
		case NackDecided:
			if !m.Promised.IsZero() {
				return errf("Nack (decided) carries a promised ballot")
			}
			if !hasValue || m.Value.Version < m.Version || m.Committed != m.Value.Version {
				return errf("Nack (decided) for version %d must carry a committed configuration of that version or later", m.Version)
			}
		case NackBehind:
			if hasValue || !m.Promised.IsZero() {
				return errf("Nack (behind) carries a configuration or ballot")
			}
			if m.Committed+1 >= m.Version {
				return errf("Nack (behind) for version %d from a node at version %d", m.Version, m.Committed)
			}
		default:
			return errf("Nack with unknown reason %d", uint8(m.Reason))
		}
		return nil
	case MsgCommit, MsgCatchUp:
		if err := unused(false, true, false); err != nil {
			return err
		}
		if !m.Ballot.IsZero() {
			return errf("%s carries a ballot", m.Type)
		}
		if !hasValue || m.Value.Version != m.Version {
			return errf("%s for version %d must carry that version", m.Type, m.Version)
		}
		if m.Type == MsgCommit && m.Version < 2 {
			return errf("Commit for version %d: versions from 2 on are decided", m.Version)
		}
		return nil
	case MsgCatchUpRequest:
		if !m.Ballot.IsZero() {
			return errf("CatchUpRequest carries a ballot")
		}
		return unused(false, false, false)
	}
	return errors.New("confchange: unreachable message type")
}

// String is a one-line description for logs.
func (m Message) String() string {
	s := fmt.Sprintf("%s %d->%d v%d", m.Type, m.From, m.To, m.Version)
	if !m.Ballot.IsZero() {
		s += " b" + m.Ballot.String()
	}
	if !m.AcceptedBallot.IsZero() {
		s += " acc=" + m.AcceptedBallot.String()
	}
	if m.Type == MsgNack {
		s += " " + m.Reason.String()
		if !m.Promised.IsZero() {
			s += " promised=" + m.Promised.String()
		}
		s += fmt.Sprintf(" committed=v%d", m.Committed)
	}
	if !m.Value.IsZero() {
		s += " " + m.Value.String()
	}
	return s
}
