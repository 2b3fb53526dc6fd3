package migrate

import (
	"hash/crc32"
	"io"
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

// TestSourceDigestPageByPage: the source's digest as the engine keeps it
// (bulk pass through WriteRunFile filling the page sums, then UpdatePage
// on pages after they change) equals a digest of RAM hashed afresh, also
// over a short last chunk.
func TestSourceDigestPageByPage(t *testing.T) {
	const ramBytes = 3*DigestChunkBytes + 5*PageBytes
	rng := rand.New(rand.NewPCG(7, 8))
	m, err := NewMemory("test-src-digest", ramBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	pages := m.Pages()
	for p := range pages {
		if p%3 != 0 {
			fillRAM(rng, m.Page(p))
		}
	}
	fd := ramFile(m.Bytes())
	defer closeRAMFile(fd)
	d, _ := NewRAMDigest(ramBytes)
	enc, _ := NewEncoder(io.Discard, EncoderOptions{Compression: CompressAuto})
	for c := 0; c*chunkPages < pages; c++ {
		from, to := c*chunkPages, min((c+1)*chunkPages, pages)
		crc, err := enc.WriteRunFile(fd, uint64(from), to-from, d.ChunkPageSums(c))
		if err != nil {
			t.Fatal(err)
		}
		d.SetChunkFromPageSums(c)
		if want := crc32.Checksum(m.Bytes()[from*PageBytes:to*PageBytes], castagnoli); crc != want {
			t.Fatalf("chunk %d: WriteRunFile returned %#x, crc32c %#x", c, crc, want)
		}
	}
	for round := range 5 {
		for range 200 {
			p := rng.IntN(pages)
			if rng.IntN(3) == 0 {
				clear(m.Page(p))
			} else {
				m.Page(p)[rng.IntN(PageBytes)] ^= byte(1 + rng.IntN(255))
			}
			d.UpdatePage(m.Bytes(), p)
		}
		fresh, _ := NewRAMDigest(ramBytes)
		fresh.UpdateAll(m.Bytes(), 2)
		if c := d.FirstDifference(fresh); c >= 0 {
			t.Fatalf("round %d: chunk %d kept page by page differs from RAM's", round, c)
		}
	}
	// A chunk set from a checksum alone has no page sums to update from.
	d.SetChunk(1, 0)
	defer func() {
		if recover() == nil {
			t.Fatal("UpdatePage on a chunk set by SetChunk did not panic")
		}
	}()
	d.UpdatePage(m.Bytes(), chunkPages+3)
}
