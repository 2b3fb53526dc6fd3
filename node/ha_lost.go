package node

import "slices"

// lostNodes decides which nodes of the configuration this node counts as
// lost, and since when: a pure state machine fed by the HA agent's tick.
//
//   - An inquorate node counts no one lost (it never acts) and forgets
//     what it counted.
//   - A node seen as a member since this node started is lost from the
//     first tick it is missing.
//   - A node never seen is lost only once this node has been quorate for
//     settleTokens token timeouts: a node that has just started hears the
//     others one by one, and before this rule it fenced a healthy primary
//     whose first heartbeat came 13 ms after the node's partition turned
//     quorate (found by paddock bench failover).
type lostNodes struct {
	lostAt       map[uint32]int64 // ms
	seen         map[uint32]bool
	quorateSince int64 // ms; 0 while inquorate
}

// settleTokens is how many token timeouts a newly quorate node waits
// before it counts a node it has never seen as lost (every live node's
// heartbeats arrive within one).
const settleTokens = 2

func newLostNodes() lostNodes {
	return lostNodes{lostAt: map[uint32]int64{}, seen: map[uint32]bool{}}
}

// observe takes one look at the membership and returns the nodes that
// were counted lost and are members again.
func (l *lostNodes) observe(nowMs int64, quorate bool, members []uint32, nodes []NodeConfig, tokenMs int64) (back []uint32) {
	for _, id := range members {
		l.seen[id] = true
	}
	if !quorate {
		clear(l.lostAt)
		l.quorateSince = 0
		return nil
	}
	if l.quorateSince == 0 {
		l.quorateSince = nowMs
	}
	settled := nowMs-l.quorateSince >= settleTokens*tokenMs
	for _, n := range nodes {
		if slices.Contains(members, n.ID) {
			if _, ok := l.lostAt[n.ID]; ok {
				back = append(back, n.ID)
				delete(l.lostAt, n.ID)
			}
			continue
		}
		if _, ok := l.lostAt[n.ID]; !ok && (l.seen[n.ID] || settled) {
			l.lostAt[n.ID] = nowMs
		}
	}
	return back
}
