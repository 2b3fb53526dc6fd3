package blockrep

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// withCRC returns a copy of b whose last 4 bytes are changed so that the
// block's crc32c is want. crc32c over a fixed length is affine in the
// bits, so the 32 bits of the tail are solved for by elimination over
// GF(2): each tail bit flips a fixed pattern of the checksum.
func withCRC(b []byte, want uint32) []byte {
	out := bytes.Clone(b)
	tail := len(out) - 4
	clear(out[tail:])
	base := blockSum(out)
	// pivot[k]: a combination of tail bits (bits) whose effect (eff) has
	// its highest set bit at k.
	type combo struct{ eff, bits uint32 }
	var pivot [32]combo
	var have [32]bool
	for i := 0; i < 32; i++ {
		flipped := bytes.Clone(out)
		flipped[tail+i/8] ^= 1 << (i % 8)
		c := combo{blockSum(flipped) ^ base, 1 << i}
		for k := 31; k >= 0 && c.eff != 0; k-- {
			if c.eff>>k&1 == 0 {
				continue
			}
			if !have[k] {
				pivot[k], have[k] = c, true
				break
			}
			c.eff ^= pivot[k].eff
			c.bits ^= pivot[k].bits
		}
	}
	need, bits := base^want, uint32(0)
	for k := 31; k >= 0; k-- {
		if need>>k&1 == 0 {
			continue
		}
		if !have[k] {
			panic("crc32c tail bits do not span the checksum")
		}
		need ^= pivot[k].eff
		bits ^= pivot[k].bits
	}
	for i := 0; i < 32; i++ {
		if bits>>i&1 != 0 {
			out[tail+i/8] ^= 1 << (i % 8)
		}
	}
	return out
}

