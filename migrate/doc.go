// Package migrate holds the lower layers of live migration: the guest's
// memory (a memfd shared with the VMM), dirty-page trackers, the page codec
// and frame format spoken on the wire, and the transports (QUIC, TLS/TCP)
// that carry frames between the source and the destination node. The
// pre-copy engine stands on these pieces:
//
//   - Migrate (engine_source.go) runs in the process that owns the Guest
//     (Pause, Resume, Throttle, State, RAM): the bulk pass, then rounds of
//     dirty pages; after each, Convergence (a pure state machine) applies
//     QEMU's rule and auto-converge; then pause, the last round, the device
//     state and the RAM digest, and a two-phase commit. Between the
//     destination's "ready" and the commit, SourceOptions.Handoff moves what
//     the guest uses outside its RAM (the primary role of its volumes, see
//     node/handoff.go) inside the same pause; a failure there cancels the
//     migration like any failure before the commit.
//
//   - Receive (engine_dest.go) applies the streams to fresh RAM, checks the
//     digest, confirms, and resumes the guest only at the commit. The
//     conversation, and how a commit whose confirmation is lost is settled
//     by a redial, is described in engine.go.
//
//   - SynthGuest is a guest for tests, benchmarks and `paddock guest run`:
//     a writer that dirties pages at a rate (uniform, hotset or sequential),
//     with self-verifying content.
//
//   - Memory is the guest's RAM: a memfd mapped MAP_SHARED, so a VMM can map
//     the same pages. The unit everywhere is PageBytes (4096).
//
//   - Tracker reports which pages were written since the previous Collect.
//     UffdTracker (the default, Linux 6.7+) uses userfaultfd write-protection
//     in async mode plus the PAGEMAP_SCAN ioctl: no fault reaches user space,
//     and one ioctl both reads and re-arms the written bits. It tracks page
//     table entries, so every mapping the guest writes through must be given
//     to it (writes through another mapping or pwrite on the fd are not
//     seen). ExplicitTracker is fed by its writers (block devices, tests).
//     CheckUffdTracker says, with an *UnsupportedError, what a kernel lacks.
//
//   - Encoder and Decoder speak the frame format (frame.go): page frames in
//     zero, raw, s2, zstd or batches of per-page records that may be
//     XBZRLE-style deltas (xbzrle.go) against a bounded LRU of what was last
//     sent, or sparse frames (a run whose zero and data pages alternate: a
//     page bitmap, then the data pages alone; the destination writes them
//     with one pwritev over RAM that holds data, and only the data runs,
//     one pwrite each, on fresh RAM, whose zero pages it never allocates);
//     control frames for hello, rounds, device state, the RAM digest,
//     commit, ack and error. Every header and payload has a crc32c; the
//     decoder checks every field against hard limits before trusting it.
//
//   - RAMDigest is a chunked digest of RAM that can be kept current
//     incrementally. What the digest compared at the switchover proves:
//     each side's chunk checksum is taken of the bytes the side handled
//     last for that chunk (the source: read from RAM and sent, or, page
//     by page, rehashed from RAM after a round's send; the destination:
//     handed to pwrite or copied in, see Decoder.ChunkSum, or read back
//     for chunks not written whole by in-order runs in the bulk pass, and
//     after it each page written hashed before and after the write).
//     After the bulk pass a page's change updates its chunk's checksum
//     through crc32c's linearity (pagesum.go), so a round costs the pages
//     it sent, not their chunks. Equal digests then mean equal RAM at the
//     pause provided that (1) the tracker reported every write the guest
//     made after Tracker.Start (a page written after it was hashed is then
//     sent and rehashed in a later round, the last one inside the pause),
//     and (2) nothing but the decoder writes the destination's RAM before
//     the commit. A write the tracker does not see (through a mapping it
//     does not cover, by pwrite on the memfd, by a device from the kernel)
//     or a stray write at the destination is not caught by that. (Before
//     the page sums, rehashing a sent page's whole chunk caught such a
//     write by chance when a later round sent another page of its chunk;
//     nothing promised it, and it made every round cost whole chunks.) SourceOptions.VerifyRAM and
//     DestOptions.VerifyRAM drop the assumption on their side: they
//     rehash all of RAM inside the pause (RAMDigest.RehashAll), at the
//     cost of reading it all while the guest is stopped.
//
//   - When guest RAM is a Memory's mapping, the engine moves it through the
//     memfd instead of the mapping: the source's bulk pass preads each
//     chunk into the encoder's snapshot (Encoder.WriteRunFile; the chunk's
//     digest checksum is of the bytes as sent), the destination writes
//     every page with pwrite (Decoder.SetRAMFile) and takes the checksum
//     of what it wrote for a chunk that in-order run frames wrote whole
//     (Decoder.ChunkSum), else reads the chunk back with pread
//     (RAMDigest.UpdateChunkFile). On this VM page-table work (faults,
//     MADV_POPULATE_WRITE) cost more than the copies themselves: filling
//     a fresh memfd by pwrite ran 5-6x faster than populate then copy.
//
//   - Conn carries one control stream and N page streams, over QUIC or over
//     parallel TLS/TCP connections, mutually authenticated by a CA
//     (TLSIdentity; SelfSignedCA for tests and standalone use). On TCP each
//     stream's TLS records are gathered into 256 KiB writes
//     (internal/batchconn): crypto/tls writes each 16 KiB record with its
//     own system call.
//
// What the engine must respect:
//
//   - Read a page's contents only after the Collect that reported it has
//     returned; send every page reported since the last round.
//   - Send every version of a page on the same stream (StreamOf): streams
//     are not ordered with one another, and each Encoder's delta cache must
//     see every send of its pages. Encoders are one per stream, not shared.
//   - Collect costs about 30-40 µs for each 2 MiB of address space holding
//     a written page (re-protecting and flushing the TLB dominate; a clean
//     1 GiB walk costs ~0.5 ms). The final Collect runs inside the pause and
//     counts against the downtime.
//   - Hashing all of RAM runs at ~8 GB/s on two cores here: keep a RAMDigest
//     current during the rounds (UpdatePage on RAM after each page is sent)
//     so that only the last round's pages are hashed inside the pause.
//   - Conn.Close may drop data in flight: end with an acknowledgement on the
//     control stream. Conn.Abort is for cancel and error.
//
// Everything here has a limit (frame payload, pages per frame, delta cache,
// device state size, pending handshakes, page streams), and every limit's
// name says its unit.
package migrate
