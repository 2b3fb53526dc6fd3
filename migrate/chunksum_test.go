package migrate

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// splitFrames cuts an encoder's output into its frames.
func splitFrames(t *testing.T, wire []byte) [][]byte {
	t.Helper()
	var frames [][]byte
	for len(wire) > 0 {
		if len(wire) < frameHeaderBytes {
			t.Fatalf("%d bytes left, less than a header", len(wire))
		}
		n := frameHeaderBytes + int(binary.LittleEndian.Uint32(wire[20:]))
		frames = append(frames, wire[:n])
		wire = wire[n:]
	}
	return frames
}

// TestChunkSumIsRAM: whatever page frames arrive, in whatever order, a
// chunk checksum the decoder vouches for (ChunkSum) is the checksum of the
// chunk as it is in RAM afterwards. The frames are a bulk pass of two
// different RAM contents (random, half-zero, zero, compressible chunks and
// chunks cut into several runs), some sub-runs and batches, applied in
// random order with drops and repeats, on fresh RAM with zero frames
// skipped (round 0), then a second round on the same RAM without.
func TestChunkSumIsRAM(t *testing.T) {
	const ramBytes = 5*DigestChunkBytes + 3*PageBytes // a short last chunk
	rng := rand.New(rand.NewPCG(11, 12))
	pages := ramBytes / PageBytes
	var pool [][]byte
	for v := range 2 {
		src, err := NewMemory("test-src", ramBytes)
		if err != nil {
			t.Fatal(err)
		}
		for p := range pages {
			page := src.Page(p)
			switch c := p / chunkPages; {
			case c == 0: // random
				for i := range page {
					page[i] = byte(rng.Uint32())
				}
			case c == 1: // half zero: a sparse frame
				if p%2 == 1 {
					page[rng.IntN(PageBytes)] = byte(1 + v)
				}
			case c == 2: // zero first half, then data: two runs
				if p%chunkPages >= chunkPages/2 {
					page[7] = byte(p + v)
				}
			case c == 3: // compressible
				for i := range page {
					page[i] = "the quick brown fox "[(i+p+v)%20]
				}
			case c == 4: // left zero in one version
				if v == 1 {
					fillRAM(rng, page)
				}
			default:
				page[0] = byte(v + 3)
			}
		}
		fd := ramFile(src.Bytes())
		var wire bytes.Buffer
		enc, _ := NewEncoder(&wire, EncoderOptions{Compression: CompressAuto})
		for c := 0; c*chunkPages < pages; c++ {
			from, to := c*chunkPages, min((c+1)*chunkPages, pages)
			if _, err := enc.WriteRunFile(fd, uint64(from), to-from, nil); err != nil {
				t.Fatal(err)
			}
		}
		// Sub-runs and a batch of scattered pages.
		if err := enc.WriteRun(10, src.Bytes()[10*PageBytes:40*PageBytes]); err != nil {
			t.Fatal(err)
		}
		if err := enc.WriteRun(chunkPages-2, src.Bytes()[(chunkPages-2)*PageBytes:(chunkPages+3)*PageBytes]); err != nil {
			t.Fatal(err)
		}
		// Overlaps chunk 2's two runs: with its first it adds up to a
		// chunk's pages without covering the chunk.
		if err := enc.WriteRun(2*chunkPages+64, src.Bytes()[(2*chunkPages+64)*PageBytes:(3*chunkPages-64)*PageBytes]); err != nil {
			t.Fatal(err)
		}
		if err := enc.WritePages(src.Bytes(), []uint64{3, 300, 301, 900, uint64(pages - 1)}); err != nil {
			t.Fatal(err)
		}
		enc.Flush()
		closeRAMFile(fd)
		src.Close()
		pool = append(pool, splitFrames(t, wire.Bytes())...)
	}

	vouched := 0
	for iter := range 150 {
		dst, err := NewMemory("test-dst", ramBytes)
		if err != nil {
			t.Fatal(err)
		}
		// Odd iterations write through the mapping, as for huge
		// page RAM, which takes no pwrite.
		dfd := -1
		if iter%2 == 0 {
			dfd = ramFile(dst.Bytes())
		}
		var wire bytes.Buffer
		n := 1 + rng.IntN(2*len(pool))
		for range n {
			wire.Write(pool[rng.IntN(len(pool))])
		}
		dec := NewDecoder(&wire, uint64(pages))
		if dfd >= 0 {
			dec.SetRAMFile(dfd)
		}
		touched := NewBitmap(pages)
		dec.SetTouched(touched)
		check := func(round int) {
			for c := 0; c*chunkPages < pages; c++ {
				crc, ok := dec.ChunkSum(c)
				if !ok {
					continue
				}
				vouched++
				from, to := c*chunkPages, min((c+1)*chunkPages, pages)
				if want := crc32.Checksum(dst.Bytes()[from*PageBytes:to*PageBytes], castagnoli); crc != want {
					t.Fatalf("iteration %d round %d: chunk %d vouched %#x, RAM holds %#x", iter, round, c, crc, want)
				}
				if touched.NextSet(from) < 0 || touched.NextSet(from) >= to {
					// Vouched for but not touched: the caller
					// would not look, which is fine, but a zero
					// chunk is the only one that may be so.
					if want := crc32.Checksum(make([]byte, (to-from)*PageBytes), castagnoli); crc != want {
						t.Fatalf("iteration %d: chunk %d vouched for, untouched and not zero", iter, c)
					}
				}
			}
		}
		dec.SetSkipZero(true)
		applyAll(t, dec, dst.Bytes())
		check(0)
		dec.ResetChunkSums()
		touched.Reset()
		dec.SetSkipZero(false)
		// Later rounds: the digest kept current from the page
		// changes the decoder records must be RAM's.
		kept, _ := NewRAMDigest(ramBytes)
		kept.UpdateAll(dst.Bytes(), 1)
		dec.SetPageChanges(true)
		for range 1 + rng.IntN(len(pool)) {
			wire.Write(pool[rng.IntN(len(pool))])
		}
		applyAll(t, dec, dst.Bytes())
		check(1)
		dec.TakePageChanges(kept.ApplyChunkChange)
		fresh, _ := NewRAMDigest(ramBytes)
		fresh.UpdateAll(dst.Bytes(), 1)
		if c := kept.FirstDifference(fresh); c >= 0 {
			t.Fatalf("iteration %d: chunk %d's checksum kept from page changes is not RAM's", iter, c)
		}
		dec.Close()
		if dfd >= 0 {
			closeRAMFile(dfd)
		}
		dst.Close()
	}
	t.Logf("%d chunk checksums vouched for, each checked against RAM", vouched)
	if vouched < 100 {
		t.Fatalf("only %d chunk checksums vouched for: the test checks too little", vouched)
	}
}
