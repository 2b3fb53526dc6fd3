package main

// Live migration with volume hand-off across real processes: three paddock
// nodes with a replicated volume, a guest process started with --volume on
// node n1's side (its --data-dir), a receiving guest process on another
// node's address with that node's data dir, and "paddock migrate".

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/migrate"
	"github.com/paddock-io/paddock/nbd"
	"github.com/paddock-io/paddock/node"
)

// volumeGuestProc is one guest process of these tests.
type volumeGuestProc struct {
	name, sock string
	proc       *testbin.Proc
}

// startVolumeGuest starts a guest on nd's side using vols.
func startVolumeGuest(t *testing.T, nd *volNode, name string, vols ...string) *volumeGuestProc {
	g := &volumeGuestProc{name: name, sock: filepath.Join(t.TempDir(), name+".sock")}
	args := []string{"guest", "start", "--name", name, "--ram", "32M", "--dirty-rate", "4M", "--pattern", "sequential",
		"--data-dir", nd.dir, "--control-sock", g.sock}
	for _, v := range vols {
		args = append(args, "--volume", v)
	}
	g.proc = testbin.Start(t, testbin.Paddock(t), args...)
	g.proc.WaitFor(t, "running", 60*time.Second)
	return g
}

// startReceiver starts "guest receive" on nd's IP with nd's data dir (so
// its certificate names nd) and returns it and its address.
func startReceiver(t *testing.T, nd *volNode, name string) (*volumeGuestProc, string) {
	ip, _, _ := net.SplitHostPort(nd.storage)
	listen := fmt.Sprintf("%s:%d", ip, freePort(t, ip))
	g := &volumeGuestProc{name: name, sock: filepath.Join(t.TempDir(), name+".sock")}
	g.proc = testbin.Start(t, testbin.Paddock(t), "guest", "receive", "--name", name, "--ram", "32M", "--listen", listen,
		"--data-dir", nd.dir, "--control-sock", g.sock)
	g.proc.WaitFor(t, "waiting for a migration", 30*time.Second)
	return g, listen
}

func (g *volumeGuestProc) status(t *testing.T) guestStatus {
	t.Helper()
	out := testbin.Run(t, 30*time.Second, testbin.Paddock(t), "guest", "status", g.name, "--control-sock", g.sock)
	var st guestStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("guest status %q: %v", out, err)
	}
	return st
}

