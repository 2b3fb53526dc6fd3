package migrate

import (
	"fmt"
	"math/bits"
)

// Bitmap is a fixed-length set of page indexes, one bit a page. It is not
// safe for concurrent use; ExplicitTracker keeps its own atomic words and
// Collect hands results over in a Bitmap.
type Bitmap struct {
	bits  int
	words []uint64
}

// maxBitmapBits is one bit per page of MaxMemoryBytes (32 MiB of words).
const maxBitmapBits = MaxMemoryBytes / PageBytes

// NewBitmap returns an empty bitmap of n bits (0 <= n <= pages in 1 TiB).
func NewBitmap(n int) *Bitmap {
	if n < 0 || n > maxBitmapBits {
		panic(fmt.Sprintf("migrate: bitmap of %d bits", n))
	}
	return &Bitmap{bits: n, words: make([]uint64, (n+63)/64)}
}

// Len returns the number of bits.
func (b *Bitmap) Len() int { return b.bits }

func (b *Bitmap) check(i int) {
	if uint(i) >= uint(b.bits) {
		panic(fmt.Sprintf("migrate: bit %d out of range [0,%d)", i, b.bits))
	}
}

// Set sets bit i.
func (b *Bitmap) Set(i int) {
	b.check(i)
	b.words[i/64] |= 1 << (uint(i) % 64)
}

// Clear clears bit i.
func (b *Bitmap) Clear(i int) {
	b.check(i)
	b.words[i/64] &^= 1 << (uint(i) % 64)
}

// Test reports whether bit i is set.
func (b *Bitmap) Test(i int) bool {
	b.check(i)
	return b.words[i/64]&(1<<(uint(i)%64)) != 0
}

// SetRange sets bits [from, to).
func (b *Bitmap) SetRange(from, to int) {
	if from < 0 || to > b.bits || from > to {
		panic(fmt.Sprintf("migrate: bit range [%d,%d) out of [0,%d)", from, to, b.bits))
	}
	for from < to {
		w, off := from/64, uint(from)%64
		n := min(64-int(off), to-from)
		mask := ^uint64(0)
		if n < 64 {
			mask = (1<<uint(n) - 1) << off
		}
		b.words[w] |= mask
		from += n
	}
}

// Count returns the number of set bits.
func (b *Bitmap) Count() int {
	n := 0
	for _, w := range b.words {
		n += bits.OnesCount64(w)
	}
	return n
}

// Reset clears every bit.
func (b *Bitmap) Reset() { clear(b.words) }

// Or sets every bit that is set in o; both must have the same length.
func (b *Bitmap) Or(o *Bitmap) {
	if o.bits != b.bits {
		panic(fmt.Sprintf("migrate: Or of bitmaps of %d and %d bits", b.bits, o.bits))
	}
	for i, w := range o.words {
		b.words[i] |= w
	}
}

// NextSet returns the first set bit at or after from, or -1.
func (b *Bitmap) NextSet(from int) int {
	if from < 0 {
		from = 0
	}
	if from >= b.bits {
		return -1
	}
	w := from / 64
	word := b.words[w] >> (uint(from) % 64)
	if word != 0 {
		return from + bits.TrailingZeros64(word)
	}
	for w++; w < len(b.words); w++ {
		if b.words[w] != 0 {
			return w*64 + bits.TrailingZeros64(b.words[w])
		}
	}
	return -1
}

// nextClear returns the first clear bit at or after from, or Len.
func (b *Bitmap) nextClear(from int) int {
	if from >= b.bits {
		return b.bits
	}
	w := from / 64
	word := ^b.words[w] >> (uint(from) % 64)
	if word != 0 {
		return min(from+bits.TrailingZeros64(word), b.bits)
	}
	for w++; w < len(b.words); w++ {
		if b.words[w] != ^uint64(0) {
			return min(w*64+bits.TrailingZeros64(^b.words[w]), b.bits)
		}
	}
	return b.bits
}

// NextRun returns the first run [start, end) of set bits at or after from,
// or (-1, -1). The engine sends a run as one frame.
func (b *Bitmap) NextRun(from int) (start, end int) {
	start = b.NextSet(from)
	if start < 0 {
		return -1, -1
	}
	return start, b.nextClear(start)
}

// TakeSet appends to dst up to limit set bits at or after from, clearing
// them, and returns dst and where the next call should start (Len when
// done). It is how the engine pulls batches of dirty pages to send.
func (b *Bitmap) TakeSet(dst []uint64, from, limit int) ([]uint64, int) {
	for n := 0; n < limit; n++ {
		i := b.NextSet(from)
		if i < 0 {
			return dst, b.bits
		}
		b.words[i/64] &^= 1 << (uint(i) % 64)
		dst = append(dst, uint64(i))
		from = i + 1
	}
	return dst, from
}
