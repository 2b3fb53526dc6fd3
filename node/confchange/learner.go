package confchange

import "errors"

// The learner: every node applies committed configurations, in increasing
// version order, from a Commit, a catch-up, or the committed configuration
// a voter sends back to a stale proposer. A configuration is whole (not a
// delta), so a node that is behind by several versions goes to the newest
// in one step; a node never applies a version at or below the one it has,
// and never a different configuration for a version it has (check refuses
// that message).

// learn applies a committed configuration if it is newer than ours.
func (n *Node) learn(c Config, members Votes) {
	if c.Version <= n.hs.Committed.Version {
		return // a duplicate, or older news
	}
	n.apply(c, members)
}

// apply makes c the committed configuration. The acceptor's promise and
// value were for the version just committed (or an older one): forgotten.
func (n *Node) apply(c Config, members Votes) {
	n.hs.Committed = c
	n.hs.Promised = Ballot{}
	n.hs.AcceptedBallot = Ballot{}
	n.hs.Accepted = Config{}
	n.members = members
	n.dirty = true
	n.out.Applied = append(n.out.Applied, c)
	if p := n.prop; p != nil && c.Version >= p.own.Version {
		switch {
		case c.Version > p.own.Version:
			n.finishProposal(Superseded, c.Version)
		case c.Digest == p.own.Digest:
			n.finishProposal(Committed, c.Version)
		default:
			n.finishProposal(Lost, c.Version)
		}
	}
}

func (n *Node) onCatchUpRequest(m Message) {
	c := n.hs.Committed
	// The budget bounds what a flood of requests can cost; an honest node
	// asks at most once per RetryTicks.
	if c.Version <= m.Version || n.servedThisTick >= maxServedPerTick {
		return
	}
	n.servedThisTick++
	n.send(Message{Type: MsgCatchUp, To: m.From, Version: c.Version, Value: c})
}

// ObservePeerVersion tells the node that a peer runs a configuration
// version (the daemon's heartbeats carry it). If the peer is ahead, the
// node asks it for its committed configuration, at most once per
// RetryTicks.
func (n *Node) ObservePeerVersion(peer NodeID, version uint64) (Output, error) {
	if peer == 0 || peer == n.opts.ID {
		return Output{}, errors.New("confchange: peer version from node 0 or from this node")
	}
	if version > MaxVersion {
		return Output{}, errors.New("confchange: peer version out of range")
	}
	if version > n.hs.Committed.Version && (!n.asked || n.nowTicks-n.askedTicks >= int64(n.opts.RetryTicks)) {
		n.asked, n.askedTicks = true, n.nowTicks
		n.send(Message{Type: MsgCatchUpRequest, To: peer, Version: n.hs.Committed.Version})
	}
	return n.finishInput(), nil
}
