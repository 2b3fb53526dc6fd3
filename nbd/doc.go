// Package nbd is paddock's Network Block Device server and a small client.
//
// The contract is the NBD protocol document of the NetworkBlockDevice
// project (doc/proto.md). The server speaks the fixed newstyle handshake with
// the options EXPORT_NAME, GO, INFO, LIST, ABORT, STARTTLS,
// STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT (base:allocation),
// and the commands READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE,
// BLOCK_STATUS and DISC with the FUA, DF, NO_HOLE, FAST_ZERO and REQ_ONE
// flags.
//
// Requests on one connection are pipelined: a reader parses requests and
// hands each to its own goroutine, replies leave through one writer in
// completion order. What a client can make the server hold is bounded:
// requests and bytes in flight per connection, bytes in flight per server,
// connections per server, option lengths, option counts, handshake time.
// A request that breaks a rule gets an error reply and the stream stays in
// sync; only a request whose framing cannot be trusted (a bad magic, a write
// payload too large to skip) closes that one connection.
//
// The package knows nothing about replication: it serves any Backend.
// FileBackend is the local one (sparse file, pread/pwrite, fdatasync on FLUSH
// and FUA, hole punching on TRIM, block status from SEEK_DATA/SEEK_HOLE).
package nbd
