package main

// The network fence end to end, in network namespaces: every node runs
// the eBPF filter on its eth0 (--fence-interface). The primary's node is
// cut off; the survivors fence it with fence_dummy (its file is its
// power: the test pulls the plug when it says off), and their filters
// drop its addresses. Powered on again with its link back, the victim
// cannot reach the survivors' replication port, also after a survivor
// restarts (the block is in the configuration); after "paddock unfence"
// it can, rejoins as a secondary and resyncs to identical replicas.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-io/paddock/fence"
	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/node"
)

// startFencedNode starts (or restarts) node i in its namespace with the
// network fence on the namespace's eth0.
func startFencedNode(t *testing.T, lab *netLab, nodes []*volNode, i int, mode string) {
	nodes[i].proc = testbin.Start(t, "ip", "netns", "exec", lab.hosts[i], testbin.Paddock(t), "node", "--data-dir", nodes[i].dir,
		"--log-level", "debug", "--fence-interface", "eth0", "--fence-mode", mode, "--metrics-addr", "127.0.0.1:9810")
	nodes[i].proc.WaitFor(t, "network fence attached", 10*time.Second)
	nodes[i].proc.WaitFor(t, "node started", 10*time.Second)
}

// dialInNS says whether a TCP connection to addr can be made from inside
// namespace ns within timeout (a thread that joined the namespace makes
// the socket; the thread is thrown away with its goroutine).
func dialInNS(ns, addr string, timeout time.Duration) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			ch <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err == nil {
			c.Close()
		}
		ch <- err
	}()
	return <-ch
}

// replicationPort is a node's replication address: storage port + 1.
func replicationPort(n *volNode) string {
	host, _, _ := net.SplitHostPort(n.storage)
	return net.JoinHostPort(host, "10810")
}

// TestNetworkFenceBlocksUntilUnfence: h1 has a fence level (fence_dummy),
// the survivors power-fence it, then block it (XDP).
func TestNetworkFenceBlocksUntilUnfence(t *testing.T) { netFenceScenario(t, true, "xdp") }

// TestNetworkFenceAfterLease: no fence device; the survivors wait out
// h1's lease, then block it (tcx). h1 stays up the whole time
// (self-fenced), so once its link is back only the filters keep it out.
func TestNetworkFenceAfterLease(t *testing.T) { netFenceScenario(t, false, "tcx") }

