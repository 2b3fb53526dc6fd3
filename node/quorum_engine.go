package node

import (
	"errors"
	"fmt"

	"github.com/paddock-io/paddock/quorum"
	"github.com/paddock-io/paddock/quorum/membership"
)

// quorumEngine drives package quorum (votequorum as a pure state machine)
// from the daemon: membership with each peer's announced state in, the
// decision out, and this node's own state to announce in heartbeats.
type quorumEngine struct {
	m    *quorum.Machine
	self uint32
	// pending holds a configuration whose startup-only options differ:
	// corosync applies those at the next start, and so do we.
	pending bool
}

// quorumConfig is the quorum part of a cluster configuration.
func quorumConfig(cfg *ClusterConfig) (quorum.Config, error) {
	o := cfg.Quorum
	qc := quorum.Config{
		ExpectedVotes:           o.ExpectedVotes,
		TwoNode:                 o.TwoNode,
		WaitForAll:              o.WaitForAll,
		LastManStanding:         o.LastManStanding,
		LastManStandingWindowMs: o.LastManStandingWindowMs,
		AutoTieBreaker:          o.AutoTieBreaker,
	}
	for _, n := range cfg.Nodes {
		qc.Nodes = append(qc.Nodes, quorum.Node{ID: quorum.NodeID(n.ID), Name: n.Name, Votes: n.Votes})
	}
	if o.AutoTieBreakerNode != "" {
		tb, err := quorum.ParseTieBreaker(o.AutoTieBreakerNode)
		if err != nil {
			return qc, err
		}
		qc.AutoTieBreakerNode = tb
	}
	if w := o.Witness; w != nil {
		algo := quorum.WitnessAlgorithm(w.Algorithm)
		if algo == "" {
			algo = quorum.FFSplit
		}
		qc.Witness = &quorum.WitnessConfig{Algorithm: algo}
	}
	return qc, qc.Validate()
}

func newQuorumEngine(cfg *ClusterConfig, self uint32, nowMs int64) (*quorumEngine, error) {
	qc, err := quorumConfig(cfg)
	if err != nil {
		return nil, err
	}
	m, err := quorum.New(qc, quorum.NodeID(self), nowMs)
	if err != nil {
		return nil, err
	}
	return &quorumEngine{m: m, self: self}, nil
}

// validateQuorumOptions checks the quorum options of a configuration
// before it is proposed.
func (d *Daemon) validateQuorumOptions(cfg *ClusterConfig) error {
	_, err := quorumConfig(cfg)
	return err
}

// SetConfig switches to a newly committed configuration. Options corosync
// reads only at startup take effect at the next start of the node.
func (q *quorumEngine) SetConfig(cfg *ClusterConfig, nowMs int64) error {
	qc, err := quorumConfig(cfg)
	if err != nil {
		return err
	}
	err = q.m.Reconfigure(nowMs, qc)
	if errors.Is(err, quorum.ErrRestartRequired) {
		q.pending = true
		return fmt.Errorf("%w: it takes effect when this node restarts", err)
	}
	return err
}

// Update feeds the membership and what each member announced, without a
// witness vote.
func (q *quorumEngine) Update(nowMs int64, members []membership.MemberInfo) {
	q.UpdateWithWitness(nowMs, members, nil)
}

// UpdateWithWitness is Update with the membership the witness grants its
// vote for (nil: none).
func (q *quorumEngine) UpdateWithWitness(nowMs int64, members []membership.MemberInfo, witnessVoteFor []quorum.NodeID) {
	v := quorum.View{WitnessVoteFor: witnessVoteFor}
	for _, mi := range members {
		info := quorum.NodeInfo{}
		if uint32(mi.ID) != q.self {
			info = quorum.NodeInfo{
				ExpectedVotes: mi.ExpectedVotes,
				Quorate:       mi.Flags&membership.FlagQuorate != 0,
				WaitingForAll: mi.Flags&membership.FlagWaitingForAll != 0,
			}
		}
		v.Members = append(v.Members, quorum.Member{ID: quorum.NodeID(mi.ID), Info: info})
	}
	q.m.Update(nowMs, v)
}

// View is the decision in the daemon's terms.
func (q *quorumEngine) View(members []uint32) QuorumView {
	s := q.m.Status()
	return QuorumView{
		Quorate:         s.Quorate,
		ExpectedVotes:   s.ExpectedVotes,
		HighestExpected: s.HighestExpected,
		TotalVotes:      s.TotalVotes,
		Quorum:          s.Quorum,
		Flags:           s.Flags.Names(),
		Members:         members,
		Witness:         s.Witness,
	}
}

// LocalInfo is what this node announces in its heartbeats.
func (q *quorumEngine) LocalInfo() (flags, expectedVotes uint32) {
	s := q.m.Status()
	if s.Quorate {
		flags |= membership.FlagQuorate
	}
	if s.WaitingForAll {
		flags |= membership.FlagWaitingForAll
	}
	return flags, s.ExpectedVotes
}

// SetExpected is the "pvecm expected" lever.
func (q *quorumEngine) SetExpected(nowMs int64, votes uint32) (string, error) {
	r, err := q.m.SetExpected(nowMs, votes)
	if err != nil {
		return "", err
	}
	return r.Warning, nil
}
