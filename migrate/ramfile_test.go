package migrate

import (
	"bytes"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"testing"
)

// TestRAMFilePath: the bulk pass's file path (pread on the source's memfd,
// pwrite on the destination's, the digest read back with pread) moves
// every page and yields the same chunk checksums as hashing the mappings.
// Half the pages are zero, so zero and raw frames alternate.
func TestRAMFilePath(t *testing.T) {
	const ramBytes = 3*DigestChunkBytes + 5*PageBytes // a short last chunk
	src, err := NewMemory("test-src", ramBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := NewMemory("test-dst", ramBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	rng := rand.New(rand.NewPCG(7, 8))
	for p := 0; p < src.Pages(); p += 2 {
		fillRAM(rng, src.Page(p))
	}
	sfd, dfd := ramFile(src.Bytes()), ramFile(dst.Bytes())
	if sfd < 0 || dfd < 0 {
		t.Fatalf("no memfd found for a Memory's mapping: %d %d", sfd, dfd)
	}
	defer closeRAMFile(sfd)
	defer closeRAMFile(dfd)
	if ramFile(src.Bytes()[PageBytes:]) >= 0 {
		t.Fatal("a part of a mapping taken for a Memory's whole RAM")
	}

	var wire bytes.Buffer
	enc, _ := NewEncoder(&wire, EncoderOptions{Compression: CompressNone})
	srcDigest, _ := NewRAMDigest(ramBytes)
	pages := src.Pages()
	for c := 0; c*chunkPages < pages; c++ {
		from, to := c*chunkPages, min((c+1)*chunkPages, pages)
		crc, err := enc.WriteRunFile(sfd, uint64(from), to-from, nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := crc32.Checksum(src.Bytes()[from*PageBytes:to*PageBytes], castagnoli); crc != want {
			t.Fatalf("chunk %d: checksum %#x of the pages sent, %#x of RAM", c, crc, want)
		}
		srcDigest.SetChunk(c, crc)
	}
	if _, err := enc.WriteRunFile(sfd, 0, MaxPagesPerFrame+1, nil); err == nil {
		t.Fatal("WriteRunFile beyond one frame's pages")
	}
	enc.Flush()

	dec := NewDecoder(&wire, uint64(pages))
	dec.SetRAMFile(dfd)
	dec.SetSkipZero(true)
	applyAll(t, dec, dst.Bytes())
	if !bytes.Equal(src.Bytes(), dst.Bytes()) {
		t.Fatal("destination RAM differs from the source's")
	}
	dstDigest, _ := NewRAMDigest(ramBytes)
	buf := make([]byte, DigestChunkBytes)
	for c := range dstDigest.Chunks() {
		if err := dstDigest.UpdateChunkFile(dfd, c, buf); err != nil {
			t.Fatal(err)
		}
	}
	if dstDigest.Sum() != srcDigest.Sum() {
		t.Fatalf("digests differ at chunk %d", dstDigest.FirstDifference(srcDigest))
	}
	mapped, _ := NewRAMDigest(ramBytes)
	mapped.UpdateAll(dst.Bytes(), 2)
	if mapped.Sum() != dstDigest.Sum() {
		t.Fatal("digest read with pread differs from the one read through the mapping")
	}
	// Later rounds: batches of scattered pages, as deltas, s2, zero and
	// raw records, all written through the file.
	enc2, _ := NewEncoder(&wire, EncoderOptions{Compression: CompressAuto, DeltaCacheBytes: 1 << 20})
	var list []uint64
	for p := 1; p < pages; p += 7 {
		list = append(list, uint64(p))
	}
	if err := enc2.WritePages(src.Bytes(), list); err != nil { // fills the delta cache
		t.Fatal(err)
	}
	for i, p := range list {
		page := src.Page(int(p))
		switch i % 4 {
		case 0:
			page[100] ^= 0xff // a delta
		case 1:
			clear(page)
		case 2:
			for j := range page {
				page[j] = byte(j % 3) // compressible
			}
		case 3:
			fillRAM(rng, page)
		}
	}
	if err := enc2.WritePages(src.Bytes(), list); err != nil {
		t.Fatal(err)
	}
	enc2.Flush()
	if enc2.Stats().DeltaPages == 0 || enc2.Stats().S2Pages == 0 || enc2.Stats().ZeroPages == 0 {
		t.Fatalf("the batches lack an encoding: %+v", enc2.Stats())
	}
	dec.SetSkipZero(false)
	applyAll(t, dec, dst.Bytes())
	if !bytes.Equal(src.Bytes(), dst.Bytes()) {
		t.Fatal("destination RAM differs from the source's after the batches")
	}
	for c := range dstDigest.Chunks() {
		dstDigest.UpdateChunkFile(dfd, c, buf)
		srcDigest.UpdateChunk(src.Bytes(), c)
	}

	// A wrong page in RAM shows in the digest read back from the file.
	dst.Page(pages - 1)[0] ^= 1
	if err := dstDigest.UpdateChunkFile(dfd, dstDigest.Chunks()-1, buf); err != nil {
		t.Fatal(err)
	}
	if dstDigest.FirstDifference(srcDigest) != dstDigest.Chunks()-1 {
		t.Fatal("a changed byte not seen by the digest")
	}
	srcRAM := src.Bytes()
	src.Close()
	if fd := ramFile(srcRAM); fd >= 0 {
		t.Fatal("a closed Memory's file found")
	}
}

// applyAll applies every page frame the decoder reads until EOF.
func applyAll(t *testing.T, dec *Decoder, ram []byte) {
	t.Helper()
	for {
		f, err := dec.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dec.ApplyPages(f, ram); err != nil {
			t.Fatal(err)
		}
	}
}
