package migrate

import (
	"math/rand/v2"
	"testing"
)

func TestRAMDigest(t *testing.T) {
	const ramBytes = 5*DigestChunkBytes + 3*PageBytes // a short last chunk
	rng := rand.New(rand.NewPCG(5, 6))
	a := make([]byte, ramBytes)
	fillRAM(rng, a)
	b := append([]byte(nil), a...)
	da, _ := NewRAMDigest(ramBytes)
	db, _ := NewRAMDigest(ramBytes)
	if da.Chunks() != 6 {
		t.Fatalf("%d chunks", da.Chunks())
	}
	da.UpdateAll(a, 2)
	db.UpdateAll(b, 1)
	if da.Sum() != db.Sum() || da.FirstDifference(db) != -1 {
		t.Fatal("equal RAM, different digests")
	}
	// One byte in the last page of the short last chunk.
	b[ramBytes-1]++
	dirty := NewBitmap(ramBytes / PageBytes)
	dirty.Set(ramBytes/PageBytes - 1)
	db.UpdatePages(b, dirty, 2)
	if da.Sum() == db.Sum() || da.FirstDifference(db) != 5 {
		t.Fatalf("one byte changed: first difference %d", da.FirstDifference(db))
	}
	// UpdatePages touches only chunks with set pages.
	b[ramBytes-1]--
	b[0]++ // not marked: the digest must not see it
	db.UpdatePages(b, dirty, 2)
	if da.Sum() != db.Sum() {
		t.Fatal("UpdatePages rehashed an unmarked chunk, or missed the marked one")
	}
	if _, err := NewRAMDigest(100); err == nil {
		t.Fatal("digest of a partial page")
	}
}

func BenchmarkRAMDigest(b *testing.B) {
	ram := make([]byte, 256<<20)
	fillRAM(rand.New(rand.NewPCG(1, 2)), ram)
	d, _ := NewRAMDigest(int64(len(ram)))
	b.SetBytes(int64(len(ram)))
	for b.Loop() {
		d.UpdateAll(ram, 2)
	}
}
