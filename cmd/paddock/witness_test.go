package main

// The witness across real processes: paddock node daemons and a paddock
// witness, killed with SIGKILL and restarted, and a real partition in
// network namespaces.

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/node"
)

// testWitness is a "paddock witness" process.
type testWitness struct {
	dir, addr string
	netns     string // run inside this network namespace, if set
	proc      *testbin.Proc
}

// newTestWitness signs a witness certificate on a cluster node.
func newTestWitness(t *testing.T, nodeDir, addr string) *testWitness {
	w := &testWitness{dir: filepath.Join(t.TempDir(), "witness"), addr: addr}
	out := testbin.Run(t, 30*time.Second, testbin.Paddock(t), "cluster", "witness-cert", "--data-dir", nodeDir, "--out", w.dir)
	if !strings.Contains(out, "witness directory written") {
		t.Fatalf("witness-cert: %s", out)
	}
	// A second one into the same directory is refused.
	if out, err := testbin.RunErr(30*time.Second, testbin.Paddock(t), "cluster", "witness-cert", "--data-dir", nodeDir, "--out", w.dir); err == nil || !strings.Contains(out, "already holds") {
		t.Fatalf("witness-cert over an existing one: %v %s", err, out)
	}
	return w
}

func (w *testWitness) start(t *testing.T) {
	args := []string{"witness", "--listen", w.addr, "--data-dir", w.dir}
	if w.netns != "" {
		w.proc = testbin.Start(t, "ip", append([]string{"netns", "exec", w.netns, testbin.Paddock(t)}, args...)...)
	} else {
		w.proc = testbin.Start(t, testbin.Paddock(t), args...)
	}
	w.proc.WaitFor(t, "witness started", 10*time.Second)
}

// withWitness: quorate, n members, and the witness's vote counts.
func withWitness(n int) func(node.Status) bool {
	return func(s node.Status) bool {
		return members(n)(s) && s.Quorum.Witness != nil && s.Quorum.Witness.Vote && s.Witness != nil && s.Witness.Connected
	}
}

// withoutWitness: quorate, n members, the witness not connected and its
// vote not counted.
func withoutWitness(n int) func(node.Status) bool {
	return func(s node.Status) bool {
		return members(n)(s) && s.Quorum.Witness != nil && !s.Quorum.Witness.Vote && s.Witness != nil && !s.Witness.Connected
	}
}

// watchQuorum polls a node's status until stopped and returns the
// inquorate states it saw: "stays quorate" means none.
func watchQuorum(t *testing.T, n *testNode) (stop func() []string) {
	var mu sync.Mutex
	var bad []string
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			default:
			}
			if s, _ := n.status(t); s.Time.Year() > 2000 && !s.Quorum.Quorate {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("%s at %s: %+v", n.name, s.Time.Format("15:04:05.000"), s.Quorum))
				mu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return func() []string {
		close(done)
		<-finished
		mu.Lock()
		defer mu.Unlock()
		return bad
	}
}

func setWitness(t *testing.T, n *testNode, args ...string) {
	out := testbin.Run(t, 60*time.Second, testbin.Paddock(t), append([]string{"cluster", "quorum-options", "--data-dir", n.dir}, args...)...)
	if !strings.Contains(out, "quorum options set") {
		t.Fatalf("quorum-options %v: %s", args, out)
	}
}

