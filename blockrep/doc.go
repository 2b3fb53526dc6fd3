// Package blockrep is paddock's replicated volume: the local replica store,
// the primary's write path, the peer protocol, epochs and generations,
// resync, scrub and verify.
//
// This first part holds what a replica keeps on disk:
//
//   - store.go: the data file (sparse, pread/pwrite) and a checksum file
//     with one crc32c per 4 KiB block, written beside the data and made
//     durable with it by Flush. A read checks every block it touches and
//     names the ones that fail (silent corruption), VerifyBlocks is scrub.
//   - activitylog.go: DRBD's activity log. No metadata is synced per write;
//     only when a write reaches a cold 4 MiB extent is the log synced, and
//     after a crash only the logged extents are re-verified. A clean stop
//     keeps the hot extents named (promises list them: a crashed
//     primary's write in flight may differ there between copies).
//   - recovered.go: the extents a crash may have left older than the
//     other copies (writes acknowledged but not flushed), recorded on
//     disk until a primary resent them; recovering.go: how a primary
//     resends them and keeps such a replica out of the generation's set
//     meanwhile, and how a recovering candidate fetches its own first.
//   - bitmap.go: the per-peer out-of-sync bitmap (64 KiB regions) that
//     makes resync resend only what a peer missed.
//   - epoch.go: the rule that makes one primary per epoch and keeps every
//     acknowledged write (written down there), with a model test.
//   - wire.go: the peer protocol's messages as checksummed, bounded frames;
//     crccombine.go folds block checksums into a frame's, so a resent or
//     replicated block is checksummed once per side.
package blockrep
