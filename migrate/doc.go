// Package migrate holds the lower layers of live migration: the guest's
// memory (a memfd shared with the VMM), dirty-page trackers, the page codec
// and frame format spoken on the wire, and the transports (QUIC, TLS/TCP)
// that carry frames between the source and the destination node.
//
// The pre-copy engine (rounds, convergence, switchover) stands on these
// pieces:
//
//   - Memory is the guest's RAM: a memfd mapped MAP_SHARED, so a VMM process
//     can map the same pages. Page size is PageBytes (4096).
//   - Tracker reports which pages were written since the previous round.
//     The default, UffdTracker, uses userfaultfd write-protection in async
//     mode plus the PAGEMAP_SCAN ioctl: no fault ever reaches user space,
//     and one ioctl both reads and re-arms the written bits. ExplicitTracker
//     is the portable fallback where writers call Mark themselves.
//   - Encoder and Decoder speak the frame format (frame.go): page frames in
//     raw, zero, s2, zstd or XBZRLE-style delta encodings, and control
//     frames for rounds, device state, the RAM digest and the two-phase
//     commit. The decoder checks every field against hard limits and never
//     trusts a length it has not bounded.
//   - Conn carries one control stream and N page streams, over QUIC or over
//     parallel TLS/TCP connections, mutually authenticated by a CA.
//
// Everything here has a limit (frame payload, pages per frame, delta cache,
// device state size, pending handshakes), and every limit has a name that
// says its unit.
package migrate
