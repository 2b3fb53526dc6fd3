package confchange

// The acceptor: every node runs one; it matters when the committed
// configuration gives the node votes. It keeps Paxos state for exactly one
// version, the next one (Committed.Version+1):
//
//   - Prepare(b): if b is not below its promise, it promises b (persisted)
//     and reports the value it accepted for the version, if any.
//   - Accept(b, value): if b is not below its promise, it accepts the
//     value at b (persisted).
//
// Equal ballots are answered again (a duplicate or retransmitted message
// gets the same answer). A message for a version it has committed gets its
// committed configuration back (the proposer is stale); one for a version
// beyond the next gets "behind" (the proposer sends a catch-up). Once the
// node learns that the next version is committed, the old promise and
// value are forgotten: no proposer can need them any more, because the
// acceptor never again answers for that version except with the committed
// configuration.

// nackIfNotNext answers a Prepare or Accept that is not for the next
// version, and says whether it did.
func (n *Node) nackIfNotNext(m Message) bool {
	c := n.hs.Committed.Version
	switch {
	case c > 0 && m.Version <= c:
		n.send(Message{Type: MsgNack, To: m.From, Version: m.Version, Ballot: m.Ballot,
			Reason: NackDecided, Value: n.hs.Committed, Committed: c})
	case m.Version > c+1:
		n.send(Message{Type: MsgNack, To: m.From, Version: m.Version, Ballot: m.Ballot,
			Reason: NackBehind, Committed: c})
	default:
		return false
	}
	return true
}

func (n *Node) nackBallot(m Message) {
	n.send(Message{Type: MsgNack, To: m.From, Version: m.Version, Ballot: m.Ballot,
		Reason: NackBallot, Promised: n.hs.Promised})
}

func (n *Node) onPrepare(m Message) {
	if n.nackIfNotNext(m) {
		return
	}
	if m.Ballot.Less(n.hs.Promised) {
		n.nackBallot(m)
		return
	}
	if n.hs.Promised != m.Ballot {
		n.hs.Promised = m.Ballot
		n.dirty = true
	}
	n.send(Message{Type: MsgPromise, To: m.From, Version: m.Version, Ballot: m.Ballot,
		AcceptedBallot: n.hs.AcceptedBallot, Value: n.hs.Accepted})
}

func (n *Node) onAccept(m Message) {
	if n.nackIfNotNext(m) {
		return
	}
	if m.Ballot.Less(n.hs.Promised) {
		n.nackBallot(m)
		return
	}
	if n.hs.Promised != m.Ballot || n.hs.AcceptedBallot != m.Ballot {
		n.hs.Promised = m.Ballot
		n.hs.AcceptedBallot = m.Ballot
		n.hs.Accepted = m.Value
		n.dirty = true
	}
	n.send(Message{Type: MsgAccepted, To: m.From, Version: m.Version, Ballot: m.Ballot})
}
