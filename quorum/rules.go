package quorum

import "slices"

// This file holds the votequorum rules proper. Each function names the
// function of corosync's exec/votequorum.c it follows; doc.go says the
// rules in words.

// syncInit handles a membership change (votequorum_sync_init): it notes
// whether a node left, arms the last_man_standing timer, and remembers the
// previous membership for the auto_tie_breaker checks.
func (m *Machine) syncInit(ids []NodeID) {
	left := false
	for _, id := range m.ring {
		if !slices.Contains(ids, id) {
			left = true
		}
	}
	if m.r.lms {
		// The old quorum is compared with the new member count: after a
		// loss that still leaves a quorum of nodes, or when a partition
		// of no more than quorum holds the lowest node with
		// auto_tie_breaker (that is how LMS and ATB take a cluster from
		// two nodes down to one). Arming again restarts the window.
		n := len(ids)
		q := int(m.quorum)
		stayed := intersect(ids, m.members())
		if (n >= q && left) || (n <= q && m.r.atb && m.lowestSeen != 0 && slices.Contains(stayed, m.lowestSeen)) {
			m.lmsTimerSet = true
			m.lmsDeadlineMs = m.nowMs + m.r.lmsWindowMs
		}
	}
	m.previous = m.ring
	m.ring = ids
	// Every member resends its nodeinfo at sync: process all again.
	clear(m.peerSeen)
	clear(m.peerExpected)
}

// nodeinfo handles a peer's NodeInfo
// (message_handler_req_exec_votequorum_nodeinfo).
func (m *Machine) nodeinfo(id NodeID, info NodeInfo) {
	valid := info.ExpectedVotes >= 1 && info.ExpectedVotes <= MaxExpectedVotes
	quorate := valid && info.Quorate
	allowDecrease := false
	if !m.quorate && quorate {
		// An inquorate node joining a quorate partition takes the
		// partition's expected votes, even lower ones (lowered there by
		// last_man_standing or by hand).
		allowDecrease = true
		m.expected = info.ExpectedVotes
	}
	// votequorum records a quorate peer's expected votes and gives an
	// inquorate one this node's own (node->expected_votes); here an
	// inquorate peer simply follows this node's current value, so a value
	// recorded before this node adopted lower ones cannot linger and keep
	// the partition's quorum up.
	if quorate {
		m.peerExpected[id] = info.ExpectedVotes
	} else {
		delete(m.peerExpected, id)
	}
	m.recalculate(allowDecrease, false)
	if m.r.waitForAll && quorate && !info.WaitingForAll {
		// A quorate peer that is done waiting vouches for the partition:
		// a node joining a running cluster does not wait for all nodes.
		m.waiting = false
	}
}

// recalculate is recalculate_quorum: expected votes follow the votes
// present upwards, quorum is computed, the decision taken.
// byCurrentNodes is the last_man_standing step: expected votes become the
// number of nodes present.
func (m *Machine) recalculate(allowDecrease, byCurrentNodes bool) {
	// get_total_votes counts the witness's configured votes whether or
	// not it votes now: expected votes never rise because of it, as the
	// witness's votes are part of them from the start.
	var total uint32
	members := m.members()
	for _, id := range members {
		total += m.r.votes[id]
	}
	count := uint32(len(members))
	if m.r.witnessVotes > 0 {
		total += m.r.witnessVotes
		count++
	}
	if !byCurrentNodes {
		count = 0
	}
	if total > m.expected {
		m.expected = total
	}
	m.quorum, m.total = m.calculate(allowDecrease, count)
	if count > 0 {
		m.setAllExpected(count)
	}
	m.areWeQuorate(m.total)
}

// calculate is calculate_quorum: quorum = max(highest expected, total)/2
// + 1, never lower than before unless allowed, 1 for two_node while at
// most two nodes are present. maxExpected, when not 0, replaces the
// highest expected votes (last_man_standing, SetExpected). It returns the
// quorum and the votes present (the witness's only when it votes).
func (m *Machine) calculate(allowDecrease bool, maxExpected uint32) (quorum, total uint32) {
	highest := m.highestExpected()
	members := m.members()
	nodes := len(members)
	for _, id := range members {
		total += m.r.votes[id]
	}
	if m.witnessVote {
		total += m.r.witnessVotes
		nodes++
	}
	if maxExpected > 0 {
		highest = maxExpected
	}
	// (h+2)/2 and (t+2)/2 in corosync, the OpenVMS formula.
	quorum = max(highest, total)/2 + 1
	if !allowDecrease {
		quorum = max(quorum, m.quorum)
	}
	if m.r.twoNode && nodes <= 2 {
		// Each of the two may hold quorum alone: fencing decides who
		// lives. (Only ever with two nodes configured, see rules().)
		quorum = 1
	}
	return quorum, total
}