func netFenceScenario(t *testing.T, powerFence bool, mode string) {
	lab := newNetLab(t, 3)
	testbin.Require(t, "fence_dummy", "qemu-io", "curl")
	bin := testbin.Paddock(t)
	root := t.TempDir()
	var nodes []*volNode
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, &volNode{testNode: testNode{name: fmt.Sprintf("h%d", i), dir: filepath.Join(root, fmt.Sprintf("h%d", i)),
			addr: fmt.Sprintf("10.77.0.%d:5405", i)}, storage: fmt.Sprintf("10.77.0.%d:10809", i)})
	}
	testbin.Run(t, 30*time.Second, "ip", "netns", "exec", lab.hosts[0], bin, "cluster", "create", "lab", "--data-dir", nodes[0].dir,
		"--node-name", "h1", "--cluster-addr", nodes[0].addr, "--storage-addr", nodes[0].storage)
	startFencedNode(t, lab, nodes, 0, mode)
	for i := 1; i < len(nodes); i++ {
		tok := strings.Fields(testbin.Run(t, 30*time.Second, bin, "cluster", "add-token", "--data-dir", nodes[0].dir))[0]
		testbin.Run(t, 60*time.Second, "ip", "netns", "exec", lab.hosts[i], bin, "cluster", "join", nodes[0].addr, "--token", tok,
			"--data-dir", nodes[i].dir, "--node-name", nodes[i].name, "--cluster-addr", nodes[i].addr, "--storage-addr", nodes[i].storage)
		startFencedNode(t, lab, nodes, i, mode)
		nodes[0].waitStatus(t, fmt.Sprintf("%d members", i+1), 20*time.Second, members(i+1))
	}
	for _, n := range nodes {
		n.waitStatus(t, "3 members", 20*time.Second, members(3))
	}

	// h1's power: a fence_dummy file; when it says off, the test pulls
	// h1's plug.
	power := filepath.Join(t.TempDir(), "h1-power")
	os.WriteFile(power, []byte("on"), 0o600)
	if powerFence {
		testbin.Run(t, 60*time.Second, bin, "fence", "device", "add", "dummy-h1", "--agent", "fence_dummy",
			"--param", "type=file", "--param", "status_file="+power, "--data-dir", nodes[0].dir)
		testbin.Run(t, 60*time.Second, bin, "fence", "level", "add", "h1", "--level", "1", "--devices", "dummy-h1", "--data-dir", nodes[0].dir)
	}
	ps := watchPower(t, nodes, map[int]string{0: power})

	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "h1,h2,h3", "--data-dir", nodes[0].dir)
	nodes[1].waitUpToDate(t, "vm", 30*time.Second)
	qemuIO := func(i int, cmds ...string) {
		t.Helper()
		args := []string{"netns", "exec", lab.hosts[i], "qemu-io", "-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		if out, err := testbin.RunErr(90*time.Second, "ip", append(args, nodes[i].uri("vm"))...); err != nil {
			t.Fatalf("qemu-io through %s %v: %v\n%s", nodes[i].name, cmds, err, out)
		}
	}
	qemuIO(1, "write -P 0xaa 0 4M", "flush")
	// Before any fence the victim reaches every replication port.
	for _, i := range []int{1, 2} {
		if err := dialInNS(lab.hosts[0], replicationPort(nodes[i]), 5*time.Second); err != nil {
			t.Fatalf("h1 cannot reach %s before the fence: %v", nodes[i].name, err)
		}
	}

	cut := time.Now()
	lab.cut(1)
	if powerFence {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, off := ps.off(0); off {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("h1 was not fenced within 30 s of the cut\nh2:\n%s", nodes[1].proc.Output())
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("h1 powered off %.1f s after the cut", time.Since(cut).Seconds())
	}
	st := waitPrimaryNot(t, nodes[1], "vm", "h1", 60*time.Second)
	t.Logf("new primary %s %.1f s after the cut", st.Primary, time.Since(cut).Seconds())

	// Both survivors know h1 is network-fenced, and their filters drop
	// h1's address.
	for _, i := range []int{1, 2} {
		nodes[i].waitStatus(t, "h1 network-fenced with its address in the filter", 30*time.Second, func(s node.Status) bool {
			if s.Fencing == nil || s.Fencing.Filter == nil {
				return false
			}
			var blocked, inFilter bool
			for _, n := range s.Fencing.Nodes {
				if n.Name == "h1" && n.NetBlocked && n.Fenced {
					blocked = true
				}
			}
			for _, b := range s.Fencing.Filter.Blocked {
				if b.Addr.String() == "10.77.0.1" {
					inFilter = true
				}
			}
			return blocked && inFilter
		})
	}
	qemuIO(1, "write -P 0xbb 4M 4M", "flush")

	// h1's link back (and, when it was powered off, h1 on again): its
	// packets are dropped.
	lab.heal(1)
	if powerFence {
		os.WriteFile(power, []byte("on"), 0o600)
		ps.on(0)
		startFencedNode(t, lab, nodes, 0, mode)
	}
	assertBlocked := func(when string) {
		t.Helper()
		for _, i := range []int{1, 2} {
			if err := dialInNS(lab.hosts[0], replicationPort(nodes[i]), 2*time.Second); err == nil {
				t.Fatalf("%s: h1 reached %s's replication port while fenced", when, nodes[i].name)
			}
		}
	}
	// Give h1 time to try to rejoin (heartbeats every token/4).
	time.Sleep(3 * time.Second)
	assertBlocked("after power on")
	nodes[1].waitStatus(t, "still 2 members", 10*time.Second, members(2))
	// h1 alone is not quorate: it cannot unfence itself.
	if out, err := testbin.RunErr(30*time.Second, bin, "unfence", "h1", "--data-dir", nodes[0].dir); err == nil || !strings.Contains(out, "not quorate") {
		t.Fatalf("unfence on the inquorate victim: %v\n%s", err, out)
	}

	// The block is in the configuration: a restarted survivor (the one
	// that is not the primary now) drops h1's packets again.
	other := 2
	if st.Primary == "h3" {
		other = 1
	}
	nodes[other].proc.Kill()
	startFencedNode(t, lab, nodes, other, mode)
	for _, i := range []int{1, 2} {
		nodes[i].waitStatus(t, "2 members after a survivor's restart", 30*time.Second, members(2))
	}
	assertBlocked("after a survivor's restart")

	// Status and metrics say what happened.
	s, _ := nodes[1].status(t)
	var last *fence.HistoryEntry
	for _, n := range s.Fencing.Nodes {
		if n.Name == "h1" {
			last = n.Last
		}
	}
	if last == nil || last.Method != fence.MethodNetwork || last.Result != fence.ResultOK {
		b, _ := json.MarshalIndent(s.Fencing, "", "  ")
		t.Fatalf("h2's last fence of h1 is not a network fence that succeeded:\n%s", b)
	}
	if s.Fencing.Filter.DroppedPackets == 0 {
		t.Errorf("h2's filter dropped no packet from h1 while h1 was up")
	}
	text, _ := testbin.RunErr(10*time.Second, bin, "status", "--data-dir", nodes[1].dir)
	if !strings.Contains(text, "Fencing information") || !strings.Contains(text, "network") {
		t.Errorf("paddock status shows no fencing:\n%s", text)
	}
	if s.Fencing.Filter.Mode != mode {
		t.Errorf("h2's filter is attached with %s, want %s", s.Fencing.Filter.Mode, mode)
	}
	if show := testbin.Run(t, 10*time.Second, bin, "fence", "show", "--data-dir", nodes[2].dir); !strings.Contains(show, "node h1 network-fenced since") {
		t.Errorf("fence show on h3 does not list h1's block:\n%s", show)
	}
	metrics := testbin.Run(t, 10*time.Second, "ip", "netns", "exec", lab.hosts[1], "curl", "-s", "http://127.0.0.1:9810/metrics")
	for _, want := range []string{`paddock_fence_total{method="network",result="ok"}`, "paddock_fenced_nodes 1", "paddock_netfence_dropped_packets_total"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics of h2 lack %q", want)
		}
	}
	t.Logf("h2 status:\n%s", text)

	// Unfence: h1's packets flow, it rejoins as a secondary and resyncs.
	if out, err := testbin.RunErr(30*time.Second, bin, "unfence", "nope", "--data-dir", nodes[1].dir); err == nil || !strings.Contains(out, "no node named") {
		t.Fatalf("unfence of an unknown node: %v\n%s", err, out)
	}
	out := testbin.Run(t, 60*time.Second, bin, "unfence", "h1", "--data-dir", nodes[1].dir)
	t.Logf("unfence: %s", out)
	deadline := time.Now().Add(20 * time.Second)
	for _, i := range []int{1, 2} {
		for {
			err := dialInNS(lab.hosts[0], replicationPort(nodes[i]), 2*time.Second)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("h1 cannot reach %s after unfence: %v", nodes[i].name, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if out, err := testbin.RunErr(30*time.Second, bin, "unfence", "h1", "--data-dir", nodes[1].dir); err == nil || !strings.Contains(out, "not fenced") {
		t.Fatalf("a second unfence: %v\n%s", err, out)
	}
	for _, n := range nodes {
		n.waitStatus(t, "3 members after unfence", 30*time.Second, members(3))
	}
	st = nodes[1].waitUpToDate(t, "vm", 60*time.Second)
	for _, r := range st.Replicas {
		if r.Node == "h1" && r.Role != "secondary" {
			t.Fatalf("h1 is %s after unfence", r.Role)
		}
	}
	qemuIO(1, "read -P 0xaa 0 4M", "read -P 0xbb 4M 4M")
	want := replicaData(t, nodes[1], st.Volume.ID)
	for _, i := range []int{0, 2} {
		if string(want) != string(replicaData(t, nodes[i], st.Volume.ID)) {
			t.Fatalf("replica on %s differs after the resync", nodes[i].name)
		}
	}
}
