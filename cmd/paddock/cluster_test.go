package main

// Cluster tests across real processes: paddock node daemons on 127.0.0.x,
// killed with SIGKILL and restarted, driven by the CLI as a user would.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/node"
)

type testNode struct {
	name, dir, addr string
	proc            *testbin.Proc
}

// freePort finds a port free for both UDP and TCP on the given IP.
func freePort(t *testing.T, ip string) int {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		u, err := net.ListenPacket("udp", fmt.Sprintf("%s:%d", ip, port))
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func (n *testNode) start(t *testing.T) {
	n.proc = testbin.Start(t, testbin.Paddock(t), "node", "--data-dir", n.dir, "--log-level", "debug")
	n.proc.WaitFor(t, "node started", 10*time.Second)
}

func (n *testNode) status(t *testing.T) (node.Status, int) {
	out, err := testbin.RunErr(10*time.Second, testbin.Paddock(t), "status", "--json", "--data-dir", n.dir)
	code := 0
	if err != nil {
		code = exitCode(err)
	}
	var s node.Status
	if i := strings.Index(out, "{"); i >= 0 {
		json.Unmarshal([]byte(out[i:strings.LastIndex(out, "}")+1]), &s)
	}
	return s, code
}

// waitStatus polls until cond holds, and returns how long it took.
func (n *testNode) waitStatus(t *testing.T, what string, timeout time.Duration, cond func(node.Status) bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		s, _ := n.status(t)
		if cond(s) {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: %s not reached within %v; last status %+v", n.name, what, timeout, s.Quorum)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func members(n int) func(node.Status) bool {
	return func(s node.Status) bool { return s.Quorum.Quorate && s.Nodes == n }
}

func inquorate(s node.Status) bool { return s.Time.Year() > 2000 && !s.Quorum.Quorate }

// makeCluster creates a cluster of n nodes on 127.0.0.1..n and starts them.
func makeCluster(t *testing.T, n int) []*testNode {
	bin := testbin.Paddock(t)
	root := t.TempDir()
	var nodes []*testNode
	for i := 1; i <= n; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i)
		nodes = append(nodes, &testNode{name: fmt.Sprintf("n%d", i), dir: filepath.Join(root, fmt.Sprintf("n%d", i)), addr: fmt.Sprintf("%s:%d", ip, freePort(t, ip))})
	}
	testbin.Run(t, 30*time.Second, bin, "cluster", "create", "lab", "--data-dir", nodes[0].dir, "--node-name", nodes[0].name, "--cluster-addr", nodes[0].addr)
	nodes[0].start(t)
	for i, nd := range nodes[1:] {
		tok := strings.Fields(testbin.Run(t, 30*time.Second, bin, "cluster", "add-token", "--data-dir", nodes[0].dir))[0]
		testbin.Run(t, 60*time.Second, bin, "cluster", "join", nodes[0].addr, "--token", tok, "--data-dir", nd.dir, "--node-name", nd.name, "--cluster-addr", nd.addr)
		nd.start(t)
		// The next join is a configuration change: it needs quorum,
		// so the node just added must be up first.
		nodes[0].waitStatus(t, fmt.Sprintf("%d members, quorate", i+2), 20*time.Second, members(i+2))
	}
	for _, nd := range nodes {
		nd.waitStatus(t, fmt.Sprintf("%d members, quorate", n), 20*time.Second, members(n))
	}
	return nodes
}

