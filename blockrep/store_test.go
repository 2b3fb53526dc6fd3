package blockrep

import (
	"bytes"
	"errors"
	"flag"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"pgregory.net/rapid"
)

func newStore(t testing.TB, size int64, o StoreOptions) (*Store, string) {
	dir := filepath.Join(t.TempDir(), "vol")
	s, err := CreateStore(dir, size, o)
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func TestStoreRoundTripAndZero(t *testing.T) {
	s, _ := newStore(t, 16<<20, StoreOptions{})
	defer s.Close()
	want := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(want)
	if err := s.WriteAt(want, 3<<20+100, false); err != nil { // unaligned
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if err := s.ReadAt(got, 3<<20+100); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back: %v", err)
	}
	// Zero a range with partial edges and whole blocks inside.
	if err := s.Zero(3<<20+5000, 100000, true); err != nil {
		t.Fatal(err)
	}
	copy(want[5000-100:], make([]byte, 100000))
	if err := s.ReadAt(got, 3<<20+100); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after zero: %v", err)
	}
	// Never-written blocks verify as zeroes.
	if bad, err := s.VerifyBlocks(0, 16<<20); err != nil || len(bad) != 0 {
		t.Fatalf("verify: %v %v", bad, err)
	}
	if err := s.ReadAt(got, 16<<20-100); err == nil {
		t.Fatal("read past the end accepted")
	}
	if err := s.WriteAt(got[:200], 16<<20-100, false); err == nil {
		t.Fatal("write past the end accepted")
	}
}

