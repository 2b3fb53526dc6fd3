package migrate

import (
	"encoding/binary"
	"math/bits"
)

// An XBZRLE-style page delta, after QEMU's XBZRLE but simpler. The sender
// keeps a copy of what it last sent for a page (pageCache); the receiver's
// RAM holds the same bytes. A delta lists the byte runs that changed:
//
//	delta  = { skip changed data }
//	skip   = uvarint: bytes left as they are, counted from the end of the
//	         previous run (the start of the page for the first)
//	changed= uvarint >= 1: length of the run
//	data   = the run's new bytes
//
// An empty delta means "unchanged": a page written with the bytes it
// already held costs its record header and nothing more.
//
// A short stretch of unchanged bytes inside a change is sent as if changed:
// splitting costs two varints (at least 2 bytes), so stretches shorter than
// deltaMinGapBytes are cheaper to send than to skip.
const deltaMinGapBytes = 3

const (
	lsb8 = 0x0101010101010101
	msb8 = 0x8080808080808080
)

// hasZeroByte reports whether any byte of x is zero (the classic SWAR test).
func hasZeroByte(x uint64) bool { return (x-lsb8)&^x&msb8 != 0 }

// appendDelta appends the delta from old to cur (both PageBytes long) to
// dst. It gives up, returning ok=false, as soon as the delta would exceed
// limitBytes: then another encoding is smaller and the work is wasted.
func appendDelta(dst, old, cur []byte, limitBytes int) (out []byte, ok bool) {
	old, cur = old[:PageBytes], cur[:PageBytes]
	base := len(dst)
	last := 0 // end of the previous run
	i := 0
	for i < PageBytes {
		// Skip unchanged bytes, a word at a time.
		for i+8 <= PageBytes {
			x := binary.LittleEndian.Uint64(old[i:]) ^ binary.LittleEndian.Uint64(cur[i:])
			if x != 0 {
				i += bits.TrailingZeros64(x) / 8
				break
			}
			i += 8
		}
		for i < PageBytes && old[i] == cur[i] {
			i++
		}
		if i == PageBytes {
			break
		}
		start := i
		// Extend the run until deltaMinGapBytes unchanged bytes (or the
		// page end). Whole words with every byte changed go at once.
		for i < PageBytes {
			if i+8 <= PageBytes {
				x := binary.LittleEndian.Uint64(old[i:]) ^ binary.LittleEndian.Uint64(cur[i:])
				if !hasZeroByte(x) {
					i += 8
					continue
				}
			}
			if old[i] != cur[i] {
				i++
				continue
			}
			j := i
			for j < PageBytes && old[j] == cur[j] && j-i < deltaMinGapBytes {
				j++
			}
			if j-i >= deltaMinGapBytes || j == PageBytes {
				break
			}
			i = j
		}
		// Worst case 2+2 varint bytes for a page of 4096.
		if len(dst)-base+4+(i-start) > limitBytes {
			return dst[:base], false
		}
		dst = binary.AppendUvarint(dst, uint64(start-last))
		dst = binary.AppendUvarint(dst, uint64(i-start))
		dst = append(dst, cur[start:i]...)
		last = i
	}
	return dst, true
}

// checkDelta validates a delta for a page without touching the page, so a
// bad delta is refused before any byte of RAM changes.
func checkDelta(delta []byte) error {
	pos := 0
	for len(delta) > 0 {
		skip, n := binary.Uvarint(delta)
		if n <= 0 {
			return corrupt("delta: bad skip varint")
		}
		delta = delta[n:]
		run, n := binary.Uvarint(delta)
		if n <= 0 {
			return corrupt("delta: bad run varint")
		}
		delta = delta[n:]
		if run == 0 {
			return corrupt("delta: empty run")
		}
		if skip > PageBytes || run > PageBytes || uint64(pos)+skip+run > PageBytes {
			return corrupt("delta: run [%d+%d,+%d) past the page end", pos, skip, run)
		}
		if uint64(len(delta)) < run {
			return corrupt("delta: run of %d bytes, %d left", run, len(delta))
		}
		delta = delta[run:]
		pos += int(skip + run)
	}
	return nil
}

// applyDelta applies a delta checked by checkDelta to page.
func applyDelta(page, delta []byte) {
	pos := 0
	for len(delta) > 0 {
		skip, n := binary.Uvarint(delta)
		delta = delta[n:]
		run, n := binary.Uvarint(delta)
		delta = delta[n:]
		pos += int(skip)
		copy(page[pos:pos+int(run)], delta[:run])
		pos += int(run)
		delta = delta[run:]
	}
}
