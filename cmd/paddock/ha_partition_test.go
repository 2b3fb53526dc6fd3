package main

// A real partition of the primary's node (network namespaces, nft): it
// self-fences within its lease, the majority waits the lease out and
// promotes a replica, a client writing through a surviving node goes on
// after a pause with every acknowledged write intact, and after healing
// the old primary catches up as a secondary with identical data.

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/node"
)

func TestPartitionedPrimarySelfFencesAndFailsOver(t *testing.T) {
	lab := newNetLab(t, 3)
	testbin.Require(t, "fio")
	bin := testbin.Paddock(t)
	root := t.TempDir()
	var nodes []*volNode
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, &volNode{testNode: testNode{name: fmt.Sprintf("h%d", i), dir: filepath.Join(root, fmt.Sprintf("h%d", i)),
			addr: fmt.Sprintf("10.77.0.%d:5405", i)}, storage: fmt.Sprintf("10.77.0.%d:10809", i)})
	}
	inNS := func(i int, prog string, args ...string) []string {
		return append([]string{"netns", "exec", lab.hosts[i], prog}, args...)
	}
	start := func(i int) {
		nodes[i].proc = testbin.Start(t, "ip", inNS(i, bin, "node", "--data-dir", nodes[i].dir)...)
		nodes[i].proc.WaitFor(t, "node started", 10*time.Second)
	}
	testbin.Run(t, 30*time.Second, "ip", inNS(0, bin, "cluster", "create", "lab", "--data-dir", nodes[0].dir, "--node-name", "h1",
		"--cluster-addr", nodes[0].addr, "--storage-addr", nodes[0].storage)...)
	start(0)
	for i := 1; i < 3; i++ {
		tok := strings.Fields(testbin.Run(t, 30*time.Second, bin, "cluster", "add-token", "--data-dir", nodes[0].dir))[0]
		testbin.Run(t, 60*time.Second, "ip", inNS(i, bin, "cluster", "join", nodes[0].addr, "--token", tok, "--data-dir", nodes[i].dir,
			"--node-name", nodes[i].name, "--cluster-addr", nodes[i].addr, "--storage-addr", nodes[i].storage)...)
		start(i)
		nodes[0].waitStatus(t, fmt.Sprintf("%d members", i+1), 20*time.Second, members(i+1))
	}
	for _, n := range nodes {
		n.waitStatus(t, "3 members", 20*time.Second, members(3))
	}
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "32M", "--nodes", "h1,h2,h3", "--data-dir", nodes[0].dir)
	nodes[1].waitUpToDate(t, "vm", 30*time.Second)

	// fio in h2's namespace, through h2 (which forwards to h1 at first).
	fio := testbin.Start(t, "ip", inNS(1, "fio", "--name=part", "--ioengine=nbd", "--uri="+nodes[1].uri("vm"),
		"--rw=randwrite", "--bs=64k", "--iodepth=8", "--size=32M", "--io_size=64M", "--rate=4m",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json")...)
	time.Sleep(2 * time.Second)
	cut := time.Now()
	lab.cut(1)

	// The cut-off primary self-fences: its lease expires.
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := testbin.RunErr(10*time.Second, bin, "fence", "show", "--json", "--data-dir", nodes[0].dir)
		var rep node.FenceReply
		if err == nil && json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &rep) == nil && rep.HA.Lease.Phase == "expired" {
			t.Logf("h1 self-fenced %.1f s after the cut", time.Since(cut).Seconds())
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("h1 did not self-fence within 20 s: %s %v", out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	st := waitPrimaryNot(t, nodes[1], "vm", "h1", 60*time.Second)
	t.Logf("new primary %s %.1f s after the cut", st.Primary, time.Since(cut).Seconds())

	deadline = time.Now().Add(3 * time.Minute)
	for !fio.Exited() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if !fio.Exited() {
		t.Fatalf("fio did not finish:\n%s", fio.Output())
	}
	res := parseFio(t, fio.Output())
	if j := res.Jobs[0]; j.Error != 0 || j.Read.IOBytes == 0 {
		t.Fatalf("fio through the partition: error %d, wrote %d, verified %d\n%s", j.Error, j.Write.IOBytes, j.Read.IOBytes, fio.Output())
	}

	if testing.Verbose() {
		t.Log(nodes[1].proc.Output())
	}
	lab.heal(1)
	st = nodes[1].waitUpToDate(t, "vm", 60*time.Second)
	for _, r := range st.Replicas {
		if r.Node == "h1" && r.Role != "secondary" {
			t.Fatalf("the healed old primary is %s", r.Role)
		}
	}
	id := st.Volume.ID
	want := replicaData(t, nodes[1], id)
	for _, i := range []int{0, 2} {
		if string(want) != string(replicaData(t, nodes[i], id)) {
			t.Fatalf("replica on %s differs after healing", nodes[i].name)
		}
	}
}