func randomBlock(seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, BlockBytes)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// A stored checksum of 0 means "never written" (or punched) and also
// "a block whose crc32c is 0": the checksum digest must not take the
// second for a zero block. Zero blocks, however they came to be (never
// written, punched, written as zeroes, zeroes written with a stored 0 as
// a filesystem without hole punching leaves them), still agree.
func TestSumDigestsTellACRCZeroBlockFromAZeroBlock(t *testing.T) {
	x := withCRC(randomBlock(7), 0)
	if blockSum(x) != 0 || bytes.Equal(x, make([]byte, BlockBytes)) {
		t.Fatal("withCRC did not make a non-zero block with crc32c 0")
	}
	const size, rb = 8 << 20, 64 << 10
	crc0, _ := newStore(t, size, StoreOptions{})
	defer crc0.Close()
	if err := crc0.WriteAt(x, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	zeroes := map[string]*Store{}
	never, _ := newStore(t, size, StoreOptions{})
	zeroes["never written"] = never
	punched, _ := newStore(t, size, StoreOptions{})
	if err := punched.WriteAt(x, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := punched.Zero(1<<20, BlockBytes, false); err != nil {
		t.Fatal(err)
	}
	zeroes["punched"] = punched
	written, _ := newStore(t, size, StoreOptions{})
	if err := written.WriteAt(make([]byte, BlockBytes), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	zeroes["written as zeroes"] = written
	allocated, dir := newStore(t, size, StoreOptions{})
	if err := allocated.WriteAt(x, 1<<20, false); err != nil { // allocates the block, stores 0
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(make([]byte, BlockBytes), 1<<20) // zeroes on disk, checksum still 0
	f.Close()
	zeroes["allocated zeroes with a stored 0"] = allocated
	want, err := crc0.sumDigests(0, size, rb)
	if err != nil {
		t.Fatal(err)
	}
	var ref []uint64
	for name, s := range zeroes {
		defer s.Close()
		got, err := s.sumDigests(0, size, rb)
		if err != nil {
			t.Fatal(name, err)
		}
		if got[1<<20/rb] == want[1<<20/rb] {
			t.Errorf("%s: a block whose crc32c is 0 compares equal to a zero block", name)
		}
		if ref == nil {
			ref = got
		}
		for i := range got {
			if got[i] != ref[i] {
				t.Errorf("%s: region %d differs from another zero volume's", name, i)
			}
			if i != 1<<20/rb && got[i] != want[i] {
				t.Errorf("%s: region %d differs, where both volumes are zero", name, i)
			}
		}
	}
}

// End to end: a replica acknowledged a write of a block whose crc32c is 0
// over zeroes and lost it in a power loss; the restarted replica's
// recovered extent is compared by checksum digests and the write is
// resent.
func TestLostWriteOfCRCZeroBlockIsResent(t *testing.T) {
	c := newTestCluster(t, 3, 8<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	x := withCRC(randomBlock(3), 0)
	zero := make([]byte, BlockBytes)
	const off = 1 << 20
	al := writeThenLoseAt(t, c, p, 3, off, zero, x)
	p.Close()
	addr := c.crashLosingWrite(3, al, off, zero)
	c.start(3, addr)
	p2, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	waitSynced(t, p2, 3)
	if err := p2.Flush(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.dataOf(1), c.dataOf(3)) {
		t.Fatal("replica 3 rejoined without the write of a block whose crc32c is 0 it had lost")
	}
}

// A checksum digest request that fails on the replica is answered with a
// failure that can be sent (a reply carrying FlagSums on MsgFailed would
// be refused by Encode and never reach the primary).
func TestFailedSumDigestRequestIsAnswered(t *testing.T) {
	r, err := OpenReplica(t.TempDir(), ReplicaOptions{Self: 2, VolumeID: 7, SizeBytes: 8 << 20, Members: []NodeID{1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// A region the store refuses (off not on a region) stands for any
	// failure, an I/O error reading the checksum file included.
	m := &Message{Type: MsgDigest, Flags: FlagSums, Volume: 7, From: 1, Epoch: 1, Seq: 3, Offset: BlockBytes, Length: 1 << 20,
		Payload: binary.BigEndian.AppendUint64(nil, 64<<10)}
	reply := r.Handle(m)
	if reply.Type != MsgFailed {
		t.Fatalf("reply %v, want a failure", reply.Type)
	}
	if _, err := Encode(nil, reply); err != nil {
		t.Fatalf("the failure cannot be sent: %v", err)
	}
	m.Offset = 0
	reply = r.Handle(m)
	if reply.Type != MsgDigestOK || reply.Flags&FlagSums == 0 {
		t.Fatalf("reply %v flags %#x, want checksum digests", reply.Type, reply.Flags)
	}
}

// A write that covers a block in part keeps the rest of the block from the
// disk: if that block fails its checksum, the store refuses the write and
// changes nothing, rather than give the bad bytes a good checksum.
func TestPartialWriteOfCorruptBlockIsRefused(t *testing.T) {
	s, dir := newStore(t, 4<<20, StoreOptions{})
	defer s.Close()
	if err := s.WriteAt(bytes.Repeat([]byte{1}, 2*BlockBytes), 0, false); err != nil {
		t.Fatal(err)
	}
	flipByte(t, filepath.Join(dir, "data"), 100)
	before, _ := os.ReadFile(filepath.Join(dir, "data"))
	beforeSums, _ := os.ReadFile(filepath.Join(dir, "sums"))
	for _, w := range []struct{ off, n int64 }{{3000, 7}, {BlockBytes - 10, 20}, {512, BlockBytes}} {
		err := s.WriteAt(make([]byte, w.n), w.off, false)
		var ce *ChecksumError
		if !errors.As(err, &ce) || len(ce.Blocks) != 1 || ce.Blocks[0] != 0 {
			t.Fatalf("write %d+%d into a corrupt block: %v, want a checksum error for block 0", w.off, w.n, err)
		}
	}
	if err := s.Zero(100, 200, false); err == nil {
		t.Fatal("a zero of part of a corrupt block was taken")
	}
	after, _ := os.ReadFile(filepath.Join(dir, "data"))
	afterSums, _ := os.ReadFile(filepath.Join(dir, "sums"))
	if !bytes.Equal(before, after) || !bytes.Equal(beforeSums, afterSums) {
		t.Fatal("a refused write changed the data or the checksums")
	}
	// A write of the whole block replaces it.
	if err := s.WriteAt(bytes.Repeat([]byte{2}, BlockBytes), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt([]byte{3}, 5, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, BlockBytes)
	if err := s.ReadAt(got, 0); err != nil || got[5] != 3 || got[4] != 2 {
		t.Fatalf("after the whole-block write: %v, bytes %d %d", err, got[4], got[5])
	}
}

// Through the primary, a write that covers a corrupt block in part is not
// refused: the block is repaired from a replica first, and the write then
// lands on every replica.
func TestPartialWriteRepairsCorruptBlockFirst(t *testing.T) {
	c := newTestCluster(t, 3, 4<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	good := randomBlock(11)
	if err := p.WriteAt(good, 8*BlockBytes, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	flipByte(t, filepath.Join(c.nodeDir(1), "data"), 8*BlockBytes+77)
	if err := p.WriteAt([]byte("hello"), 8*BlockBytes+1000, false); err != nil {
		t.Fatalf("sub-block write over a block corrupt on the primary: %v", err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(good)
	copy(want[1000:], "hello")
	for _, id := range []NodeID{1, 2, 3} {
		got := c.dataOf(id)[8*BlockBytes : 9*BlockBytes]
		if !bytes.Equal(got, want) {
			t.Fatalf("node %d: the block is not the repaired block with the write", id)
		}
	}
	if p.Status().RepairedBlocks != 1 {
		t.Fatalf("repaired %d blocks, want 1", p.Status().RepairedBlocks)
	}
}

// A write covering in part a block that is corrupt on the primary and
// that no replica can supply fails with EIO before any replica is sent
// it, and the primary stays primary (before: the local write failed and
// the primary stepped down on every such write a guest retried).
func TestUnrepairablePartialWriteFailsWithoutSteppingDown(t *testing.T) {
	c := newTestCluster(t, 1, 4<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.WriteAt(randomBlock(12), 8*BlockBytes, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	flipByte(t, filepath.Join(c.nodeDir(1), "data"), 8*BlockBytes+77)
	for i := 0; i < 3; i++ {
		err := p.WriteAt(make([]byte, 512), 8*BlockBytes+1024, false)
		if !errors.Is(err, unix.EIO) {
			t.Fatalf("partial write %d into an unrepairable block: %v, want EIO", i, err)
		}
		if err := p.Zero(8*BlockBytes+100, 10, false, false, false); !errors.Is(err, unix.EIO) {
			t.Fatalf("partial zero %d into an unrepairable block: %v, want EIO", i, err)
		}
		if p.Deposed() != nil {
			t.Fatalf("the primary stepped down over a block a write covers in part: %v", p.Deposed())
		}
	}
	if c.replicaOf(1).Store().Recovering() {
		t.Fatal("a refused partial write recorded the extent as recovered")
	}
	// A write of the whole block replaces it.
	whole := randomBlock(13)
	if err := p.WriteAt(whole, 8*BlockBytes, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, BlockBytes)
	if err := p.ReadAt(got, 8*BlockBytes); err != nil || !bytes.Equal(got, whole) {
		t.Fatalf("after the whole-block write: %v", err)
	}
}

// A write that begins after Close's flush started is not covered by it:
// the clean record must not claim it, so a crash re-verifies its extent.
func TestCleanRecordDoesNotCoverLaterWrite(t *testing.T) {
	s, dir := newStore(t, 64<<20, StoreOptions{ALExtents: 8})
	since := s.al.markBeforeFlush()
	if err := s.syncFiles(); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt(bytes.Repeat([]byte{5}, BlockBytes), 20<<20, false); err != nil { // lands between the flush and the record
		t.Fatal(err)
	}
	if err := s.al.markClean(since); err != nil {
		t.Fatal(err)
	}
	s.al.close() // a crash right after the record
	s.closeFiles()
	s, err := OpenStore(dir, StoreOptions{ALExtents: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if rec, _ := s.Recovered(); len(rec) == 0 || rec[0] != 20<<20/ExtentBytes {
		t.Fatalf("recovered %v: the write after the flush was taken as durable", rec)
	}
}

// A write in flight when Close's flush begins may have its data land
// after fdatasync read the data file and its checksums before the
// checksum file's: it is done before the record is written, but the
// record must not say clean, or a crash loses it to recovery while the
// checksum digests already match a peer's.
func TestCleanRecordDoesNotCoverWriteInFlightDuringFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "activity")
	al, _, err := openActivityLog(path, 16, func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := al.touch(0, BlockBytes); err != nil { // the write begins
		t.Fatal(err)
	}
	since := al.markBeforeFlush() // Close, before its flush
	al.done(0, BlockBytes)        // the write ends during the flush
	if err := al.markClean(since); err != nil {
		t.Fatal(err)
	}
	al.close()
	al2, dirty, err := openActivityLog(path, 16, func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	al2.close()
	if len(dirty) == 0 {
		t.Fatal("the clean record covers a write that was in flight during the flush")
	}
}

// A write that fails on the primary's own replica after the peers took it
// (here: the data lands and the checksum file refuses the write) leaves
// this copy possibly older than theirs: the primary records the extent as
// recovered and steps down, and the next promotion here fetches the
// extent from a peer before it serves, so the copies agree again.
func TestLocalWriteFailureIsRecoveredFromPeers(t *testing.T) {
	c := newTestCluster(t, 3, 8<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	const off = 5 << 20
	if err := p.WriteAt(randomBlock(1), off, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	st := c.replicaOf(1).Store()
	rw := st.sums
	ro, err := os.Open(rw.Name())
	if err != nil {
		t.Fatal(err)
	}
	st.sums = ro // checksum writes fail with EBADF
	if err := p.WriteAt(randomBlock(2), off, false); err == nil {
		t.Fatal("a write that failed on the primary's replica was acknowledged")
	}
	st.sums = rw
	ro.Close()
	if p.Deposed() == nil {
		t.Fatal("the primary stays primary after its own replica failed a write")
	}
	if rec, _ := st.Recovered(); len(rec) != 1 || rec[0] != off/ExtentBytes {
		t.Fatalf("recovered %v, want the failed write's extent", rec)
	}
	p.Close()
	p2, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if err := p2.Flush(); err != nil {
		t.Fatal(err)
	}
	if st.Recovering() {
		t.Fatal("still recovering after the promotion fetched the extent")
	}
	if !bytes.Equal(c.dataOf(1), c.dataOf(2)) || !bytes.Equal(c.dataOf(1), c.dataOf(3)) {
		t.Fatal("the copies differ after the failed write was recovered")
	}
	if err := p2.ReadAt(make([]byte, BlockBytes), off); err != nil {
		t.Fatal(err)
	}
	if bad, err := st.VerifyBlocks(off, BlockBytes); err != nil || len(bad) != 0 {
		t.Fatalf("the primary's block fails its checksum after recovery: %v %v", bad, err)
	}
}

// A FLUSH that fails on the primary's own replica may have lost writes it
// acknowledged (the kernel drops or cleans the pages it could not write,
// and the next fdatasync succeeds), while the checksum file may hold
// their checksums: the primary steps down, the store records its whole
// copy as suspect, and the next promotion here compares the data (not
// the checksums) with a peer's and fetches what the disk lost.
func TestLocalFlushFailureIsRecoveredFromPeers(t *testing.T) {
	c := newTestCluster(t, 3, 8<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	const off = 5 << 20
	old, acked := randomBlock(1), randomBlock(2)
	if err := p.WriteAt(old, off, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAt(acked, off, false); err != nil { // acknowledged, not flushed
		t.Fatal(err)
	}
	st := c.replicaOf(1).Store()
	// The writeback of that write fails: its data never reaches the
	// disk (the old block stays there), its checksum does.
	if err := pwrite(st.data, old, off); err != nil {
		t.Fatal(err)
	}
	good := st.data
	st.data = closedFile(t, good) // fdatasync fails (EBADF standing for EIO)
	ferr := p.Flush()
	st.data = good
	if ferr == nil {
		t.Fatal("a FLUSH that failed on the primary's replica was acknowledged")
	}
	if p.Deposed() == nil {
		t.Fatal("the primary stays primary after its own replica failed a flush")
	}
	if _, whole := st.Recovered(); !whole {
		t.Fatal("a failed fdatasync did not record the whole copy as suspect")
	}
	p.Close()
	p2, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if st.Recovering() {
		t.Fatal("still recovering after the promotion compared the copy")
	}
	got := make([]byte, BlockBytes)
	if err := p2.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, acked) {
		t.Fatal("the acknowledged write the disk lost was not fetched back")
	}
	if !bytes.Equal(c.dataOf(1), c.dataOf(2)) || !bytes.Equal(c.dataOf(1), c.dataOf(3)) {
		t.Fatal("the copies differ after the failed flush was recovered")
	}
}
