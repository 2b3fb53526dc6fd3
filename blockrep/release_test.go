package blockrep

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Rule 5 on one voter: only the node an epoch was promised to releases
// it; the next promise says so once; a repeat, a later promise to a
// candidate that did not release, a blank voter and a restart (the mark
// is not saved) do not.
func TestVoterRelease(t *testing.T) {
	v := VoterState{ID: 1, HasData: true, Members: []NodeID{1, 2, 3}}
	if p, ref := v.PrepareFrom(5, 2); ref != nil || !p.Released {
		t.Fatalf("a voter that never promised: %+v %v (no primary to wait for)", p, ref)
	}
	if v.Release(5, 3) || v.Release(4, 2) || v.ReleasedNow() {
		t.Fatal("a release by another node, or of another epoch, was taken")
	}
	if !v.Release(5, 2) || !v.ReleasedNow() {
		t.Fatal("the promisee's release was not taken")
	}
	saved, _ := json.Marshal(v)
	var restarted VoterState
	json.Unmarshal(saved, &restarted)
	if restarted.ReleasedNow() {
		t.Fatal("the release mark survived a restart (it must stay in memory)")
	}
	p, ref := v.PrepareFrom(6, 3)
	if ref != nil || !p.Released {
		t.Fatalf("promise after a release: %+v %v", p, ref)
	}
	if p, _ := v.PrepareFrom(6, 3); p.Released {
		t.Fatal("a repeated promise claims a release")
	}
	// Node 3 never served epoch 6 (say its promotion failed) and never
	// released it: the next promise says nothing.
	if p, _ := v.PrepareFrom(7, 2); p.Released {
		t.Fatal("promise 7 claims a release of epoch 6")
	}
	v.Blank = true
	v.Release(7, 2)
	if v.ReleasedNow() {
		t.Fatal("a blank voter claims a release")
	}
}

func TestDecideLeaseReleased(t *testing.T) {
	voters := []NodeID{1, 2, 3}
	m := []NodeID{1, 2, 3}
	all := []Promise{{From: 1, Epoch: 9, Members: m, Released: true}, {From: 2, Epoch: 9, Members: m, Released: true}}
	if d, err := Decide(1, voters, 9, all); err != nil || !d.LeaseReleased {
		t.Fatalf("%+v %v", d, err)
	}
	some := append(all, Promise{From: 3, Epoch: 9, Members: m})
	if d, err := Decide(1, voters, 9, some); err != nil || d.LeaseReleased {
		t.Fatalf("one promise without release, yet LeaseReleased: %+v %v", d, err)
	}
}

// A primary that steps down serves nothing more, and the next primary
// skips the read-lease wait; one that only closed (or crashed) does not
// release, and the next one waits.
func TestStepDownReleasesTheLease(t *testing.T) {
	c := newTestCluster(t, 3, 4<<20)
	p1, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0xab}, 64<<10)
	if err := p1.WriteAt(want, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := p1.StepDown(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(want))
	if err := p1.ReadAt(buf, 0); !errors.Is(err, unix.EIO) {
		t.Fatalf("read from a primary that stepped down: %v", err)
	}
	if err := p1.WriteAt(want, 0, false); !errors.Is(err, unix.EIO) {
		t.Fatalf("write to a primary that stepped down: %v", err)
	}
	p2, err := c.promote(2)
	if err != nil {
		t.Fatal(err)
	}
	if !p2.LeaseSkipped() {
		t.Fatal("node 2 waited out the read lease of a primary that released its epoch")
	}
	if err := p2.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, want) {
		t.Fatalf("read after the move: %v", err)
	}
	// Close without release: node 3 must wait.
	p2.Close()
	p3, err := c.promote(3)
	if err != nil {
		t.Fatal(err)
	}
	defer p3.Close()
	if p3.LeaseSkipped() {
		t.Fatal("node 3 skipped the read lease of a primary that did not release its epoch")
	}
}

// A voter that restarts forgets the release: the next primary waits.
func TestReleaseForgottenOnRestart(t *testing.T) {
	c := newTestCluster(t, 3, 4<<20)
	p1, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := p1.StepDown(); err != nil {
		t.Fatal(err)
	}
	addr := c.kill(3)
	c.start(3, addr)
	p2, err := c.promote(2)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if p2.LeaseSkipped() {
		t.Fatal("a restarted voter's promise counted as released")
	}
}

