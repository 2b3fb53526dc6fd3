// Package witness is "paddock witness", the cluster's tie breaker on a
// third machine (corosync's qdevice with corosync-qnetd), and the client a
// node runs to use it. The decision which partition gets the vote is
// quorum.Arbiter's (pure, tested by scenarios); this package does the I/O
// around it: TLS, framing, leases, state on disk.
//
// Protocol. One TLS 1.3 connection per node, both sides authenticated by
// the cluster CA (identity.go). Frames are a 4-byte length and a JSON
// Envelope of at most MaxFrameBytes (wire.go). The node sends Hello
// (cluster id, node id, incarnation), then a Report of its membership, its
// configuration and the lease it asks for at every change and every
// report interval; the witness answers each Report with a Verdict for
// that node: granted for exactly one membership, with a lease, or not,
// with a reason.
//
// Leases. A grant counts on the node until LeaseMs after the node sent
// the report it answers (the node's clock), and only while the node's view
// is that membership. The witness records each lease on its own clock
// from when it received the report, so it never thinks a lease over
// before the node does. The daemon picks lease = 3/4 of the token timeout
// and report interval = 1/8 (node/witness.go says why).
//
// The server's safety rules are listed on Server. State (the newest
// configuration, the Arbiter's Active and the longest lease granted) is in
// state.json, replaced atomically and fsynced before a grant depends on
// it, so the witness survives kill -9.
//
// Limits: MaxFrameBytes per message, MaxConns connections, handshake,
// write and idle timeouts, leases within MinLeaseMs..MaxLeaseMs, a
// bounded send queue per node (a node that does not read is dropped).
package witness