// TestStoreFindsCorruption flips bytes in the data file behind the store's
// back: reads and scrub name exactly those blocks.
func TestStoreFindsCorruption(t *testing.T) {
	s, dir := newStore(t, 8<<20, StoreOptions{})
	data := bytes.Repeat([]byte{0xab}, 8<<20)
	if err := s.WriteAt(data, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{5, 4096*7 + 100, 8<<20 - 1} {
		f.WriteAt([]byte{0x00}, off)
	}
	f.Close()
	s, err = OpenStore(dir, StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Recovering() {
		rec, whole := s.Recovered()
		t.Fatalf("clean shutdown, yet recovered %v (whole %v)", rec, whole)
	}
	bad, err := s.VerifyBlocks(0, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{0, 7, 8<<20/4096 - 1}
	if len(bad) != 3 || bad[0] != want[0] || bad[1] != want[1] || bad[2] != want[2] {
		t.Fatalf("bad blocks %v, want %v", bad, want)
	}
	var ce *ChecksumError
	if err := s.ReadAt(make([]byte, 4096), 7*4096); !errors.As(err, &ce) || ce.Blocks[0] != 7 {
		t.Fatalf("read of a corrupt block: %v", err)
	}
	// Rewriting the block repairs it.
	if err := s.WriteAt(bytes.Repeat([]byte{0xab}, 4096), 7*4096, false); err != nil {
		t.Fatal(err)
	}
	if err := s.ReadAt(make([]byte, 4096), 7*4096); err != nil {
		t.Fatalf("after repair: %v", err)
	}
}

// TestStoreCrashRecovery: a crash can leave data newer than its checksums,
// but only in extents the activity log names; those are re-verified at open,
// and corruption elsewhere is still found.
func TestStoreCrashRecovery(t *testing.T) {
	s, dir := newStore(t, 64<<20, StoreOptions{ALExtents: 4})
	if err := s.WriteAt(bytes.Repeat([]byte{1}, 4096), 10<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	// "Crash": no Close. Then a torn write: data landed, checksum did not.
	f, _ := os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR, 0)
	f.WriteAt(bytes.Repeat([]byte{2}, 4096), 10<<20)
	// And a corruption in an extent no write touched.
	f.WriteAt([]byte{9}, 40<<20)
	f.Close()
	s.al.close()
	s.closeFiles()

	s, err := OpenStore(dir, StoreOptions{ALExtents: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if rec, whole := s.Recovered(); whole || len(rec) != 1 || rec[0] != 10<<20/ExtentBytes {
		t.Fatalf("recovered %v (whole %v), want the extent of the last write", rec, whole)
	}
	if err := s.ReadAt(make([]byte, 4096), 10<<20); err != nil {
		t.Fatalf("torn write reported as corruption after recovery: %v", err)
	}
	if bad, _ := s.VerifyBlocks(0, 64<<20); len(bad) != 1 || bad[0] != 40<<20/4096 {
		t.Fatalf("corruption outside the log: %v", bad)
	}
}

// TestActivityLogWritesOnlyOnColdExtents: the log is written when a write
// reaches a cold extent, not per write.
func TestActivityLogWritesOnlyOnColdExtents(t *testing.T) {
	s, _ := newStore(t, 64<<20, StoreOptions{ALExtents: 2})
	defer s.Close()
	base := s.al.updates
	buf := make([]byte, 4096)
	for i := 0; i < 100; i++ {
		s.WriteAt(buf, int64(i%16)*4096, false) // all in extent 0
	}
	if n := s.al.updates - base; n != 1 {
		t.Fatalf("%d log writes for 100 writes to one extent", n)
	}
	for e := int64(1); e <= 4; e++ {
		s.WriteAt(buf, e*ExtentBytes, false)
	}
	if n := len(s.al.hot); n != 2 {
		t.Fatalf("%d hot extents with a capacity of 2", n)
	}
}

// TestStoreModel runs random writes, zeroes, clean reopens and crashes
// against an in-memory model.
func TestStoreModel(t *testing.T) {
	if raceEnabled {
		if f := flag.Lookup("rapid.checks"); f != nil && f.Value.String() == "100" {
			f.Value.Set("15")
			defer f.Value.Set("100")
		}
	}
	rapid.Check(t, func(rt *rapid.T) {
		const size = 12 << 20
		dir := filepath.Join(fastTempDir(t), "vol")
		s, err := CreateStore(dir, size, StoreOptions{ALExtents: 2})
		if err != nil {
			rt.Fatal(err)
		}
		model := make([]byte, size)
		for i := 0; i < 20; i++ {
			switch rapid.IntRange(0, 4).Draw(rt, "op") {
			case 0, 1:
				off := rapid.Int64Range(0, size-1).Draw(rt, "off")
				n := rapid.Int64Range(1, min(size-off, 200000)).Draw(rt, "n")
				p := bytes.Repeat([]byte{byte(off), byte(off >> 8), byte(i), 0x5a}, int(n+3)/4)[:n]
				if err := s.WriteAt(p, off, false); err != nil {
					rt.Fatal(err)
				}
				copy(model[off:], p)
			case 2:
				off := rapid.Int64Range(0, size-1).Draw(rt, "zoff")
				n := rapid.Int64Range(1, min(size-off, 300000)).Draw(rt, "zn")
				if err := s.Zero(off, n, false); err != nil {
					rt.Fatal(err)
				}
				clear(model[off : off+n])
			case 3:
				if err := s.Close(); err != nil {
					rt.Fatal(err)
				}
				if s, err = OpenStore(dir, StoreOptions{ALExtents: 2}); err != nil {
					rt.Fatal(err)
				}
			case 4:
				// A crash after a flush: the page cache survives a
				// process crash, so the data must all be there.
				s.Flush()
				s.al.close()
				s.closeFiles()
				if s, err = OpenStore(dir, StoreOptions{ALExtents: 2}); err != nil {
					rt.Fatal(err)
				}
			}
		}
		got := make([]byte, size)
		if err := s.ReadAt(got, 0); err != nil {
			rt.Fatalf("final read: %v", err)
		}
		if !bytes.Equal(got, model) {
			rt.Fatal("store differs from model")
		}
		s.Close()
	})
}

// fastTempDir is a temporary directory on tmpfs where there is one: the
// model test syncs often, and syncs to a disk would only make it slow.
func fastTempDir(t *testing.T) string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "paddock-test-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}
