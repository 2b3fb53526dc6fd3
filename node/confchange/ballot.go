package confchange

import "fmt"

// Ballot numbers a proposer's attempt at deciding one version. Ballots are
// totally ordered, by round and then by proposer id, and no two proposers
// ever use the same one (the id is part of it); one proposer never uses the
// same round twice, even across restarts, because it persists the highest
// round it used (HardState.Round) before sending anything under it. So a
// ballot names at most one value.
type Ballot struct {
	Round    uint64
	Proposer NodeID
}

// IsZero says whether b is "no ballot", lower than every real ballot.
func (b Ballot) IsZero() bool { return b == Ballot{} }

// Less orders ballots: by round, then by proposer id.
func (b Ballot) Less(o Ballot) bool {
	if b.Round != o.Round {
		return b.Round < o.Round
	}
	return b.Proposer < o.Proposer
}

// String is "<round>.<proposer>", or "-" for no ballot.
func (b Ballot) String() string {
	if b.IsZero() {
		return "-"
	}
	return fmt.Sprintf("%d.%d", b.Round, b.Proposer)
}

// check validates a ballot that must be real.
func (b Ballot) check() error {
	if b.Round == 0 || b.Round > MaxRound {
		return fmt.Errorf("ballot round %d is outside 1..%d", b.Round, uint64(MaxRound))
	}
	if b.Proposer == 0 {
		return fmt.Errorf("ballot %s has no proposer", b)
	}
	return nil
}

// checkOptional validates a ballot that may be zero.
func (b Ballot) checkOptional() error {
	if b.IsZero() {
		return nil
	}
	return b.check()
}
