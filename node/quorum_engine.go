package node

import (
	"errors"
	"fmt"
)

// quorumEngine is the part of votequorum the daemon drives: membership in,
// the quorum view out.
type quorumEngine interface {
	// SetConfig switches to a newly committed configuration.
	SetConfig(cfg *ClusterConfig) error
	// Update feeds the current membership (node ids, self included).
	Update(nowMs int64, members []uint32)
	// View is the current decision.
	View() QuorumView
	// SetExpected is the "pvecm expected" lever; it returns a warning.
	SetExpected(votes uint32) (string, error)
}

// basicVotequorum implements votequorum's core rules (votequorum(5)):
// quorum = max(highest expected, total votes)/2 + 1; expected votes rise
// when the votes present exceed them and never fall on their own;
// two_node (quorum 1 with two nodes, wait_for_all on unless set off);
// wait_for_all (inquorate until every expected vote was present at once);
// and the expected-votes override.
//
// It refuses the options it does not implement (last_man_standing,
// auto_tie_breaker, a witness) rather than ignore them.
type basicVotequorum struct {
	votes           map[uint32]uint32
	nodes           int
	configExpected  uint32
	highestExpected uint32
	twoNode         bool
	waitForAll      bool
	wfaSatisfied    bool
	view            QuorumView
}

func newQuorumEngine(cfg *ClusterConfig, self uint32) (quorumEngine, error) {
	q := &basicVotequorum{}
	if err := q.SetConfig(cfg); err != nil {
		return nil, err
	}
	return q, nil
}

// validateQuorumOptions checks the quorum options of a configuration
// before it is proposed.
func (d *Daemon) validateQuorumOptions(cfg *ClusterConfig) error {
	return (&basicVotequorum{}).SetConfig(cfg)
}

func (q *basicVotequorum) SetConfig(cfg *ClusterConfig) error {
	o := cfg.Quorum
	switch {
	case o.LastManStanding:
		return errors.New("last_man_standing is not supported by this build yet")
	case o.AutoTieBreaker:
		return errors.New("auto_tie_breaker is not supported by this build yet")
	case o.Witness != nil:
		return errors.New("a witness is not supported by this build yet")
	case o.TwoNode && len(cfg.Nodes) > 2:
		// corosync turns two_node off when a third node is configured.
	}
	votes := map[uint32]uint32{}
	var sum uint32
	for _, n := range cfg.Nodes {
		votes[n.ID] = n.Votes
		sum += n.Votes
	}
	expected := o.ExpectedVotes
	if expected == 0 {
		expected = sum
	}
	q.votes = votes
	q.nodes = len(cfg.Nodes)
	q.configExpected = expected
	// A new configuration resets expected votes to what it says (as a
	// corosync.conf reload does); they rise again with the votes seen.
	q.highestExpected = expected
	q.twoNode = o.TwoNode && len(cfg.Nodes) <= 2
	q.waitForAll = q.twoNode
	if o.WaitForAll != nil {
		q.waitForAll = *o.WaitForAll
	}
	return nil
}

func (q *basicVotequorum) quorumFor(total uint32) uint32 {
	if q.twoNode {
		return 1
	}
	return max(q.highestExpected, total)/2 + 1
}

func (q *basicVotequorum) Update(nowMs int64, members []uint32) {
	var total uint32
	var present []uint32
	for _, m := range members {
		if v, ok := q.votes[m]; ok {
			total += v
			present = append(present, m)
		}
	}
	if total > q.highestExpected {
		q.highestExpected = total
	}
	if total >= q.highestExpected {
		q.wfaSatisfied = true
	}
	quorum := q.quorumFor(total)
	quorate := total >= quorum && (!q.waitForAll || q.wfaSatisfied)
	var flags []string
	if quorate {
		flags = append(flags, "Quorate")
	}
	if q.twoNode {
		flags = append(flags, "2Node")
	}
	if q.waitForAll {
		flags = append(flags, "WaitForAll")
	}
	q.view = QuorumView{
		Quorate:         quorate,
		ExpectedVotes:   q.highestExpected,
		HighestExpected: q.highestExpected,
		TotalVotes:      total,
		Quorum:          quorum,
		Flags:           flags,
		Members:         present,
	}
}

func (q *basicVotequorum) View() QuorumView { return q.view }

// SetExpected lowers (or raises) expected votes by hand. corosync refuses
// a value below the votes present and one that would make a quorate
// cluster inquorate.
func (q *basicVotequorum) SetExpected(votes uint32) (string, error) {
	total := q.view.TotalVotes
	if votes < total {
		return "", fmt.Errorf("expected votes %d is below the %d votes present", votes, total)
	}
	newQuorum := max(votes, total)/2 + 1
	if q.twoNode {
		newQuorum = 1
	}
	if q.view.Quorate && total < newQuorum {
		return "", fmt.Errorf("expected votes %d would make this quorate partition inquorate (quorum %d, %d votes present)", votes, newQuorum, total)
	}
	q.highestExpected = votes
	q.wfaSatisfied = true
	q.Update(0, q.view.Members)
	return "expected votes were set by hand: if the missing nodes are alive on the other side of a broken network, both sides may now act (split brain). Do this only when you know they are down.", nil
}