// runsOn checks that g runs, is consistent, and goes on writing.
func (g *volumeGuestProc) runsOn(t *testing.T) {
	t.Helper()
	before := g.status(t)
	if before.State != "running" {
		t.Fatalf("guest %s is %s, want running", g.name, before.State)
	}
	testbin.Run(t, time.Minute, testbin.Paddock(t), "guest", "check", g.name, "--control-sock", g.sock)
	deadline := time.Now().Add(30 * time.Second)
	for g.status(t).Writes == before.Writes {
		if time.Now().After(deadline) {
			t.Fatalf("guest %s does not write any more", g.name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitServed waits until vol is served by a primary and every replica is
// up to date.
func waitServed(t *testing.T, nd *volNode, vol string, timeout time.Duration) node.VolumeStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := nd.waitUpToDate(t, vol, timeout)
		if _, ok := primaryRow(st); ok {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("volume %s has no serving primary within %v: %+v", vol, timeout, st.Replicas)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// primaryRow is the row of the replica that serves as primary.
func primaryRow(st node.VolumeStatus) (node.ReplicaRow, bool) {
	for _, r := range st.Replicas {
		if r.Role == "primary" {
			return r, true
		}
	}
	return node.ReplicaRow{}, false
}

func nbdWriteRead(t *testing.T, writeVia, readVia *volNode, vol string, off int64, fill byte) {
	t.Helper()
	w, err := nbd.Dial("tcp", writeVia.storage, nbd.ClientOptions{Export: vol, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("NBD to %s: %v", writeVia.name, err)
	}
	defer w.Close()
	data := bytes.Repeat([]byte{fill}, 256<<10)
	if err := w.WriteAt(data, off, nbd.CmdFlagFUA); err != nil {
		t.Fatalf("write through %s: %v", writeVia.name, err)
	}
	if err := w.Flush(); err != nil {
		t.Fatalf("flush through %s: %v", writeVia.name, err)
	}
	r, err := nbd.Dial("tcp", readVia.storage, nbd.ClientOptions{Export: vol, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("NBD to %s: %v", readVia.name, err)
	}
	defer r.Close()
	got := make([]byte, len(data))
	if err := r.ReadAt(got, off); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back through %s: %v, equal %v", readVia.name, err, bytes.Equal(got, data))
	}
}

// TestMigrateHandsVolumeOver: after migrating a guest with --volume vm
// from n1's side to n2's, vm's primary is n2 under a newer epoch that
// every replica promised (so the old primary on n1 can get no write
// acknowledged), a write through n2's NBD export succeeds and reads back
// through n3, the stats count the hand-off in the downtime, and the guest
// runs on n2's side, consistent, knowing its volume.
func TestMigrateHandsVolumeOver(t *testing.T) {
	requireUffdOrSkip(t)
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "n1,n2,n3", "--data-dir", nodes[0].dir)
	before := waitServed(t, nodes[2], "vm", 30*time.Second)
	oldRow, ok := primaryRow(before)
	if !ok || before.Primary != "n1" {
		t.Fatalf("before: primary %q, rows %+v", before.Primary, before.Replicas)
	}
	src := startVolumeGuest(t, nodes[0], "g1", "vm")
	dst, listen := startReceiver(t, nodes[1], "g1")

	// No --to-node: the destination's certificate names n2.
	out := testbin.Run(t, 3*time.Minute, bin, "migrate", "g1", "--control-sock", src.sock, "--to", listen, "--transport", "tcp", "--json")
	var st migrate.Stats
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &st); err != nil {
		t.Fatalf("migrate --json printed %q: %v", out, err)
	}
	t.Logf("downtime %.1f ms, of which hand-off %.1f ms; total %.0f ms", st.DowntimeMs, st.HandoffMs, st.TotalTimeMs)
	if st.Status != migrate.StatusCompleted || st.HandoffMs <= 0 || st.DowntimeMs < st.HandoffMs {
		t.Fatalf("stats: %+v", st)
	}
	dst.proc.WaitFor(t, "resumed from a migration", 30*time.Second)

	after := nodes[2].volumeStatus(t, "vm")
	row, ok := primaryRow(after)
	if after.Primary != "n2" || !ok || row.Node != "n2" || after.Volume.Primary == before.Volume.Primary {
		t.Fatalf("after: primary %q (configured %d), rows %+v", after.Primary, after.Volume.Primary, after.Replicas)
	}
	// The epoch rule: every replica promised the new primary's epoch,
	// which is above the old primary's, so a write the old one sent
	// would be refused by all of them.
	if row.Epoch <= oldRow.Epoch {
		t.Fatalf("new primary's epoch %d, old %d", row.Epoch, oldRow.Epoch)
	}
	for _, r := range after.Replicas {
		if r.Epoch < row.Epoch {
			t.Fatalf("replica on %s promised epoch %d only, the new primary holds %d", r.Node, r.Epoch, row.Epoch)
		}
	}
	nbdWriteRead(t, nodes[1], nodes[2], "vm", 1<<20, 0x5a)

	if gs := dst.status(t); !slices.Equal(gs.Volumes, []string{"vm"}) {
		t.Fatalf("destination guest's volumes: %v", gs.Volumes)
	}
	dst.runsOn(t)
	select {
	case <-waitExited(src.proc):
	case <-time.After(30 * time.Second):
		t.Fatal("the source guest process did not exit after the migration")
	}
	// Read after the exit: WaitFor may see the exit before a last line.
	if o := src.proc.Output(); !strings.Contains(o, "volume hand-off to n2 in ") || !strings.Contains(o, "vm n1->n2 epoch") {
		t.Fatalf("the source guest did not report the hand-off:\n%s", o)
	}
}

// TestMigrateHandoffFailureKeepsGuest: two hand-offs that cannot be made.
// A volume with no replica on the destination's node: the migration is
// refused before any RAM is sent. A destination node whose replica is
// behind (resyncing slowly after a restart), so it cannot promote: the
// hand-off runs at the switchover, times out, gives the volume back to n1,
// and the migration is cancelled. In both cases the guest runs on the
// source, consistent and writing, the receiver still waits, and the
// volume's primary is n1 and serves writes.
func TestMigrateHandoffFailureKeepsGuest(t *testing.T) {
	requireUffdOrSkip(t)
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	dd := nodes[0].dir
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "pair", "--size", "8M", "--nodes", "n1,n2", "--data-dir", dd)
	// A slow resync keeps n3 behind long enough: 8 MiB at 256 KiB/s.
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "n1,n2,n3",
		"--resync-rate-max", "256K", "--data-dir", dd)
	waitServed(t, nodes[0], "pair", 30*time.Second)
	waitServed(t, nodes[0], "vm", 30*time.Second)
	recv, listen := startReceiver(t, nodes[2], "gr")

	// 1. No replica of "pair" on n3.
	ga := startVolumeGuest(t, nodes[0], "ga", "pair")
	out, err := testbin.RunErr(3*time.Minute, bin, "migrate", "ga", "--control-sock", ga.sock, "--to", listen, "--to-node", "n3", "--transport", "tcp")
	if err == nil || !strings.Contains(out, "holds no replica") {
		t.Fatalf("migrate of a guest whose volume has no replica on n3: %v\n%s", err, out)
	}
	ga.runsOn(t)
	if st := nodes[1].volumeStatus(t, "pair"); st.Primary != "n1" {
		t.Fatalf("pair's primary is %q", st.Primary)
	}

	// 2. n3 misses writes and comes back resyncing slowly.
	nodes[2].proc.Kill()
	nbdWriteRead(t, nodes[0], nodes[1], "vm", 0, 1) // 256 KiB
	w, err := nbd.Dial("tcp", nodes[0].storage, nbd.ClientOptions{Export: "vm", Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{7}, 1<<20)
	for off := int64(0); off < 8<<20; off += 1 << 20 {
		if err := w.WriteAt(chunk, off, 0); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	w.Close()
	nodes[2].start(t)
	nodes[0].waitStatus(t, "3 members, quorate", 30*time.Second, members(3))
	for _, r := range nodes[0].volumeStatus(t, "vm").Replicas {
		if r.Node == "n3" && r.State == "UpToDate" {
			t.Fatalf("n3 is up to date already: the test needs it behind (%+v)", r)
		}
	}
	gb := startVolumeGuest(t, nodes[0], "gb", "vm")
	out, err = testbin.RunErr(3*time.Minute, bin, "migrate", "gb", "--control-sock", gb.sock, "--to", listen,
		"--transport", "tcp", "--handoff-timeout", "3s", "--json")
	if err == nil {
		t.Fatalf("migrate to a node that cannot promote succeeded:\n%s", out)
	}
	var st migrate.Stats
	parsed := false
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "{") && json.Unmarshal([]byte(l), &st) == nil {
			parsed = true
		}
	}
	if !parsed {
		t.Fatalf("migrate --json printed no stats:\n%s", out)
	}
	t.Logf("failed hand-off after %.0f ms: %s", st.HandoffMs, st.Error)
	if st.Status == migrate.StatusCompleted || st.HandoffMs < 3000 || !strings.Contains(st.Error, "hand-off") {
		t.Fatalf("stats of the failed hand-off: %+v", st)
	}
	gb.runsOn(t)
	if s := recv.status(t); s.State != "incoming" {
		t.Fatalf("the receiver is %s after the cancelled migration", s.State)
	}
	vs := nodes[1].volumeStatus(t, "vm")
	if row, ok := primaryRow(vs); vs.Primary != "n1" || !ok || row.Node != "n1" {
		t.Fatalf("vm after the failed hand-off: primary %q, rows %+v", vs.Primary, vs.Replicas)
	}
	nbdWriteRead(t, nodes[0], nodes[1], "vm", 12<<20, 0x33)
}
