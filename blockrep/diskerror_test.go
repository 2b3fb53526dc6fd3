package blockrep

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// The tests of this file are about a disk that fails an fdatasync or a
// write, after review of the handling of failed fdatasyncs (Store.syncFailed).

// A repair (here: of a corrupt block a read finds) whose write fails on
// the primary's own disk makes the primary step down, as any failed local
// write does: its copy is suspect, and the next FLUSH must not succeed.
func TestFailedRepairWriteStepsDown(t *testing.T) {
	c := newTestCluster(t, 3, 16<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const off = 8 << 20 // extent 2
	if err := p.WriteAt(randomBlock(1), off, false); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAt(randomBlock(2), 0, false); err != nil { // extent 0
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	st := c.replicaOf(1).Store()
	// Extent 2 has gone cold, so the repair's write makes the activity
	// log evict, and the eviction's fdatasync fails.
	st.al.mu.Lock()
	delete(st.al.hot, 2)
	st.al.capacity = 1
	st.al.syncData = func() error { return st.syncFailed(unix.EIO) }
	st.al.mu.Unlock()
	flipByte(t, filepath.Join(c.nodeDir(1), "data"), off+5)
	_ = p.ReadAt(make([]byte, BlockBytes), off)
	if _, whole := st.Recovered(); !whole {
		t.Fatal("the failed fdatasync did not record the whole copy as suspect")
	}
	if p.Deposed() == nil {
		t.Fatalf("the primary keeps serving after its disk failed a repair; the next FLUSH: %v", p.Flush())
	}
}

// closedFile opens f's file again and closes it: put in f's place, it
// makes every fdatasync (and write) fail, standing for a failing disk.
func closedFile(t *testing.T, f *os.File) *os.File {
	t.Helper()
	bad, err := os.Open(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	bad.Close()
	return bad
}

func extentPayload(es ...int64) []byte {
	var b []byte
	for _, e := range es {
		b = binary.BigEndian.AppendUint64(b, uint64(e))
	}
	return b
}

// A MsgResolve whose flush fails leaves the copy suspect as a whole; a
// second MsgResolve under the same promise (the primary retrying without
// comparing again) must not clear it, whether the record named extents
// or the whole volume before. After a new promise (the rejoin) and a
// comparison of the whole volume, it resolves.
func TestResolveAfterFailedFlushNeedsNewComparison(t *testing.T) {
	for _, wholeBefore := range []bool{false, true} {
		r, err := OpenReplica(t.TempDir(), ReplicaOptions{Self: 2, VolumeID: 1, SizeBytes: 8 << 20, Members: []NodeID{1, 2, 3}})
		if err != nil {
			t.Fatal(err)
		}
		if _, ref, err := r.Prepare(1, 1); err != nil || ref != nil {
			t.Fatal(err, ref)
		}
		var payload []byte
		if wholeBefore {
			r.store.rec.markWhole()
			r.syncFailuresAtPromise = r.store.SyncFailures() // as if it had promised after that
			if a := r.Handle(&Message{Type: MsgResolve, Volume: 1, From: 1, Epoch: 1, Payload: extentPayload(1)}); a.Type == MsgResolveOK {
				t.Fatal("resending extents resolved a record of the whole volume")
			}
		} else {
			r.store.rec.add([]int64{1})
			payload = extentPayload(1)
		}
		if ref, err := r.Write(1, Gen{}, true, randomBlock(3), 4<<20, false); err != nil || ref != nil { // a resent block
			t.Fatal(err, ref)
		}
		st := r.store
		good := st.data
		st.data = closedFile(t, good) // its writeback fails; fdatasync reports that once
		a := r.Handle(&Message{Type: MsgResolve, Volume: 1, From: 1, Epoch: 1, Payload: payload})
		st.data = good
		if a.Type != MsgFailed {
			t.Fatalf("wholeBefore=%v: a resolve whose flush failed answered %v", wholeBefore, a.Type)
		}
		a = r.Handle(&Message{Type: MsgResolve, Volume: 1, From: 1, Epoch: 1, Payload: payload})
		if a.Type == MsgResolveOK {
			t.Fatalf("wholeBefore=%v: a resolve under the same promise after a failed flush was taken", wholeBefore)
		}
		if _, whole := st.Recovered(); !whole {
			t.Fatalf("wholeBefore=%v: the whole-volume mark was cleared", wholeBefore)
		}
		a = r.Handle(&Message{Type: MsgResolve, Volume: 1, From: 1, Epoch: 1, Payload: extentPayload(0, 1)})
		if a.Type == MsgResolveOK {
			t.Fatalf("wholeBefore=%v: resending extents resolved a copy suspect as a whole", wholeBefore)
		}
		if _, ref, err := r.Prepare(1, 1); err != nil || ref != nil { // the rejoin
			t.Fatal(err, ref)
		}
		a = r.Handle(&Message{Type: MsgResolve, Volume: 1, From: 1, Epoch: 1})
		if a.Type != MsgResolveOK || r.store.Recovering() {
			t.Fatalf("wholeBefore=%v: the whole comparison after a new promise did not resolve: %v %s", wholeBefore, a.Type, a.Payload)
		}
		r.Close()
	}
}

// After a failed fdatasync whose whole-volume mark could not be saved,
// Close must not write a clean activity log (its own fdatasync succeeds:
// the error was reported once): the next open re-verifies and records
// the hot extents.
func TestCloseAfterFailedSyncLeavesLogDirty(t *testing.T) {
	s, dir := newStore(t, 16<<20, StoreOptions{ALExtents: 8})
	if err := s.WriteAt(randomBlock(4), 0, false); err != nil {
		t.Fatal(err)
	}
	_ = s.syncFailed(unix.EIO)
	os.Remove(filepath.Join(dir, recoveredFileName)) // as if the save had failed
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenStore(dir, StoreOptions{ALExtents: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if es, whole := s2.Recovered(); !whole && len(es) == 0 {
		t.Fatal("Close wrote a clean log after a failed fdatasync: nothing is re-verified or recorded")
	}
}

// A fenced (or deposed) primary repairs nothing into its replica: its
// node may be a newer primary's replica already.
func TestFencedPrimaryRepairsNothing(t *testing.T) {
	c := newTestCluster(t, 3, 8<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.WriteAt(randomBlock(5), 8*BlockBytes, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	flipByte(t, filepath.Join(c.nodeDir(1), "data"), 8*BlockBytes+77)
	p.Fence(errors.New("lost quorum past the lease"))
	if err := p.WriteAt(make([]byte, 512), 8*BlockBytes+1024, false); err == nil {
		t.Fatal("a fenced primary took a write")
	}
	if n := p.repaired.Load(); n > 0 {
		t.Fatalf("a fenced primary wrote %d repaired block(s) into its replica", n)
	}
}
