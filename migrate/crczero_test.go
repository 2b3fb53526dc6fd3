package migrate

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// TestCRCZeroPage: extending a checksum by a zero page through the tables
// equals hashing the page, for any starting checksum and any number of
// pages.
func TestCRCZeroPage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	starts := []uint32{0, 1, 0xffffffff, 0x80000000}
	for range 1000 {
		starts = append(starts, rng.Uint32())
	}
	for _, c := range starts {
		if got, want := crcZeroPage(c), crc32.Update(c, castagnoli, zeroPage[:]); got != want {
			t.Fatalf("crc %#x: %#x through the tables, %#x hashed", c, got, want)
		}
	}
	data := make([]byte, 3*PageBytes)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for _, n := range []int{1, 2, 7, chunkPages - 1, chunkPages} {
		crc := crc32.Checksum(data, castagnoli)
		want := crc32.Update(crc, castagnoli, make([]byte, n*PageBytes))
		if got := crcZeroPages(crc, n); got != want {
			t.Fatalf("%d zero pages after data: %#x, want %#x", n, got, want)
		}
		if got, want := crcZeroPages(0, n), crc32.Checksum(make([]byte, n*PageBytes), castagnoli); got != want {
			t.Fatalf("%d zero pages: %#x, want %#x", n, got, want)
		}
	}
}