// TestWitnessTwoNodes: 2 nodes and a witness. Losing either node keeps
// the survivor quorate; losing the witness does not change a healthy
// pair; a restarted witness is used again.
func TestWitnessTwoNodes(t *testing.T) {
	nodes := makeCluster(t, 2)
	bin := testbin.Paddock(t)
	w := newTestWitness(t, nodes[0].dir, fmt.Sprintf("127.0.0.10:%d", freePort(t, "127.0.0.10")))
	w.start(t)
	// two_node and a witness conflict, as in corosync.
	if out, err := testbin.RunErr(60*time.Second, bin, "cluster", "quorum-options", "--data-dir", nodes[0].dir, "--two-node", "--witness", w.addr); err == nil || !strings.Contains(out, "two_node and a witness") {
		t.Fatalf("two_node with a witness: %v %s", err, out)
	}
	setWitness(t, nodes[0], "--witness", w.addr)
	for _, n := range nodes {
		n.waitStatus(t, "2 members and the witness's vote", 20*time.Second, withWitness(2))
	}
	s, _ := nodes[0].status(t)
	if s.Quorum.TotalVotes != 3 || s.Quorum.ExpectedVotes != 3 || s.Quorum.Quorum != 2 || !strings.Contains(strings.Join(s.Quorum.Flags, " "), "Qdevice") {
		t.Fatalf("2 nodes + witness: %+v", s.Quorum)
	}
	out := testbin.Run(t, 10*time.Second, bin, "status", "--data-dir", nodes[0].dir)
	for _, want := range []string{"0x00000000          1 Qdevice\n", "Witness:          " + w.addr + ", connected, vote granted"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}

	// kill -9 either node: the survivor stays quorate throughout.
	for _, i := range []int{1, 0} {
		survivor := nodes[1-i]
		watch := watchQuorum(t, survivor)
		nodes[i].proc.Kill()
		survivor.waitStatus(t, "alone with the witness's vote", 20*time.Second, withWitness(1))
		if bad := watch(); len(bad) > 0 {
			t.Fatalf("%s lost quorum when %s was killed:\n%s", survivor.name, nodes[i].name, strings.Join(bad, "\n"))
		}
		if s, _ := survivor.status(t); s.Quorum.TotalVotes != 2 {
			t.Fatalf("survivor: %+v", s.Quorum)
		}
		nodes[i].start(t)
		for _, n := range nodes {
			n.waitStatus(t, "2 members and the witness's vote again", 20*time.Second, withWitness(2))
		}
	}

	// kill -9 the witness: the pair stays quorate without its vote.
	watch0, watch1 := watchQuorum(t, nodes[0]), watchQuorum(t, nodes[1])
	w.proc.Kill()
	for _, n := range nodes {
		n.waitStatus(t, "2 members without the witness", 20*time.Second, withoutWitness(2))
	}
	if bad := append(watch0(), watch1()...); len(bad) > 0 {
		t.Fatalf("the pair lost quorum with the witness:\n%s", strings.Join(bad, "\n"))
	}
	out, _ = testbin.RunErr(10*time.Second, bin, "status", "--data-dir", nodes[0].dir)
	if !strings.Contains(out, "Qdevice (votes 1)") || !strings.Contains(out, "NOT connected") {
		t.Fatalf("status without the witness:\n%s", out)
	}
	// Restarted (from its state on disk), it is used again.
	w.start(t)
	for _, n := range nodes {
		n.waitStatus(t, "the witness's vote again", 20*time.Second, withWitness(2))
	}

	// Removing the witness is a configuration change too.
	setWitness(t, nodes[0])
	for _, n := range nodes {
		n.waitStatus(t, "no witness", 20*time.Second, func(s node.Status) bool {
			return members(2)(s) && s.Quorum.Witness == nil && s.Witness == nil && s.Quorum.ExpectedVotes == 2
		})
	}
}

