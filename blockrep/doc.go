// Package blockrep is paddock's replicated volume: the local replica store,
// the primary's write path, the peer protocol, epochs and generations,
// resync, scrub and verify.
//
// This first part holds the pieces a replica keeps on disk: the per-peer
// out-of-sync bitmap (bitmap.go).
package blockrep
