package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
)

// A replica whose directory is lost (a replaced disk) while its node is
// down comes back blank (blockrep/epoch.go, rule 4) and is rebuilt in
// full from the primary, not only with what it missed while away: the
// three data files end identical.
func TestVolumeLostReplicaIsRebuilt(t *testing.T) {
	testbin.Require(t, "qemu-io")
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "n1,n2,n3", "--data-dir", nodes[0].dir)
	st := nodes[0].waitUpToDate(t, "vm", 30*time.Second)
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4M", "-c", "flush", nodes[1].uri("vm"))

	nodes[2].proc.Kill()
	if err := os.RemoveAll(filepath.Join(nodes[2].dir, "volumes", fmt.Sprint(st.Volume.ID))); err != nil {
		t.Fatal(err)
	}
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x33 4M 2M", "-c", "flush", nodes[0].uri("vm"))
	nodes[2].start(t)
	nodes[0].waitUpToDate(t, "vm", 60*time.Second)
	want := replicaData(t, nodes[0], st.Volume.ID)
	for _, nd := range nodes[1:] {
		if !bytes.Equal(want, replicaData(t, nd, st.Volume.ID)) {
			t.Fatalf("replica on %s differs from the primary's after the lost replica came back", nd.name)
		}
	}
	// The data went through the primary's forwarding and resync, not
	// around it: read it back through the rebuilt node.
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 4M", "-c", "read -P 0x33 4M 2M", nodes[2].uri("vm"))
}
