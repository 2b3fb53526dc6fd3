// Package membership decides which nodes a node can talk to, from
// authenticated UDP heartbeats, and hands that set to the votequorum state
// machine (package quorum).
//
// Every node sends a heartbeat to every configured peer each interval
// (a fraction of the token timeout). A heartbeat carries the sender's id,
// an incarnation number that grows at every start of the daemon (persisted,
// so it does not depend on the wall clock), a sequence number that grows
// with every packet, the configuration version the sender runs, and a
// report on every configured peer: whether the sender hears it, how long
// ago it last did, and which of that peer's heartbeats it last accepted
// (the echo: a node measures its self-fence lease from the send times of
// its own heartbeats that its members echo, and the survivors of a lost
// node measure their wait from the last time any of them heard it; see
// fence/lease.go). It is authenticated with HMAC-SHA256 under the
// cluster's authkey. A packet that fails the HMAC, names another cluster,
// or does not move its sender's (incarnation, sequence) forward is dropped
// and counted: forged and replayed packets never count as a sign of life.
//
// A peer is a member when its last accepted heartbeat is younger than the
// token timeout and that heartbeat says it hears us: membership is
// symmetric, so a one-way link does not make a member. Unlike corosync's
// totem, nodes do not agree on one ring membership; each node decides from
// its own view. The quorum rules stay safe under that (two disjoint sets
// cannot both hold a majority of the same configured votes), and the
// storage epochs keep data safe whatever the views are.
//
// Tracker is the pure part (no I/O, no clock: nowMs is passed in); the
// UDP transport is at the edge, in transport.go.
package membership
