package blockrep

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

func TestCRCCombine(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	buf := make([]byte, 3*BlockBytes+777)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	for i := 0; i < 200; i++ {
		a := rng.IntN(len(buf) + 1)
		b := a + rng.IntN(len(buf)-a+1)
		whole := crc32.Checksum(buf[:b], castagnoli)
		got := crcCombine(crc32.Checksum(buf[:a], castagnoli), crc32.Checksum(buf[a:b], castagnoli), int64(b-a))
		if got != whole {
			t.Fatalf("combine at %d of %d: %08x, want %08x", a, b, got, whole)
		}
	}
	blocks := buf[:3*BlockBytes]
	var sums []uint32
	for o := 0; o < len(blocks); o += BlockBytes {
		sums = append(sums, blockSum(blocks[o:o+BlockBytes]))
	}
	if got, want := crcOfBlocks(sums), crc32.Checksum(blocks, castagnoli); got != want {
		t.Fatalf("crc of blocks %08x, want %08x", got, want)
	}
	if crcOfBlocks(nil) != 0 {
		t.Fatal("crc of no blocks is not 0")
	}
}
