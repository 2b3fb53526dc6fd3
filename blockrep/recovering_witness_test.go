package blockrep

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"testing"
)

// TestRecoveringCandidateWaitsForAbsentSource: two replicas and a
// witness; a write acknowledged by both is lost on 2 (power loss before a
// flush) while 1, which holds it, is away. 2 and the witness must not
// promote 2 with its stale copy (it did, before the fix: "no source",
// so it served its own): the promotion fails until 1 is back, or serves
// the acknowledged data.
func TestRecoveringCandidateWaitsForAbsentSource(t *testing.T) {
	c := newTestCluster(t, 2, 8<<20)
	wdir := filepath.Join(c.baseDir, "witness")
	wdial, _ := startWitness(t, wdir)
	promote := c.promoteWithWitness
	p, err := promote(1, wdial)
	if err != nil {
		t.Fatal(err)
	}
	old, fresh := bytes.Repeat([]byte{1}, recTestBytes), bytes.Repeat([]byte{2}, recTestBytes)
	al := writeThenLose(t, c, p, 2, old, fresh) // fresh acknowledged by 1 and 2
	p.Close()
	addr := c.crashLosingWrite(2, al, 0, old)
	c.kill(1) // away (its disk holds fresh)
	c.start(2, addr)
	p2, err := promote(2, wdial)
	if err != nil {
		t.Logf("promotion refused while node 1 is away: %v", err)
		return
	}
	defer p2.Close()
	got := make([]byte, recTestBytes)
	if err := p2.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fresh) {
		t.Errorf("node 2 + witness promoted and serve %x..., the acknowledged write %x... (still on node 1) is lost", got[:2], fresh[:2])
	}
}

// promoteWithWitness promotes node id of a 2-replica cluster with a
// witness reached through dial (nil: none).
func (c *testCluster) promoteWithWitness(id NodeID, dial func(context.Context) (net.Conn, error)) (*Primary, error) {
	return c.promoteWith(id, func(cfg *PrimaryConfig) { cfg.WitnessDial = dial })
}
