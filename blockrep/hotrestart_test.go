package blockrep

import (
	"bytes"
	"slices"
	"testing"
)

// Issue 4: the primary crashes with a write in flight that reached one
// secondary (node 2) and not the other (node 3); both secondaries then
// restart cleanly (a host reboot) before a new primary is made. The write
// was never acknowledged, so either value is acceptable, but the copies
// must end byte-identical (DESIGN invariant 5). A clean stop used to drop
// the hot extents from the activity log, so no promise named that extent
// and nothing compared it: the copies stayed different for good.
func TestCleanRestartKeepsHotExtentsNamed(t *testing.T) {
	c := newTestCluster(t, 3, 8<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	const off = ExtentBytes + 64<<10
	old, fresh := bytes.Repeat([]byte{1}, 64<<10), bytes.Repeat([]byte{2}, 64<<10)
	if err := p.WriteAt(old, off, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	// The write in flight: it reached node 2's store only.
	if err := c.replicaOf(2).Store().WriteAt(fresh, off, false); err != nil {
		t.Fatal(err)
	}
	p.Close()
	c.kill(1) // the old primary never returns
	for _, id := range []NodeID{2, 3} {
		addr := c.kill(id) // a clean stop: Close
		c.start(id, addr)
	}
	if bytes.Equal(c.dataOf(2), c.dataOf(3)) {
		t.Fatal("test setup: the copies should differ before the promotion")
	}
	p3, err := c.promote(3)
	if err != nil {
		t.Fatal(err)
	}
	defer p3.Close()
	waitMembers(t, p3, 2)
	if err := p3.Flush(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.dataOf(2), c.dataOf(3)) {
		t.Fatal("nodes 2 and 3 differ after the promotion's resync: the extent the crashed primary's write reached on node 2 only was never compared")
	}
}

// The activity log keeps its hot extents across a clean stop without a
// re-verify, keeps them after the next start, and still evicts down to
// its capacity on new writes (a smaller capacity at the next start).
func TestActivityLogHotSurvivesCleanStop(t *testing.T) {
	s, dir := newStore(t, 64<<20, StoreOptions{ALExtents: 4})
	for _, e := range []int64{1, 3, 5} {
		if err := s.WriteAt(bytes.Repeat([]byte{7}, 4096), e*ExtentBytes, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(dir, StoreOptions{ALExtents: 2})
	if err != nil {
		t.Fatal(err)
	}
	if rec, whole := s.Recovered(); whole || len(rec) != 0 {
		t.Fatalf("a clean stop left recovered extents %v (whole %v)", rec, whole)
	}
	if hot := s.HotExtents(); !slices.Equal(hot, []int64{1, 3, 5}) {
		t.Fatalf("hot after a clean restart: %v, want [1 3 5]", hot)
	}
	if err := s.WriteAt(bytes.Repeat([]byte{8}, 4096), 9*ExtentBytes, false); err != nil {
		t.Fatal(err)
	}
	if hot := s.HotExtents(); len(hot) > 2 || !slices.Contains(hot, 9) {
		t.Fatalf("hot after a write with capacity 2: %v", hot)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