// highestExpected is the highest expected votes among the members
// (inquorate peers count with this node's own).
func (m *Machine) highestExpected() uint32 {
	h := m.expected
	for _, v := range m.peerExpected {
		h = max(h, v)
	}
	return h
}

// areWeQuorate is are_we_quorate.
func (m *Machine) areWeQuorate(total uint32) {
	if m.r.waitForAll && m.waiting {
		if total != m.expected {
			// Still waiting for all expected votes at once.
			m.quorate = false
			return
		}
		m.waiting = false
	}
	wasQuorate := m.quorate
	quorate := m.quorum <= total
	if quorate {
		members := m.members()
		m.lowestSeen, m.highestSeen = members[0], members[len(members)-1]
		m.tieBreaker = m.pickTieBreaker(members)
	}
	// auto_tie_breaker: an exact half (expected/2, so half-1 of an odd
	// count) may stay quorate if it holds the tie breaker. corosync's
	// guard from issue #74: fewer nodes left in the last change than the
	// quorum. paddock adds two conditions, each closing a split brain the
	// property test found in corosync's rule (see doc.go):
	//   - the votes that may be elsewhere (expected votes, at most the
	//     configured ones, minus those here) cannot make a quorum, which
	//     rules out the half-1 side of an odd count (nodes already away
	//     can join those that just left and give them a majority);
	//   - the node was quorate before: the tie breaker keeps quorum, it
	//     never gives it back to a node that had lost it (its memory of
	//     the tie breaker may be stale).
	if m.r.atb && total == m.expected/2 &&
		len(m.previous)-len(m.ring) < int(m.quorum) &&
		(corosyncATB || (wasQuorate && int64(min(m.expected, m.r.sumVotes))-int64(total) < int64(m.quorum))) &&
		m.tieBreakerHere() {
		quorate = true
	}
	m.quorate = quorate
	if m.r.waitForAll {
		// Re-armed at every loss of quorum: to be quorate again a node
		// must see every expected vote at once, or be vouched for by a
		// quorate peer.
		m.waiting = !quorate
	}
}

// corosyncATB restores corosync's exact auto_tie_breaker rule, without
// paddock's two extra conditions. Only tests set it, to show the split
// brains that rule allows.
var corosyncATB = false

// pickTieBreaker chooses the tie breaker among the members of a
// partition quorate by votes: the lowest or highest id, or the first
// listed node that is a member ("if that node is not in either half (ie
// was not in the cluster before the split) then the second node ID will
// be checked for and so on", votequorum(5)). 0 when none is.
func (m *Machine) pickTieBreaker(members []NodeID) NodeID {
	switch m.r.atbNode.Mode {
	case TieBreakLowest:
		return members[0]
	case TieBreakHighest:
		return members[len(members)-1]
	}
	for _, id := range m.r.atbNode.Nodes {
		if slices.Contains(members, id) {
			return id
		}
	}
	return 0
}

// tieBreakerHere says whether the tie breaker is in this partition. For
// lowest and highest it is check_auto_tie_breaker exactly (the id seen
// when last quorate by votes); for a list, corosync walks the list
// against the current and the previous membership, which lets both halves
// claim the tie when the listed nodes were away before the split, so the
// list node is chosen like the others: when last quorate by votes.
func (m *Machine) tieBreakerHere() bool {
	if corosyncATB {
		return m.corosyncTieBreakerHere()
	}
	return m.tieBreaker != 0 && slices.Contains(m.members(), m.tieBreaker)
}

// corosyncTieBreakerHere is check_auto_tie_breaker as corosync has it.
func (m *Machine) corosyncTieBreakerHere() bool {
	switch m.r.atbNode.Mode {
	case TieBreakLowest:
		return m.lowestSeen != 0 && slices.Contains(m.members(), m.lowestSeen)
	case TieBreakHighest:
		return m.highestSeen != 0 && slices.Contains(m.members(), m.highestSeen)
	}
	for i, id := range m.r.atbNode.Nodes {
		if !slices.Contains(m.ring, id) {
			continue
		}
		for _, earlier := range m.r.atbNode.Nodes[:i] {
			if slices.Contains(m.previous, earlier) {
				return false
			}
		}
		return true
	}
	return false
}

// lastManStandingTimer is votequorum_last_man_standing_timer_fn: when the
// window passed and the node is still quorate, expected votes come down
// to the nodes present.
func (m *Machine) lastManStandingTimer() {
	if m.quorate {
		m.recalculate(true, true)
	}
}

func intersect(a, b []NodeID) []NodeID {
	var out []NodeID
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
