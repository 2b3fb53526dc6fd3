// Package quorum is corosync's votequorum as a pure state machine: one
// Machine per node takes membership views, configuration, a witness vote
// and a virtual time (nowMs), and says whether the node is quorate, with
// expected votes, highest expected, total votes, quorum and flags, the
// fields of "corosync-quorumtool -s" and "pvecm status". It does no I/O
// and reads no clock, so it is tested by scripted scenarios
// (testdata/*.txt, a cluster simulator in the style of corosync's vqsim)
// and by rapid properties.
//
// The rules follow votequorum(5) and corosync's exec/votequorum.c; each
// function in rules.go names the corosync function it follows. In words:
//
// Votes and quorum. Every node has votes (quorum_votes, 1..255). Expected
// votes are quorum.expected_votes or the sum of the configured votes (plus
// the witness's). quorum = max(highest expected, total votes)/2 + 1, in
// integer division (calculate_quorum: (n+2)/2). Total votes are the votes
// of the nodes in this node's view, plus the witness's when it votes here.
// Expected votes rise when more votes are present than expected
// (recalculate_quorum) and never fall on their own; quorum never falls
// either, except where a rule allows it (allow_decrease: last man
// standing, SetExpected, a configuration change, joining a quorate
// partition). A node is quorate when total votes >= quorum.
//
// Peers. Nodes tell each other their expected votes, whether they are
// quorate and whether they are still waiting for all (NodeInfo: the parts
// of votequorum's nodeinfo message that matter). An inquorate node that
// hears a quorate peer takes the peer's expected votes, even lower ones;
// the highest expected votes are the highest among this node and its
// quorate peers (message_handler_req_exec_votequorum_nodeinfo).
//
// two_node. With exactly two nodes configured, quorum is 1 while no more
// than two nodes (counting the witness) are present: either node survives
// the other, and in a network split both stay quorate; fencing decides.
// two_node turns wait_for_all on unless wait_for_all is set explicitly.
//
// wait_for_all. A node is not quorate until it has seen all expected
// votes at once (are_we_quorate compares total and expected votes). The
// wait starts at startup and again at every loss of quorum; a quorate
// peer that is not waiting ends it (so a node restarted into a running
// cluster is quorate at once). CancelWaitForAll ends it by hand.
//
// last_man_standing. When nodes leave and the partition still has at
// least the old quorum of nodes, a timer of last_man_standing_window
// (default 10000 ms) starts, restarted by every such change; when it
// fires on a quorate node, expected votes become the number of nodes
// present, and quorum falls with them (votequorum_sync_init,
// votequorum_last_man_standing_timer_fn). With auto_tie_breaker, a
// partition of up to quorum nodes holding the lowest node also starts it,
// which takes a cluster down to one node. Every node must have 1 vote.
//
// auto_tie_breaker. In a split where this partition has exactly half of
// the expected votes (expected/2), it stays quorate if it holds the tie
// breaker: the lowest or highest node id, or the first node of
// auto_tie_breaker_node's list, of the membership when the node was last
// quorate by votes. corosync's guard after issue #74 applies: fewer nodes
// left in the last change than the quorum.
//
// SetExpected is "pvecm expected N": refused below the votes present and
// when it would make a quorate partition inquorate
// (message_handler_req_lib_votequorum_setexpected); otherwise applied, with
// a split brain warning for the operator. corosync applies it on every
// member of the partition; the caller does that with ApplyExpected.
//
// The witness is corosync's quorum device with corosync-qnetd: a process
// on a third machine with votes of its own (ffsplit: 1; lms: the nodes'
// votes minus one). A node counts the witness's votes only when the
// witness granted them for exactly its current membership (votequorum
// binds a device's vote to a ring id). The Arbiter is the witness's side:
// ffsplit gives the vote to the partition with more than half of the
// nodes, or in a 50:50 split to the half with more nodes connected to the
// witness, then the one holding the tie breaker; lms gives it to the
// largest partition, then the tie breaker's (qnetd-algo-ffsplit.c,
// qnetd-algo-lms.c).
// The witness process and the node's client, which carry this decision
// over the network with leases, are package quorum/witness.
//
// Configurations corosync refuses, or quietly repairs (see
// votequorum_readconfig), are errors from Config.Validate: two_node with
// auto_tie_breaker (corosync turns two_node off) or with a witness;
// auto_tie_breaker with an odd vote count and no wait_for_all (corosync
// turns auto_tie_breaker off, or refuses to start if last_man_standing is
// on too); a witness with last_man_standing or auto_tie_breaker;
// last_man_standing with a node of more than one vote (corosync turns LMS
// off at runtime); ffsplit with other than one vote per node and for the
// witness; lms witness votes not given when they cannot be computed. So
// is input no cluster can mean: no nodes, more than 32, id 0 (the quorum
// device's id), duplicate ids or names, 0 or more than 255 votes,
// expected votes below the configured votes, an unknown tie breaker node.
//
// # Where paddock differs from corosync, and why
//
// The central property, checked by the simulator after every round of
// every event and by rapid over random clusters and histories, is that
// under one configuration no two nodes with disjoint views are quorate at
// once. corosync's rules break it in three places on purpose (two_node
// leaves a split to fencing; last_man_standing trusts that nodes that
// left are dead; SetExpected is the operator's word): paddock keeps those
// as they are, the property test leaves them out, and testdata shows
// their split brains. In the other places where the property test found
// corosync's rule unsafe, or corosync's text leaves a choice, paddock
// chose:
//
//   - auto_tie_breaker keeps quorum but never gives it back: only a node
//     that was quorate before the change may take the tie. corosync lets a
//     node that lost quorum use a tie breaker it remembers from long ago;
//     another node may remember another one, and both halves of a later
//     split claim the tie (testdata/atb.txt shows it). With wait_for_all
//     on the difference mostly disappears: a node that lost quorum waits
//     for all votes anyway.
//   - auto_tie_breaker_node lists are read like lowest and highest: the
//     first listed node that was a member when the node was last quorate by
//     votes, as votequorum(5) describes it. corosync's code checks the list
//     against the previous membership only, and listed nodes that were
//     away can come back on both sides of a split at once.
//   - auto_tie_breaker does not take the half-1 side of an odd count (the
//     votes that may be elsewhere must not make a quorum). corosync's
//     guard counts only the nodes that left in the last change; a node
//     already away can join them and give them a majority, even with
//     wait_for_all.
//   - two_node takes effect only with exactly two nodes configured;
//     corosync applies quorum 1 whenever at most two nodes are in view,
//     which would let a lone node of three be quorate.
//   - Conflicting options are errors, not repaired with a log line.
//   - expected_votes below the configured votes is an error (corosync
//     accepts it and two partitions could both be quorate).
//   - An inquorate peer's expected votes follow this node's own (corosync
//     records this node's value at the time of the peer's message, which
//     could keep an old, higher value and leave a rejoining node
//     inquorate).
//   - The witness keeps quorum where it is (DESIGN.md invariant 3: a
//     node that lost quorum never regains it through a witness alone): it
//     gives its vote only to a partition with more than half of the nodes
//     or one sharing a node with the partition it voted for last (Active,
//     which the witness keeps on disk). qnetd would give it to a lone node
//     whose peer vanished after a split, though the peer may have gone on
//     writing; and a new witness would give it to a node booting alone.
//     ffsplit's keep_active_partition_tie_breaker is thus always on and
//     stronger. Heuristics are not modelled.
//   - allow_downscale and expected_votes_tracking (marked incomplete and
//     unsupported in votequorum(5)) and qdevice master_wins are not
//     implemented.
//
// # Using it from a daemon
//
// One Machine per node process, made with New at startup (a restart is a
// new Machine, as a corosync restart is). At every tick and every
// membership change call Update with the members heard (with the NodeInfo
// each last sent) and, when a witness is configured, the membership the
// witness granted its vote for; put Info into outgoing heartbeats; act on
// Status or Quorate. Tick lets time pass between updates. A committed
// configuration goes to Reconfigure (ErrRestartRequired: make a new
// Machine). "paddock expected N" goes to SetExpected on the node asked,
// then to ApplyExpected on the other members of its partition.
package quorum
