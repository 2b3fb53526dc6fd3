package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/nbd"
)

// A forwarder's connection to the primary's node is served only by the
// primary that served its first request, never forwarded again: a write
// that waited in that node's socket while the forwarder retried it
// elsewhere must not be applied by the new primary after the retry was
// acknowledged (the history campaign saw such a replay overwrite newer
// acknowledged writes). Here the stale connection's write, once the
// primary role moved, fails instead of reaching the new primary.
func TestForwardedConnectionIsNotForwardedAgain(t *testing.T) {
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "n1,n2,n3", "--data-dir", nodes[0].dir)
	nodes[1].waitUpToDate(t, "vm", 60*time.Second)
	dial := func(n *volNode, export string) *nbd.Client {
		c, err := nbd.Dial("tcp", n.storage, nbd.ClientOptions{Export: export, Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	old := bytes.Repeat([]byte{0xaa}, 4096)
	fwd := dial(nodes[0], "paddock-forwarded/vm")
	if err := fwd.WriteAt(old, 0, 0); err != nil {
		t.Fatalf("write on a forwarded connection to the primary: %v", err)
	}
	testbin.Run(t, 60*time.Second, bin, "volume", "promote", "vm", "--node", "n3", "--data-dir", nodes[0].dir)
	waitPrimaryNot(t, nodes[1], "vm", "n1", 60*time.Second)
	newer := bytes.Repeat([]byte{0xbb}, 4096)
	if err := dial(nodes[1], "vm").WriteAt(newer, 0, 0); err != nil {
		t.Fatalf("write through n2 after the move: %v", err)
	}
	// The stale connection: its write must not reach n3, and the answer
	// says it did not run (ESHUTDOWN: the forwarder may send it again on
	// a new connection).
	err := fwd.WriteAt(old, 0, 0)
	if err == nil {
		t.Fatal("a forwarded connection's write was forwarded again after the primary moved")
	}
	if ne, ok := err.(*nbd.Error); !ok || ne.Errno != nbd.ESHUTDOWN {
		t.Fatalf("the stale forwarded write failed with %v, want ESHUTDOWN (not run)", err)
	}
	// A new forwarded connection to a node that is not primary: refused.
	if err := dial(nodes[0], "paddock-forwarded/vm").WriteAt(old, 0, 0); err == nil {
		t.Fatal("a node that is not primary served a forwarded connection's write")
	}
	got := make([]byte, 4096)
	if err := dial(nodes[2], "vm").ReadAt(got, 0); err != nil || !bytes.Equal(got, newer) {
		t.Fatalf("read back through n3: %v, first byte %#x (want 0xbb: the newer write)", err, got[0])
	}
}
