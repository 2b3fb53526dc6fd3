// Package node is the paddock daemon of one host: it owns the data
// directory (identity, keys, the cluster configuration), runs membership
// and the quorum state machine, serves the control API on a unix socket for
// the CLI, and exports metrics.
//
// Data directory layout:
//
//	node.json         this node's id and name
//	cluster.json      the committed cluster configuration (versioned)
//	incarnation       a counter that grows at every daemon start
//	keys/ca.pem       the cluster CA certificate
//	keys/ca-key.pem   the cluster CA key (every node holds it, so any node can admit a joiner)
//	keys/node.pem     this node's certificate, signed by the CA
//	keys/node-key.pem this node's key
//	keys/authkey      32 random bytes: the heartbeat HMAC key
//	paddock.sock      the control socket
//
// Every file is written atomically (temporary file, fsync, rename, fsync of
// the directory), so a crash leaves the old or the new version, never a
// torn one.
package node
