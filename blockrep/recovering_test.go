package blockrep

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Issue 4: a secondary that crashed (power loss) may lack writes it
// acknowledged without a FLUSH, in the extents its activity log named.
// These tests make such a crash by hand: the log as it was with the write
// in it, and the data file holding the bytes from before the write.

// A whole extent is lost, so its resend (every region differs) takes a
// while under the tests' rate limits.
const recTestBytes = ExtentBytes

func (c *testCluster) nodeDir(id NodeID) string {
	return filepath.Join(c.baseDir, "n", string(rune('0'+id)))
}

func (c *testCluster) replicaOf(id NodeID) *Replica {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id].rep
}

// crashLosingWrite stops node id as a power loss would, given its activity
// log as it was before the crash: the log is put back (a clean stop marks
// it clean) and stale is written at off in its data file (the write it
// acknowledged did not reach the disk). The node is not started again.
func (c *testCluster) crashLosingWrite(id NodeID, al []byte, off int64, stale []byte) string {
	c.t.Helper()
	addr := c.kill(id)
	if err := os.WriteFile(filepath.Join(c.nodeDir(id), "activity"), al, 0o600); err != nil {
		c.t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(c.nodeDir(id), "data"), os.O_RDWR, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(stale, off); err != nil {
		c.t.Fatal(err)
	}
	return addr
}

func (c *testCluster) activityLog(id NodeID) []byte {
	c.t.Helper()
	b, err := os.ReadFile(filepath.Join(c.nodeDir(id), "activity"))
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

func (c *testCluster) promoteWith(id NodeID, tune func(*PrimaryConfig)) (*Primary, error) {
	cfg := PrimaryConfig{
		Self: id, VolumeID: testVolume, Replicas: c.ids, Local: c.replicaOf(id), Dial: c.dialer(id),
		PeerTimeout: 3 * time.Second, ReadLease: 100 * time.Millisecond, OnNoQuorum: IOError,
		Logger: quietLog(),
	}
	if tune != nil {
		tune(&cfg)
	}
	return Promote(context.Background(), cfg)
}

// writeThenLose writes old (flushed everywhere) then fresh (acknowledged,
// and flushed on the others) at 0 through p, and returns the activity log
// node id had while fresh was not flushed there.
func writeThenLose(t *testing.T, c *testCluster, p *Primary, id NodeID, old, fresh []byte) []byte {
	return writeThenLoseAt(t, c, p, id, 0, old, fresh)
}

func writeThenLoseAt(t *testing.T, c *testCluster, p *Primary, id NodeID, off int64, old, fresh []byte) []byte {
	t.Helper()
	if err := p.WriteAt(old, off, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAt(fresh, off, false); err != nil {
		t.Fatal(err)
	}
	al := c.activityLog(id)
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	return al
}

// waitMembers waits until the given peers are members with nothing left
// to send (others may be down).
func waitMembers(t testing.TB, p *Primary, ids ...NodeID) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := p.Status()
		ok := true
		for _, id := range ids {
			ps := peerStatus(st, id)
			ok = ok && ps.State == PeerMember && ps.OutOfSyncBytes == 0 && slices.Contains(st.Members, id)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas %v did not catch up: %+v", ids, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func peerStatus(st PrimaryStatus, id NodeID) PeerStatus {
	for _, ps := range st.Peers {
		if ps.Node == id {
			return ps
		}
	}
	return PeerStatus{}
}

// A secondary crashes, losing an acknowledged write, and is restarted
// twice before any primary resent its recovered extent (the second start
// finds a clean activity log): the extent is still named, the next
// primary keeps the replica out of the set (syncing, the extent pending)
// until it was resent, and then every copy is identical. Before, the
// record lived in memory only and the second start forgot it: the copy
// kept the old data for good.
func TestRecoveredExtentSurvivesSecondCrash(t *testing.T) {
	c := newTestCluster(t, 3, 8<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	old, fresh := bytes.Repeat([]byte{1}, recTestBytes), bytes.Repeat([]byte{2}, recTestBytes)
	al := writeThenLose(t, c, p, 3, old, fresh)
	p.Close() // no primary: nothing can be resent meanwhile
	addr := c.crashLosingWrite(3, al, 0, old)
	c.start(3, addr)
	if es, whole := c.replicaOf(3).Store().Recovered(); whole || !slices.Equal(es, []int64{0}) {
		t.Fatalf("after the crash: recovered %v whole %v, want [0]", es, whole)
	}
	// Again, before any resend: the log is clean now, the record is not.
	addr = c.kill(3)
	c.start(3, addr)
	if es, whole := c.replicaOf(3).Store().Recovered(); whole || !slices.Equal(es, []int64{0}) {
		t.Fatalf("after a second restart: recovered %v whole %v, want [0] still", es, whole)
	}
	// A slow resync keeps the pending state visible for a while.
	p2, err := c.promoteWith(1, func(cfg *PrimaryConfig) { cfg.ResyncMaxBytesPerSecond = 1 << 20 })
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	st := p2.Status()
	if slices.Contains(st.Members, 3) {
		t.Fatalf("a replica with unresent recovered extents is a member: %+v", st)
	}
	if ps := peerStatus(st, 3); ps.State != PeerSyncing || ps.RecoveringExtents != 1 {
		t.Fatalf("recovering replica's status %+v, want syncing with 1 recovering extent", ps)
	}
	waitSynced(t, p2, 3)
	if err := p2.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []NodeID{2, 3} {
		if !bytes.Equal(c.dataOf(1), c.dataOf(id)) {
			t.Fatalf("replica %d differs from the primary after the resend", id)
		}
	}
	if c.replicaOf(3).Store().Recovering() {
		t.Fatal("resent, yet the replica still records recovered extents")
	}
	// And durably so: a restart finds nothing to resend.
	addr = c.kill(3)
	c.start(3, addr)
	if c.replicaOf(3).Store().Recovering() {
		t.Fatal("the resolved record came back after a restart")
	}
}

// The primary is lost before it resent a crashed secondary's recovered
// extent, and that secondary is promoted: it fetches the extent from a
// member that is not recovering it before it serves, so the guest reads
// its acknowledged write. Before, it served the data from before it.
func TestRecoveringCandidateFetchesItsExtents(t *testing.T) {
	// Regions of the default size, and regions larger than an extent.
	for _, regionBytes := range []int64{DefaultRegionBytes, 2 * ExtentBytes} {
		t.Run(fmt.Sprint(regionBytes), func(t *testing.T) { testRecoveringCandidateFetches(t, regionBytes) })
	}
}

func testRecoveringCandidateFetches(t *testing.T, regionBytes int64) {
	c := newTestCluster(t, 3, 16<<20)
	tune := func(cfg *PrimaryConfig) { cfg.RegionBytes = regionBytes }
	p, err := c.promoteWith(1, tune)
	if err != nil {
		t.Fatal(err)
	}
	old, fresh := bytes.Repeat([]byte{1}, recTestBytes), bytes.Repeat([]byte{2}, recTestBytes)
	// The second extent: with regions larger than an extent it starts
	// inside a region.
	const off = ExtentBytes
	al := writeThenLoseAt(t, c, p, 3, off, old, fresh)
	p.Close()
	addr := c.crashLosingWrite(3, al, off, old)
	c.kill(1) // the primary's node is lost too
	c.start(3, addr)
	p3, err := c.promoteWith(3, tune)
	if err != nil {
		t.Fatal(err)
	}
	defer p3.Close()
	got := make([]byte, recTestBytes)
	if err := p3.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fresh) {
		t.Fatalf("the promoted replica serves %x..., want the acknowledged write %x...", got[:4], fresh[:4])
	}
	if c.replicaOf(3).Store().Recovering() {
		t.Fatal("the new primary still records recovered extents after fetching them")
	}
	waitMembers(t, p3, 2)
	p3.Flush()
	if !bytes.Equal(c.dataOf(2), c.dataOf(3)) {
		t.Fatal("replicas 2 and 3 differ")
	}
}

// While a crashed secondary's recovered extents are not resent it is out
// of the generation's set: when the primary is lost then, it cannot be
// promoted (it is not up to date); another member can, and resends them.
func TestRecoveringReplicaIsNotUpToDate(t *testing.T) {
	c := newTestCluster(t, 3, 8<<20)
	// A slow resync: the primary is lost before it is done.
	p, err := c.promoteWith(1, func(cfg *PrimaryConfig) { cfg.ResyncMaxBytesPerSecond = 256 << 10 })
	if err != nil {
		t.Fatal(err)
	}
	old, fresh := bytes.Repeat([]byte{1}, recTestBytes), bytes.Repeat([]byte{2}, recTestBytes)
	al := writeThenLose(t, c, p, 3, old, fresh)
	addr := c.crashLosingWrite(3, al, 0, old)
	c.start(3, addr)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := p.Status()
		if ps := peerStatus(st, 3); ps.State == PeerSyncing && ps.RecoveringExtents == 1 && !slices.Contains(st.Members, 3) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the crashed replica did not rejoin as syncing with its recovered extent: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.Close()
	c.kill(1)
	if p3, err := c.promote(3); err == nil {
		p3.Close()
		t.Fatal("a replica whose recovered extents were not resent was promoted")
	} else if !strings.Contains(err.Error(), NotUpToDate) {
		t.Fatalf("promotion of the recovering replica: %v, want %q", err, NotUpToDate)
	}
	p2, err := c.promote(2)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	waitMembers(t, p2, 3)
	p2.Flush()
	if !bytes.Equal(c.dataOf(2), c.dataOf(3)) {
		t.Fatal("replicas 2 and 3 differ after the resend")
	}
	got := make([]byte, recTestBytes)
	if err := c.replicaOf(3).Store().ReadAt(got, 0); err != nil || !bytes.Equal(got, fresh) {
		t.Fatalf("node 3 holds %x... (%v), want the acknowledged write", got[:4], err)
	}
}

// Every reachable copy is recovering the same extent: there is no better
// copy, so the candidate goes on with its own (and says so loudly).
func TestAllRecoveringPromotionProceeds(t *testing.T) {
	c := newTestCluster(t, 3, 8<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	old, fresh := bytes.Repeat([]byte{1}, recTestBytes), bytes.Repeat([]byte{2}, recTestBytes)
	if err := p.WriteAt(old, 0, false); err != nil {
		t.Fatal(err)
	}
	p.Flush()
	if err := p.WriteAt(fresh, 0, false); err != nil {
		t.Fatal(err)
	}
	al1, al2, al3 := c.activityLog(1), c.activityLog(2), c.activityLog(3)
	p.Close()
	// Every copy loses the write (a power loss of the whole cluster)
	// and every node is back: no copy is better. (With one of them
	// away, the promotion must wait for it instead:
	// TestRecoveringCandidateWaitsForAbsentSource.)
	addr1 := c.crashLosingWrite(1, al1, 0, old)
	addr2 := c.crashLosingWrite(2, al2, 0, old)
	addr3 := c.crashLosingWrite(3, al3, 0, old)
	c.start(1, addr1)
	c.start(2, addr2)
	c.start(3, addr3)
	p3, err := c.promote(3)
	if err != nil {
		t.Fatalf("no copy better than the candidate's, yet the promotion failed: %v", err)
	}
	defer p3.Close()
	waitMembers(t, p3, 1, 2)
	p3.Flush()
	if !bytes.Equal(c.dataOf(2), c.dataOf(3)) || !bytes.Equal(c.dataOf(1), c.dataOf(3)) {
		t.Fatal("replicas differ")
	}
	for _, id := range []NodeID{1, 2, 3} {
		if c.replicaOf(id).Store().Recovering() {
			t.Fatalf("node %d still records recovered extents", id)
		}
	}
}

// A crashed secondary's recovered extent that the primary resent whole
// over the replica's new link (it was written again while the replica
// was away) is not compared by digests as well: the resend made the copy
// the primary's. One resent only in part is compared. Either way every
// copy ends identical.
func TestWholeResentExtentIsNotCompared(t *testing.T) {
	for _, tc := range []struct {
		name        string
		rewrite     int64 // bytes of the extent written while n3 is away
		wantCompare bool
	}{
		{"whole", ExtentBytes, false},
		{"half", ExtentBytes / 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t, 3, 8<<20)
			p, err := c.promote(1)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			old, fresh := bytes.Repeat([]byte{1}, recTestBytes), bytes.Repeat([]byte{2}, recTestBytes)
			al := writeThenLose(t, c, p, 3, old, fresh)
			addr := c.crashLosingWrite(3, al, 0, old)
			// n3 is away: the primary marks what it misses.
			if err := p.WriteAt(bytes.Repeat([]byte{3}, int(tc.rewrite)), 0, false); err != nil {
				t.Fatal(err)
			}
			c.start(3, addr)
			waitMembers(t, p, 2, 3)
			if err := p.Flush(); err != nil {
				t.Fatal(err)
			}
			for _, id := range []NodeID{2, 3} {
				if !bytes.Equal(c.dataOf(1), c.dataOf(id)) {
					t.Fatalf("replica %d differs from the primary", id)
				}
			}
			p.mu.Lock()
			compared := p.peers[3].comparedBytes.Load()
			p.mu.Unlock()
			if (compared > 0) != tc.wantCompare {
				t.Fatalf("%d bytes compared by digests with n3, want compared: %v", compared, tc.wantCompare)
			}
		})
	}
}
