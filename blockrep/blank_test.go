package blockrep

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// wipe replaces a stopped node's replica by a blank one, as the node does
// when the directory of a replica it held is gone (a replaced disk).
func (c *testCluster) wipe(id NodeID) {
	c.t.Helper()
	dir := filepath.Join(c.baseDir, "n", string(rune('0'+id)))
	if err := os.RemoveAll(dir); err != nil {
		c.t.Fatal(err)
	}
	r, err := OpenReplica(dir, ReplicaOptions{Self: id, VolumeID: testVolume, SizeBytes: c.size, Members: c.ids, Blank: true})
	if err != nil {
		c.t.Fatal(err)
	}
	r.Close()
}

// A replica that lost its disk must not help a stale replica take over
// (epoch.go, rule 4), and once a replica that remembers is back, the blank
// one is rebuilt in full and the three copies are identical.
func TestBlankReplicaDoesNotElectStaleOne(t *testing.T) {
	const size = 8 << 20
	c := newTestCluster(t, 3, size)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	randomWrites(t, p, rng, 40, 64<<10)
	addr3 := c.kill(3)
	randomWrites(t, p, rng, 40, 64<<10) // acknowledged by 1 and 2 only
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	want := c.dataOf(1)
	p.Close()
	addr1 := c.kill(1)
	addr2 := c.kill(2)
	c.wipe(2)
	c.start(2, addr2)
	c.start(3, addr3)

	// 3 misses the last writes; 2 would say "nothing happened" if it
	// were not blank.
	if p3, err := c.promote(3); err == nil {
		p3.Close()
		t.Fatal("stale replica 3 was promoted with the promise of a replica that lost its data")
	} else if !strings.Contains(err.Error(), "lost their state") && !strings.Contains(err.Error(), "not up to date") {
		t.Fatalf("promotion of 3 failed for another reason: %v", err)
	}
	// Nor can the blank replica itself become primary.
	if p2, err := c.promote(2); err == nil {
		p2.Close()
		t.Fatal("blank replica 2 was promoted")
	}

	c.start(1, addr1)
	p1, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	waitSynced(t, p1, 3)
	if err := p1.Flush(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.dataOf(1), want) {
		t.Fatal("the primary's data changed")
	}
	for _, id := range []NodeID{2, 3} {
		if !bytes.Equal(c.dataOf(id), want) {
			t.Fatalf("replica %d differs after the resync", id)
		}
	}
	if c.nodes[2].rep.Voter().Blank {
		t.Fatal("replica 2 is still blank after it rejoined")
	}
}

// A blank replica that comes back to a running primary is rebuilt in
// full, not taken for up to date.
func TestBlankReplicaRejoinsRunningPrimary(t *testing.T) {
	const size = 8 << 20
	c := newTestCluster(t, 3, size)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	rng := rand.New(rand.NewPCG(7, 8))
	randomWrites(t, p, rng, 60, 64<<10)
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	addr2 := c.kill(2)
	c.wipe(2)
	c.start(2, addr2)
	// The primary notices on its next write (the blank replica refuses
	// it), drops 2, then takes it back through a full comparison.
	randomWrites(t, p, rng, 10, 64<<10)
	waitSynced(t, p, 3)
	randomWrites(t, p, rng, 10, 64<<10)
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []NodeID{2, 3} {
		if !bytes.Equal(c.dataOf(id), c.dataOf(1)) {
			t.Fatalf("replica %d differs from the primary", id)
		}
	}
}

// A witness that lost its state (reinstalled) must not let the replica
// that missed the last writes take over: it answers blank until it stored
// a generation, and a new volume's first promotion needs both replicas.
func TestWipedWitnessDoesNotElectStaleReplica(t *testing.T) {
	c := newTestCluster(t, 2, 4<<20)
	wdir := filepath.Join(c.baseDir, "witness")
	wdial, wkill := startWitness(t, wdir)
	promote := c.promoteWithWitness
	p, err := promote(1, wdial)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(13, 14))
	randomWrites(t, p, rng, 10, 64<<10)
	addr2 := c.kill(2)
	randomWrites(t, p, rng, 10, 64<<10) // confirmed by the witness, missed by 2
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	p.Close()
	c.kill(1)
	wkill()
	if err := os.RemoveAll(wdir); err != nil {
		t.Fatal(err)
	}
	wdial2, _ := startWitness(t, wdir)
	c.start(2, addr2)
	if p2, err := promote(2, wdial2); err == nil {
		p2.Close()
		t.Fatal("replica 2, which missed writes, was promoted with a reinstalled witness's promise")
	}
}
