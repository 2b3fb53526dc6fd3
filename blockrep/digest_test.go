package blockrep

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// Digests reads several regions at once now: every digest must still be
// the xxhash of its own region's bytes (peers of older versions compare
// against them), for regions smaller and larger than one read, and a
// short last region at the end of the volume.
func TestDigestsAreRegionHashes(t *testing.T) {
	const size = 12<<20 + 12<<10
	r, err := OpenReplica(filepath.Join(t.TempDir(), "r"), ReplicaOptions{Self: 1, VolumeID: 1, SizeBytes: size, Members: []NodeID{1}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if err := r.Store().WriteAt(data, 0, false); err != nil {
		t.Fatal(err)
	}
	for _, rb := range []int64{BlockBytes, 64 << 10, 1 << 20, 3 << 20, 8 << 20} {
		for _, span := range [][2]int64{{0, size}, {rb, min(size-rb, 5*rb+BlockBytes)}} {
			off, n := span[0], span[1]
			ds, err := r.Digests(off, n, rb)
			if err != nil {
				t.Fatal(rb, err)
			}
			want := (n + rb - 1) / rb
			if int64(len(ds)) != want {
				t.Fatalf("region %d, %d+%d: %d digests, want %d", rb, off, n, len(ds), want)
			}
			for i, d := range ds {
				a := off + int64(i)*rb
				b := min(a+rb, off+n)
				if d != xxhash.Sum64(data[a:b]) {
					t.Fatalf("region %d, %d+%d: digest %d is not the hash of %d..%d", rb, off, n, i, a, b)
				}
			}
		}
	}
}

// Checksum digests stand for the data: two stores that hold the same
// bytes get the same digest per region however the bytes got there (a
// block written with zeroes, punched by Zero, never written), a changed
// byte changes exactly its region's digest, and each digest is the
// xxhash of the crc32c values of its region's blocks as the data gives
// them.
func TestSumDigestsStandForTheData(t *testing.T) {
	const size = 12<<20 + 12<<10
	a, _ := newStore(t, size, StoreOptions{})
	defer a.Close()
	b, _ := newStore(t, size, StoreOptions{})
	defer b.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	data := make([]byte, size)
	// Random data with zero stretches: the first 1 MiB is left zero (a
	// never written in a; b writes zeroes there), the next one b
	// writes random data to and then zeroes (punched).
	for i := 2 << 20; i < size; i++ {
		data[i] = byte(rng.Uint32())
	}
	for i := 5 << 20; i < 6<<20; i++ {
		data[i] = 0
	}
	if err := a.WriteAt(data[1<<20:], 1<<20, false); err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 1<<20)
	for i := range junk {
		junk[i] = byte(rng.Uint32())
	}
	if err := b.WriteAt(data, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAt(junk, 5<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := b.Zero(5<<20, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := a.Zero(5<<20+4096, 8192, false); err != nil { // already zero
		t.Fatal(err)
	}
	reference := func(off, n, rb int64) []uint64 {
		var out []uint64
		for o := off; o < off+n; o += rb {
			var sums []byte
			for blk := o; blk < min(o+rb, off+n); blk += BlockBytes {
				sums = binary.LittleEndian.AppendUint32(sums, blockSum(data[blk:blk+BlockBytes]))
			}
			out = append(out, xxhash.Sum64(sums))
		}
		return out
	}
	for _, rb := range []int64{BlockBytes, 64 << 10, 1 << 20, 3 << 20, 8 << 20} {
		for _, span := range [][2]int64{{0, size}, {rb, min(size-rb, 5*rb+BlockBytes)}} {
			off, n := span[0], span[1]
			da, err := a.sumDigests(off, n, rb)
			if err != nil {
				t.Fatal(rb, err)
			}
			db, err := b.sumDigests(off, n, rb)
			if err != nil {
				t.Fatal(rb, err)
			}
			if want := reference(off, n, rb); !slices.Equal(da, want) || !slices.Equal(db, want) {
				t.Fatalf("region %d, %d+%d: digests differ from the data's checksums", rb, off, n)
			}
		}
	}
	// One byte changed: its region alone differs.
	const rb = 64 << 10
	at := int64(7<<20 + 12345)
	if err := b.WriteAt([]byte{data[at] ^ 0x40}, at, false); err != nil {
		t.Fatal(err)
	}
	da, _ := a.sumDigests(0, size, rb)
	db, _ := b.sumDigests(0, size, rb)
	for i := range da {
		if differ := da[i] != db[i]; differ != (int64(i) == at/rb) {
			t.Fatalf("region %d: differ %v after a write to region %d", i, differ, at/rb)
		}
	}
	if _, err := a.sumDigests(BlockBytes, rb, rb); err == nil {
		t.Fatal("an unaligned span was digested")
	}
	if _, err := a.sumDigests(size-rb, 2*rb, rb); err == nil {
		t.Fatal("a span past the end was digested")
	}
}

// A write whose data landed and whose checksum did not before a crash is
// in a hot extent; the open re-verifies it, so the checksum digest then
// shows the data that is there, not what the checksum said before.
func TestSumDigestsAfterTornWrite(t *testing.T) {
	s, dir := newStore(t, 64<<20, StoreOptions{ALExtents: 4})
	if err := s.WriteAt(bytes.Repeat([]byte{1}, 4096), 10<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	before, err := s.sumDigests(8<<20, 4<<20, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte{2}, 4096), 10<<20) // no checksum
	f.Close()
	s.al.close() // a crash: no Close
	s.closeFiles()
	s, err = OpenStore(dir, StoreOptions{ALExtents: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	after, err := s.sumDigests(8<<20, 4<<20, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	changed := 0
	for i := range before {
		if before[i] != after[i] {
			changed++
			if i != (10<<20-8<<20)/(64<<10) {
				t.Fatalf("region %d changed", i)
			}
		}
	}
	if changed != 1 {
		t.Fatalf("%d regions changed, want the torn write's", changed)
	}
}
