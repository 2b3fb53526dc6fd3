// Package confchange commits changes of the cluster configuration. It is a
// pure state machine in the etcd-io/raft style: no I/O, no clock, no
// goroutines. Messages from peers, proposals and ticks of a virtual clock
// go in; a record to persist, messages to send, newly committed
// configurations and the outcomes of proposals come out.
//
// # The rule
//
// The configuration is an opaque blob with a version (Config). A cluster
// is created with version 1. After that:
//
//  1. Version v+1 is decided by the voters of version v (the members v
//     gives votes), and by nobody else. A node proposes only on top of the
//     version it has itself committed, so every proposal for v+1 names the
//     same voters: v is committed, and at most one configuration is ever
//     committed as v (by induction from version 1).
//  2. A change commits when voters holding a quorum of v's votes have
//     promised version v+1 to its ballot (phase 1) and then accepted it at
//     that ballot (phase 2). This is single-decree Paxos for each version,
//     with ballots (round, proposer id) strictly ordered; a proposer that
//     finds a value already accepted for v+1 in phase 1 must carry that
//     value to commit instead of its own, and reports that its own change
//     lost (retry it on top of v+1).
//  3. A quorum is more than half of v's votes, or more if the daemon's
//     QuorumFunc asks more (votequorum's quorum, when expected votes exceed
//     the voters' votes), never less, whatever the daemon passes.
//
// Why two concurrent changes can never both commit. Two changes of the
// same version v+1 both need promises from a quorum of v's votes; two sets
// that each hold more than half of the same votes share a voter. That voter
// promised the two ballots in some order and never accepts below a promise,
// so the later ballot's phase 1 either sees the earlier value accepted (and
// must re-propose it) or the earlier ballot can no longer gather its
// accepts: one value per version, the standard Paxos argument. Changes of
// different versions are not concurrent: v+2 is proposed only on top of a
// committed v+1, so it contains v+1, and a proposer whose base is stale is
// told so (by its own node at Propose, or by a voter that has committed
// more, which sends back the committed configuration).
//
// Membership changes follow from rule 1: the voters of v decide v+1 even
// when v+1 adds or removes voters, and the new voters decide only from v+2
// on, after v+1 is committed; a version is never decided by two voter sets.
// This package's safety therefore needs no limit on how much the voters
// change. The daemon's quorum does: while v+1 travels, some nodes compute
// votequorum from v and others from v+1, and two partitions must not both
// be quorate in that window. So a change may alter the votes of one node
// at a time, and only by a step small enough that every majority of the
// old votes meets every majority of the new ones (CheckVoterChange; with
// one-vote nodes this is exactly "add or remove one voter at a time", as
// in Raft). Proposers check it and so do acceptors. Joint consensus is not
// used: one node at a time is enough for 2 to 32 nodes.
//
// "May change only while quorate": Propose takes the caller's quorate flag
// (votequorum's verdict) and refuses when it is false; an inquorate node's
// configuration is read-only. (A proposal already in flight when quorum is
// lost keeps retrying until its timeout; it cannot commit without a quorum
// of voters either way.) Safety does not rest on the flag: it rests on
// the promise quorum, which a node that wrongly believes itself quorate
// still cannot get. The flip side: with two voters both must agree (even
// under votequorum's two_node), so a two-node cluster that should change
// its configuration with one node down needs a third voter (the witness,
// running an acceptor, counts as a member with a vote).
//
// # Driving a Node (what the daemon does)
//
// Create it with New from Options and the persisted HardState (Bootstrap
// for the node that creates the cluster, Joining or the received
// configuration for a node that joins). Then feed it, from one goroutine:
//
//   - Step(m) for every message from a peer (DecodeMessage first);
//   - Tick() every tick (e.g. 100 ms; the timers are in ticks);
//   - Propose(quorate, base, data) for a change, base being the committed
//     version the caller edited;
//   - ObservePeerVersion(peer, version) for the configuration version a
//     peer's heartbeat carries, so a node that missed a Commit catches up.
//
// Each returns an Output. Handle it in order: (1) if Persist is set, write
// it durably (EncodeHardState, atomic replace, fsync) before anything else;
// (2) send Messages (EncodeMessage; any transport, losses are fine);
// (3) install Applied configurations (increasing versions, each committed);
// (4) report Results to the proposers' callers. Persist-before-send is what
// makes a promise or an acceptance binding across a crash: a voter that
// said "promised" or "accepted" will still say it after a restart.
//
// An input that fails validation (garbage or forged fields, a configuration
// the MembersFunc cannot read, a committed configuration that contradicts
// this node's) returns an error and changes nothing. An input that is
// merely late, duplicated or unsolicited is ignored.
//
// # Limits
//
// A configuration is at most MaxConfigBytes (1 MiB) with at most MaxMembers
// members of at most MaxVotes votes; rounds and versions stay below 2^62;
// one proposal at a time per node, retried with exponential backoff and
// jitter (Options.RetryTicks, MaxBackoffTicks) and given up after
// Options.ProposalTimeoutTicks with outcome TimedOut; catch-up replies are
// bounded per tick.
//
// # Not here
//
// A decided value is committed by the proposer that saw its accepts; if
// that proposer dies before sending Commit, the value is finished by the
// next Propose anywhere (which reports Lost to its caller). Nothing retries
// it on its own. An emergency override (the pvecm-expected-1 lever that
// lets a lone survivor edit its configuration) would break rule 3 and is
// deliberately not offered by this package.
package confchange