func TestClusterThreeNodesKillAndRestart(t *testing.T) {
	nodes := makeCluster(t, 3)
	// Every node runs the same configuration version.
	s1, code := nodes[0].status(t)
	if code != 0 || s1.ConfigVersion != 3 || len(s1.Membership) != 3 {
		t.Fatalf("status after joins: exit %d, version %d, %d nodes", code, s1.ConfigVersion, len(s1.Membership))
	}
	// Kill one: the other two stay quorate.
	nodes[2].proc.Kill()
	nodes[0].waitStatus(t, "2 members, quorate", 10*time.Second, members(2))
	nodes[1].waitStatus(t, "2 members, quorate", 10*time.Second, members(2))
	// Kill another: the survivor blocks activity.
	nodes[1].proc.Kill()
	took := nodes[0].waitStatus(t, "inquorate", 10*time.Second, inquorate)
	t.Logf("survivor inquorate %v after the kill (token %d ms)", took, s1.TokenMs)
	out, err := testbin.RunErr(10*time.Second, testbin.Paddock(t), "status", "--data-dir", nodes[0].dir)
	if exitCode(err) != 2 || !strings.Contains(out, "Quorate:          No") || !strings.Contains(out, "Activity blocked") {
		t.Fatalf("status of an inquorate node: exit %v\n%s", err, out)
	}
	// Restart both: quorate again, with all three.
	nodes[1].start(t)
	nodes[2].start(t)
	for _, n := range nodes {
		n.waitStatus(t, "3 members, quorate", 20*time.Second, members(3))
	}
	// Remove a node (a configuration change, with all three up).
	out = testbin.Run(t, 60*time.Second, testbin.Paddock(t), "cluster", "remove", "n3", "--data-dir", nodes[0].dir)
	if !strings.Contains(out, "configuration version 4, 2 nodes") {
		t.Fatalf("remove: %s", out)
	}
	nodes[2].proc.Kill()
	for _, n := range nodes[:2] {
		n.waitStatus(t, "version 4 with 2 nodes", 20*time.Second, func(s node.Status) bool {
			return s.ConfigVersion == 4 && len(s.Membership) == 2 && s.Quorum.Quorate
		})
	}
	// The emergency lever on a lone survivor.
	nodes[1].proc.Kill()
	nodes[0].waitStatus(t, "inquorate", 10*time.Second, inquorate)
	out = testbin.Run(t, 10*time.Second, testbin.Paddock(t), "expected", "1", "--data-dir", nodes[0].dir)
	if !strings.Contains(out, "quorate true") {
		t.Fatalf("expected 1: %s", out)
	}
	nodes[0].waitStatus(t, "quorate alone", 5*time.Second, members(1))
}

func TestClusterBadInput(t *testing.T) {
	nodes := makeCluster(t, 2)
	bin := testbin.Paddock(t)
	root := t.TempDir()
	ip := "127.0.0.9"
	addr := fmt.Sprintf("%s:%d", ip, freePort(t, ip))
	// A wrong token, and a token used twice.
	if out, err := testbin.RunErr(30*time.Second, bin, "cluster", "join", nodes[0].addr, "--token", "pdk1.AAAAAAAAAAAAAAAAAAAAAA.00000000000000000000000000000000",
		"--data-dir", filepath.Join(root, "x"), "--node-name", "x", "--cluster-addr", addr); err == nil || !strings.Contains(out, "does not match the join token") {
		t.Fatalf("join with a forged token: %v\n%s", err, out)
	}
	tok := strings.Fields(testbin.Run(t, 30*time.Second, bin, "cluster", "add-token", "--data-dir", nodes[0].dir))[0]
	// A duplicate name is refused (and uses up the token).
	if out, err := testbin.RunErr(60*time.Second, bin, "cluster", "join", nodes[0].addr, "--token", tok,
		"--data-dir", filepath.Join(root, "dup"), "--node-name", nodes[1].name, "--cluster-addr", addr); err == nil || !strings.Contains(out, "already") {
		t.Fatalf("join with a duplicate name: %v\n%s", err, out)
	}
	if out, err := testbin.RunErr(60*time.Second, bin, "cluster", "join", nodes[0].addr, "--token", tok,
		"--data-dir", filepath.Join(root, "y"), "--node-name", "y", "--cluster-addr", addr); err == nil || !strings.Contains(out, "used already") {
		t.Fatalf("join with a used token: %v\n%s", err, out)
	}
	// Nothing changed.
	s, _ := nodes[0].status(t)
	if s.ConfigVersion != 2 || len(s.Membership) != 2 {
		t.Fatalf("refused joins changed the configuration: version %d, %d nodes", s.ConfigVersion, len(s.Membership))
	}
	// Forged heartbeats are dropped and counted; the node stays quorate.
	c, err := net.Dial("udp", nodes[0].addr)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		c.Write([]byte("PDHB\x01\x00\x00\x00 forged heartbeat with a made-up MAC ...................."))
	}
	c.Close()
	nodes[0].waitStatus(t, "forged heartbeats counted", 5*time.Second, func(s node.Status) bool { return s.Heartbeats.Forged >= 10 && s.Quorum.Quorate })
	// A corrupt configuration file stops the node with a clear error.
	nodes[1].proc.Kill()
	os.WriteFile(filepath.Join(nodes[1].dir, "cluster.json"), []byte(`{"version": 2, "nodes": [`), 0o600)
	os.Remove(filepath.Join(nodes[1].dir, "confchange.state"))
	out, err := testbin.RunErr(10*time.Second, bin, "node", "--data-dir", nodes[1].dir)
	if err == nil || !strings.Contains(out, "cluster.json is corrupt") {
		t.Fatalf("node with a corrupt config: %v\n%s", err, out)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestNodeMetrics(t *testing.T) {
	bin := testbin.Paddock(t)
	dir := filepath.Join(t.TempDir(), "m1")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t, "127.0.0.1"))
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t, "127.0.0.1"))
	testbin.Run(t, 30*time.Second, bin, "cluster", "create", "solo", "--data-dir", dir, "--node-name", "m1", "--cluster-addr", addr)
	p := testbin.Start(t, bin, "node", "--data-dir", dir, "--metrics-addr", metrics)
	p.WaitFor(t, "node started", 10*time.Second)
	var body string
	// The first membership is published after the node's first token
	// round; on a loaded machine (CI) that can take seconds.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			// Whole lines: the HELP text of paddock_quorate contains
			// "paddock_quorate 1" too, which ended this wait at once.
			if metricLine(body, "paddock_quorate 1") {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range []string{"paddock_quorate 1", "paddock_total_votes 1", "paddock_members 1", "paddock_config_version 1", "paddock_heartbeats_forged_total 0"} {
		if !metricLine(body, want) {
			t.Errorf("metrics lack the line %q:\n%s", want, body)
		}
	}
}