// TestWitnessLoneNodeOfThree: with lms the witness keeps the last node
// standing quorate, but a node that lost quorum never gets it back from
// the witness alone (DESIGN invariant 3).
func TestWitnessLoneNodeOfThree(t *testing.T) {
	nodes := makeCluster(t, 3)
	w := newTestWitness(t, nodes[0].dir, fmt.Sprintf("127.0.0.10:%d", freePort(t, "127.0.0.10")))
	w.start(t)
	setWitness(t, nodes[0], "--witness", w.addr, "--witness-algorithm", "lms")
	for _, n := range nodes {
		n.waitStatus(t, "3 members and the witness's vote", 20*time.Second, withWitness(3))
	}
	if s, _ := nodes[0].status(t); s.Quorum.ExpectedVotes != 5 || s.Quorum.Quorum != 3 || s.Quorum.Witness.Votes != 2 {
		t.Fatalf("3 nodes + lms witness: %+v", s.Quorum)
	}
	// n3 goes; n1 goes; n2 is the last man standing, quorate with the
	// witness's two votes.
	nodes[2].proc.Kill()
	for _, n := range nodes[:2] {
		n.waitStatus(t, "2 members and the witness's vote", 20*time.Second, withWitness(2))
	}
	nodes[0].proc.Kill()
	nodes[1].waitStatus(t, "last man standing", 20*time.Second, withWitness(1))
	// n2 dies too; n3, which was lost long before, comes back alone: it
	// reaches the witness but does not get its vote.
	nodes[1].proc.Kill()
	nodes[2].start(t)
	s := nodes[2].waitStatus(t, "answered by the witness", 20*time.Second, func(s node.Status) bool {
		return s.Witness != nil && s.Witness.Connected && s.Witness.Reason != ""
	})
	_ = s
	st, code := nodes[2].status(t)
	if st.Quorum.Quorate || code != 2 || st.Quorum.Witness.Vote || st.Witness.Vote {
		t.Fatalf("a lone node that lost quorum got it from the witness: exit %d, %+v, witness %+v", code, st.Quorum, st.Witness)
	}
	t.Logf("lone n3: %s", st.Witness.Text())
	// n2, the last one with quorum, comes back: the pair is quorate.
	nodes[1].start(t)
	for _, n := range []*testNode{nodes[1], nodes[2]} {
		n.waitStatus(t, "2 members and the witness's vote", 20*time.Second, withWitness(2))
	}
}

// TestWitnessPartition: 2 nodes and the witness on three hosts (network
// namespaces); cutting either node off leaves the other quorate with the
// witness's vote and the cut one inquorate.
func TestWitnessPartition(t *testing.T) {
	lab := newNetLab(t, 3)
	bin := testbin.Paddock(t)
	root := t.TempDir()
	var nodes []*testNode
	for i := 1; i <= 2; i++ {
		nodes = append(nodes, &testNode{name: fmt.Sprintf("h%d", i), dir: filepath.Join(root, fmt.Sprintf("h%d", i)), addr: fmt.Sprintf("10.77.0.%d:5405", i)})
	}
	inNS := func(i int, args ...string) []string {
		return append([]string{"netns", "exec", lab.hosts[i], bin}, args...)
	}
	start := func(i int) {
		nodes[i].proc = testbin.Start(t, "ip", inNS(i, "node", "--data-dir", nodes[i].dir)...)
		nodes[i].proc.WaitFor(t, "node started", 10*time.Second)
	}
	testbin.Run(t, 30*time.Second, "ip", inNS(0, "cluster", "create", "lab", "--data-dir", nodes[0].dir, "--node-name", "h1", "--cluster-addr", nodes[0].addr)...)
	start(0)
	tok := strings.Fields(testbin.Run(t, 30*time.Second, bin, "cluster", "add-token", "--data-dir", nodes[0].dir))[0]
	testbin.Run(t, 60*time.Second, "ip", inNS(1, "cluster", "join", nodes[0].addr, "--token", tok, "--data-dir", nodes[1].dir, "--node-name", "h2", "--cluster-addr", nodes[1].addr)...)
	start(1)
	w := newTestWitness(t, nodes[0].dir, "10.77.0.3:5403")
	w.netns = lab.hosts[2]
	w.start(t)
	for _, n := range nodes {
		n.waitStatus(t, "2 members", 20*time.Second, members(2))
	}
	setWitness(t, nodes[0], "--witness", w.addr)
	for _, n := range nodes {
		n.waitStatus(t, "2 members and the witness's vote", 20*time.Second, withWitness(2))
	}
	for _, cut := range []int{2, 1} {
		other := nodes[2-cut]
		watch := watchQuorum(t, other)
		lab.cut(cut)
		nodes[cut-1].waitStatus(t, "cut off: inquorate", 20*time.Second, inquorate)
		other.waitStatus(t, "alone with the witness's vote", 20*time.Second, withWitness(1))
		if bad := watch(); len(bad) > 0 {
			t.Fatalf("%s lost quorum when h%d was cut off:\n%s", other.name, cut, strings.Join(bad, "\n"))
		}
		lab.heal(cut)
		for _, n := range nodes {
			n.waitStatus(t, "2 members and the witness's vote after healing", 20*time.Second, withWitness(2))
		}
	}
}