// AwaitRelease: a candidate started while the old primary still serves
// waits for its release (here a step-down shortly after) instead of the
// lease.
func TestAwaitRelease(t *testing.T) {
	c := newTestCluster(t, 3, 4<<20)
	p1, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		c.mu.Lock()
		n := c.nodes[2]
		c.mu.Unlock()
		p2, err := Promote(n.ctx, PrimaryConfig{
			Self: 2, VolumeID: testVolume, Replicas: c.ids, Local: n.rep, Dial: c.dialer(2),
			PeerTimeout: 3e9, ReadLease: 100e6, OnNoQuorum: IOError, Logger: quietLog(), AwaitRelease: 5e9,
		})
		if err == nil {
			if !p2.LeaseSkipped() {
				err = errors.New("the candidate waited out the lease though the primary released")
			}
			p2.Close()
		}
		done <- err
	}()
	// Longer than the lease (100 ms): a candidate that did not await the
	// release would have raised the epoch and waited the lease by now.
	time.Sleep(300 * time.Millisecond)
	if err := p1.StepDown(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A fence release acts only on promises held by the fenced node.
func TestVoterReleaseFenced(t *testing.T) {
	v := VoterState{ID: 1, HasData: true}
	if v.ReleaseFenced(2) {
		t.Fatal("a voter that never promised released something")
	}
	v.PrepareFrom(4, 2)
	if v.ReleaseFenced(3) || v.ReleaseFenced(0) || v.Released != 0 {
		t.Fatal("a fence release of another node released node 2's promise")
	}
	if !v.ReleaseFenced(2) || !v.ReleasedNow() {
		t.Fatal("the fence release of node 2 did not release its promise")
	}
}

// After the primary's node is gone and fenced, the node acting for the
// cluster releases its promises: the next primary does not wait out the
// read lease. Without the release it does.
func TestReleaseFencedSkipsLease(t *testing.T) {
	for _, release := range []bool{false, true} {
		c := newTestCluster(t, 3, 4<<20)
		p1, err := c.promote(1)
		if err != nil {
			t.Fatal(err)
		}
		if err := p1.WriteAt(bytes.Repeat([]byte{7}, 4096), 0, false); err != nil {
			t.Fatal(err)
		}
		c.kill(1) // its node is gone (powered off)
		p1.Close()
		if release {
			dials := map[NodeID]func(context.Context) (net.Conn, error){}
			for _, id := range []NodeID{1, 3} {
				dial := c.dialer(2)
				dials[id] = func(ctx context.Context) (net.Conn, error) { return dial(ctx, id) }
			}
			c.mu.Lock()
			local := c.nodes[2].rep
			c.mu.Unlock()
			if n := ReleaseFenced(context.Background(), 2, testVolume, 1, local, dials); n != 2 {
				t.Fatalf("%d voters took the release, want 2 (nodes 2 and 3)", n)
			}
		}
		p2, err := c.promote(2)
		if err != nil {
			t.Fatal(err)
		}
		if p2.LeaseSkipped() != release {
			t.Fatalf("release %v: lease skipped %v", release, p2.LeaseSkipped())
		}
		p2.Close()
	}
}

// A secondary that crashes and restarts while nothing is written to it
// rejoins all the same: its promise names the extents its activity log
// says a crash may have touched, and they are sent to it again (after a
// power loss writes it acknowledged but had not flushed are missing
// there). Before, the primary took the new link without a rejoin, and a
// promise named only the extents hot since the restart (none).
func TestRestartedSecondaryGetsItsHotExtentsAgain(t *testing.T) {
	c := newTestCluster(t, 3, 4<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.WriteAt(bytes.Repeat([]byte{9}, 64<<10), 0, false); err != nil {
		t.Fatal(err)
	}
	resent := func() int64 {
		for _, ps := range p.Status().Peers {
			if ps.Node == 3 {
				return ps.ResentBytes
			}
		}
		return -1
	}
	before := resent()
	// A crash: the activity log as it was with the write in it (kill
	// closes the replica cleanly, which marks the log clean).
	alPath := filepath.Join(c.baseDir, "n", "3", "activity")
	al, err := os.ReadFile(alPath)
	if err != nil {
		t.Fatal(err)
	}
	addr := c.kill(3)
	if err := os.WriteFile(alPath, al, 0o600); err != nil {
		t.Fatal(err)
	}
	// And the write did not reach its disk (a power loss): the extent
	// is compared by digests, so only a difference is resent.
	if err := os.WriteFile(filepath.Join(c.baseDir, "n", "3", "data"), make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(3, addr)
	deadline := time.Now().Add(30 * time.Second)
	for resent() <= before {
		if time.Now().After(deadline) {
			t.Fatalf("node 3 came back and nothing was resent (resent %d bytes): its hot extents were not asked for", resent())
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitSynced(t, p, 3)
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.dataOf(1), c.dataOf(3)) {
		t.Fatal("node 3 differs from the primary after the resend")
	}
}
