package migrate

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// TestPageSums: the crc32c of a chunk folded from its page sums, and kept
// current by page changes, is crc32.Checksum of its bytes.
func TestPageSums(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{1, 2, 3, 255, chunkPages} {
		ram := make([]byte, n*PageBytes)
		for p := range n {
			if rng.IntN(3) > 0 {
				fillRAM(rng, ram[p*PageBytes:(p+1)*PageBytes])
			}
		}
		sums := make([]uint32, n)
		for p := range sums {
			sums[p] = pageSum(ram[p*PageBytes : (p+1)*PageBytes])
		}
		crc := foldPageSums(sums)
		if want := crc32.Checksum(ram, castagnoli); crc != want {
			t.Fatalf("%d pages: folded %#x, crc32c %#x", n, crc, want)
		}
		for range 50 {
			j := rng.IntN(n)
			page := ram[j*PageBytes : (j+1)*PageBytes]
			if rng.IntN(4) == 0 {
				clear(page)
			} else {
				page[rng.IntN(PageBytes)] ^= byte(1 + rng.IntN(255))
			}
			g := pageSum(page)
			crc ^= chunkPageChange(sums[j], g, j, n)
			sums[j] = g
			if want := crc32.Checksum(ram, castagnoli); crc != want {
				t.Fatalf("%d pages, page %d changed: kept %#x, crc32c %#x", n, j, crc, want)
			}
		}
	}
	if pageSum(zeroPage[:]) != 0 {
		t.Fatal("a zero page's sum is not 0")
	}
}
