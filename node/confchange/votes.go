package confchange

import (
	"errors"
	"fmt"
	"sort"
)

// Votes maps the members of a configuration to their votes. A member with
// 0 votes is a learner: it receives every committed configuration and may
// propose, but it does not decide.
type Votes map[NodeID]uint32

// MembersFunc reads the members and their votes out of a configuration's
// data. It must be deterministic (every node must read the same votes out
// of the same data) and must return an error for data it cannot read: a
// configuration it refuses is never accepted or applied.
type MembersFunc func(data []byte) (Votes, error)

// QuorumFunc returns the votes a change of the configuration with these
// voters needs. The daemon passes votequorum's quorum value (which exceeds
// a majority when expected votes exceed the voters' votes). The package
// never needs less than a strict majority of the voters' votes, whatever
// this returns: see Need.
type QuorumFunc func(voters Votes) uint64

// Total is the sum of the votes.
func (v Votes) Total() uint64 {
	var t uint64
	for _, n := range v {
		t += uint64(n)
	}
	return t
}

// Voters is the members that have votes.
func (v Votes) Voters() Votes {
	out := Votes{}
	for id, n := range v {
		if n > 0 {
			out[id] = n
		}
	}
	return out
}

// IDs is the members in increasing id order (so that every output is
// deterministic).
func (v Votes) IDs() []NodeID {
	ids := make([]NodeID, 0, len(v))
	for id := range v {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func (v Votes) clone() Votes {
	out := make(Votes, len(v))
	for id, n := range v {
		out[id] = n
	}
	return out
}

// checkVotes validates what a MembersFunc returned.
func checkVotes(v Votes) error {
	if len(v) > MaxMembers {
		return fmt.Errorf("%d members; at most %d", len(v), MaxMembers)
	}
	for _, id := range v.IDs() {
		if id == 0 {
			return errors.New("a member has id 0")
		}
		if v[id] > MaxVotes {
			return fmt.Errorf("node %d has %d votes; at most %d", id, v[id], MaxVotes)
		}
	}
	if v.Total() == 0 {
		return errors.New("no member has a vote")
	}
	return nil
}

// Majority is the strict majority of the voters' votes: total/2 + 1, the
// votequorum formula with expected votes equal to the total.
func Majority(voters Votes) uint64 { return voters.Total()/2 + 1 }

// ErrQuorumUnreachable: the quorum asked for exceeds the voters' votes,
// so no change can commit (votequorum is then inquorate too).
var ErrQuorumUnreachable = errors.New("confchange: the quorum exceeds the voters' votes; no change can commit")

// Need is the votes a change of a configuration with these voters needs:
// the larger of a strict majority of their votes and what q asks. The
// majority floor is what makes any two quorums of the same voters share a
// voter (two sets each holding more than half of the same votes cannot be
// disjoint), so safety does not depend on the daemon's quorum function: it
// may raise the bar, never lower it. That is also why two_node or a
// lowered expected-votes value, which let votequorum call one node of two
// quorate, do not let that node change the configuration alone: with two
// voters both must agree (add the witness as a voter to break ties).
func Need(voters Votes, q QuorumFunc) (uint64, error) {
	total := voters.Total()
	need := total/2 + 1
	if q != nil {
		if asked := q(voters.clone()); asked > need {
			need = asked
		}
	}
	if need > total {
		return 0, fmt.Errorf("%w (need %d of %d)", ErrQuorumUnreachable, need, total)
	}
	return need, nil
}

// VoterChangeError refuses a change of the voters that is too large for
// one step.
type VoterChangeError struct {
	Changed []NodeID // the nodes whose votes differ
	Reason  string
}

func (e *VoterChangeError) Error() string {
	return fmt.Sprintf("confchange: change of the votes of node(s) %v refused: %s", e.Changed, e.Reason)
}

// CheckVoterChange says whether the voters may change from old to new in
// one version. A change may touch the votes of at most one node (add a
// voter, remove one, or change one node's votes), and then only if every
// strict-majority quorum of the old votes shares a voter with every
// strict-majority quorum of the new ones. The test for that is the
// pigeonhole: count every node at the larger of its old and new votes; if
// the two quorums together need more than that count, they overlap. For
// one-vote nodes this allows exactly "one node at a time"; with weights it
// forces a vote change in small steps (from {1,1,1}, node 1 goes to 3
// votes through 2).
//
// This package's own safety does not need the rule (version v+1 is decided
// by v's voters alone, see the package doc). The daemon's quorum does:
// while v+1 travels, some nodes compute votequorum from v and others from
// v+1, and two partitions must not both be quorate in that window.
func CheckVoterChange(old, new Votes) error {
	var changed []NodeID
	seen := map[NodeID]bool{}
	for _, v := range []Votes{old, new} {
		for _, id := range v.IDs() {
			if !seen[id] && old[id] != new[id] {
				changed = append(changed, id)
			}
			seen[id] = true
		}
	}
	sort.Slice(changed, func(i, j int) bool { return changed[i] < changed[j] })
	if len(changed) == 0 {
		return nil
	}
	if new.Total() == 0 {
		return &VoterChangeError{Changed: changed, Reason: "no voter would be left"}
	}
	if len(changed) > 1 {
		return &VoterChangeError{Changed: changed, Reason: "change the votes of one node at a time"}
	}
	var both uint64
	for id := range seen {
		both += uint64(max(old[id], new[id]))
	}
	qOld, qNew := old.Total()/2+1, new.Total()/2+1
	if qOld+qNew <= both {
		id := changed[0]
		return &VoterChangeError{Changed: changed, Reason: fmt.Sprintf(
			"node %d from %d to %d votes in one step would let a quorum of the old votes (%d of %d) and one of the new (%d of %d) be disjoint; change its votes in smaller steps",
			id, old[id], new[id], qOld, old.Total(), qNew, new.Total())}
	}
	return nil
}
