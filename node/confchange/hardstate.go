package confchange

import "fmt"

// HardState is what a node must find again after a crash: its committed
// configuration, its acceptor's promise and accepted value for the next
// version, and the highest ballot round it used as a proposer. Forgetting
// any of them can break safety: an acceptor that forgot a promise could
// accept an older ballot's value after telling a newer proposer it had
// none; one that forgot an accepted value could let a different value be
// chosen; a proposer that forgot its round could send two values under
// one ballot.
//
// The rule: when an Output carries a Persist record, write it durably
// (fsync, atomic replace; EncodeHardState gives a checksummed encoding)
// before sending any of that Output's messages, applying its
// configurations or reporting its results. A crash before the write then
// loses only things nobody has seen.
type HardState struct {
	// Committed is the newest committed configuration this node knows.
	// Version 0 (a zero Config) is a node that is joining and knows none
	// yet: it learns one from a Commit or a catch-up.
	Committed Config
	// Promised is the highest ballot this node's acceptor promised for
	// version Committed.Version+1 (zero: none).
	Promised Ballot
	// AcceptedBallot and Accepted: the value this node's acceptor accepted
	// for version Committed.Version+1, and at which ballot (both zero:
	// none).
	AcceptedBallot Ballot
	Accepted       Config
	// Round is the highest ballot round this node used as a proposer. A
	// restarted proposer starts above it, so it never reuses a ballot.
	Round uint64
}

// Bootstrap is the state of the node that creates a cluster: version 1 of
// the configuration, committed by fiat (there is no earlier version whose
// voters could decide it).
func Bootstrap(data []byte) HardState {
	return HardState{Committed: NewConfig(1, data)}
}

// Joining is the state of a node that starts with no configuration and
// learns one (from the Commit of the change that adds it, or a catch-up).
// A node that received the configuration by other means (the join RPC)
// may instead start from HardState{Committed: that configuration}.
func Joining() HardState { return HardState{} }

// check validates a state read back from disk.
func (hs *HardState) check(maxBytes int, members MembersFunc) error {
	if hs.Committed.IsZero() {
		if !hs.Promised.IsZero() || !hs.AcceptedBallot.IsZero() || !hs.Accepted.IsZero() {
			return fmt.Errorf("confchange: state has a promise or accepted value but no committed configuration")
		}
	} else {
		if err := hs.Committed.check(maxBytes); err != nil {
			return fmt.Errorf("confchange: committed: %w", err)
		}
		if _, err := decodeMembers(members, hs.Committed); err != nil {
			return fmt.Errorf("confchange: committed: %w", err)
		}
	}
	if err := hs.Promised.checkOptional(); err != nil {
		return fmt.Errorf("confchange: promised: %w", err)
	}
	if err := hs.AcceptedBallot.checkOptional(); err != nil {
		return fmt.Errorf("confchange: accepted ballot: %w", err)
	}
	if hs.AcceptedBallot.IsZero() != hs.Accepted.IsZero() {
		return fmt.Errorf("confchange: state has an accepted ballot without a value or the reverse")
	}
	if !hs.Accepted.IsZero() {
		if hs.Accepted.Version != hs.Committed.Version+1 {
			return fmt.Errorf("confchange: accepted version %d is not committed version %d + 1", hs.Accepted.Version, hs.Committed.Version)
		}
		if err := hs.Accepted.check(maxBytes); err != nil {
			return fmt.Errorf("confchange: accepted: %w", err)
		}
		if _, err := decodeMembers(members, hs.Accepted); err != nil {
			return fmt.Errorf("confchange: accepted: %w", err)
		}
		if hs.Promised.Less(hs.AcceptedBallot) {
			return fmt.Errorf("confchange: accepted ballot %s is above promised %s", hs.AcceptedBallot, hs.Promised)
		}
	}
	if hs.Round > MaxRound {
		return fmt.Errorf("confchange: round %d is above %d", hs.Round, uint64(MaxRound))
	}
	return nil
}

// decodeMembers reads and checks a configuration's members.
func decodeMembers(members MembersFunc, c Config) (Votes, error) {
	v, err := members(c.Data)
	if err != nil {
		return nil, fmt.Errorf("configuration version %d: %w", c.Version, err)
	}
	if err := checkVotes(v); err != nil {
		return nil, fmt.Errorf("configuration version %d: %w", c.Version, err)
	}
	return v, nil
}
