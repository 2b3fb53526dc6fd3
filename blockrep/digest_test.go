package blockrep

import (
	"math/rand/v2"
	"path/filepath"
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