// metricLine says whether a Prometheus text exposition has exactly this
// line.
func metricLine(body, line string) bool {
	return slices.Contains(strings.Split(body, "\n"), line)
}

// TestClusterFiveNodes: five nodes keep quorum (3) with two down, lose it
// with three down, and get it back when one returns.
func TestClusterFiveNodes(t *testing.T) {
	nodes := makeCluster(t, 5)
	nodes[3].proc.Kill()
	nodes[4].proc.Kill()
	for _, n := range nodes[:3] {
		n.waitStatus(t, "3 of 5, quorate", 10*time.Second, members(3))
	}
	nodes[2].proc.Kill()
	for _, n := range nodes[:2] {
		n.waitStatus(t, "2 of 5, inquorate", 10*time.Second, inquorate)
	}
	s, _ := nodes[0].status(t)
	if s.Quorum.Quorum != 3 || s.Quorum.TotalVotes != 2 || s.Quorum.ExpectedVotes != 5 {
		t.Fatalf("2 of 5: %+v", s.Quorum)
	}
	nodes[4].start(t)
	for _, n := range []*testNode{nodes[0], nodes[1], nodes[4]} {
		n.waitStatus(t, "3 of 5 again, quorate", 20*time.Second, members(3))
	}
}

// TestClusterTwoNode: without two_node a 2-node cluster loses quorum with
// one node; with it (set by a configuration change) the survivor stays
// quorate, and wait_for_all keeps a lone node that starts fresh waiting.
func TestClusterTwoNode(t *testing.T) {
	nodes := makeCluster(t, 2)
	bin := testbin.Paddock(t)
	out := testbin.Run(t, 60*time.Second, bin, "cluster", "quorum-options", "--two-node", "--data-dir", nodes[0].dir)
	if !strings.Contains(out, "configuration version 3") {
		t.Fatalf("quorum-options: %s", out)
	}
	for _, n := range nodes {
		n.waitStatus(t, "two_node in force", 10*time.Second, func(s node.Status) bool {
			f := strings.Join(s.Quorum.Flags, " ")
			return s.ConfigVersion == 3 && s.Quorum.Quorate && strings.Contains(f, "2Node") && strings.Contains(f, "WaitForAll")
		})
	}
	nodes[1].proc.Kill()
	nodes[0].waitStatus(t, "alone and still quorate", 10*time.Second, func(s node.Status) bool { return s.Nodes == 1 && s.Quorum.Quorate && s.Quorum.Quorum == 1 })
	// A restarted lone node waits for all (wait_for_all) before acting.
	nodes[0].proc.Kill()
	nodes[0].start(t)
	time.Sleep(2 * time.Second)
	if s, _ := nodes[0].status(t); s.Quorum.Quorate {
		t.Fatalf("a lone two_node member that just started is quorate: %+v", s.Quorum)
	}
	nodes[1].start(t)
	nodes[0].waitStatus(t, "both, quorate", 10*time.Second, members(2))
}
