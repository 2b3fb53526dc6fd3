package blockrep

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
)

// TestLeaseOKStopsAcks: once the node says its lease ran out, the next
// request that would succeed fails instead, and so does every one after
// it (the primary stepped down), reads included.
func TestLeaseOKStopsAcks(t *testing.T) {
	c := newTestCluster(t, 3, 8<<20)
	var expired atomic.Bool
	p, err := c.promoteWith(1, func(cfg *PrimaryConfig) {
		cfg.LeaseOK = func() error {
			if expired.Load() {
				return errors.New("lease expired")
			}
			return nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	buf := bytes.Repeat([]byte{7}, BlockBytes)
	if err := p.WriteAt(buf, 0, false); err != nil {
		t.Fatalf("write with the lease held: %v", err)
	}
	if err := p.ReadAt(make([]byte, BlockBytes), 0); err != nil {
		t.Fatalf("read with the lease held: %v", err)
	}
	expired.Store(true)
	if err := p.WriteAt(buf, BlockBytes, false); err == nil {
		t.Fatal("a write was acknowledged after the lease ran out")
	}
	expired.Store(false) // even if the node's view comes back, this primary is done
	if err := p.ReadAt(make([]byte, BlockBytes), 0); err == nil {
		t.Fatal("a read was served by a primary that stepped down for its lease")
	}
	if err := p.Flush(); err == nil {
		t.Fatal("a flush was acknowledged by a primary that stepped down for its lease")
	}
	if p.Deposed() == nil {
		t.Fatal("the primary did not step down")
	}
}
