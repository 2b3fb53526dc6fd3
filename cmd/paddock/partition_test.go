package main

// Real partitions: each node in its own network namespace, joined by veth
// pairs to a bridge in another namespace, and cut off with an nftables
// drop-everything table inside its namespace.

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
)

type netLab struct {
	t      *testing.T
	prefix string
	bridge string
	hosts  []string // namespace per host
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	testbin.Run(t, 20*time.Second, args[0], args[1:]...)
}

// newNetLab makes n hosts 10.77.0.1..n on a bridge.
func newNetLab(t *testing.T, n int) *netLab {
	testbin.RequireRoot(t)
	testbin.Require(t, "ip", "nft")
	b := make([]byte, 3)
	rand.Read(b)
	l := &netLab{t: t, prefix: "pd" + hex.EncodeToString(b)}
	l.bridge = l.prefix + "br"
	t.Cleanup(func() {
		for _, h := range append(l.hosts, l.bridge) {
			testbin.RunErr(10*time.Second, "ip", "netns", "del", h)
		}
	})
	sh(t, "ip", "netns", "add", l.bridge)
	sh(t, "ip", "-n", l.bridge, "link", "add", "br0", "type", "bridge")
	sh(t, "ip", "-n", l.bridge, "link", "set", "br0", "up")
	for i := 1; i <= n; i++ {
		h := fmt.Sprintf("%sh%d", l.prefix, i)
		l.hosts = append(l.hosts, h)
		sh(t, "ip", "netns", "add", h)
		sh(t, "ip", "link", "add", fmt.Sprintf("v%d", i), "netns", l.bridge, "type", "veth", "peer", "name", "eth0", "netns", h)
		sh(t, "ip", "-n", l.bridge, "link", "set", fmt.Sprintf("v%d", i), "master", "br0", "up")
		sh(t, "ip", "-n", h, "addr", "add", fmt.Sprintf("10.77.0.%d/24", i), "dev", "eth0")
		sh(t, "ip", "-n", h, "link", "set", "eth0", "up")
		sh(t, "ip", "-n", h, "link", "set", "lo", "up")
	}
	return l
}

// cut drops every packet in and out of host i (1-based); heal undoes it.
func (l *netLab) cut(i int) {
	rules := filepath.Join(l.t.TempDir(), "cut.nft")
	os.WriteFile(rules, []byte("table inet pdcut {\n chain in { type filter hook input priority 0; policy drop; iif lo accept; }\n chain out { type filter hook output priority 0; policy drop; oif lo accept; }\n}\n"), 0o600)
	sh(l.t, "ip", "netns", "exec", l.hosts[i-1], "nft", "-f", rules)
}

func (l *netLab) heal(i int) {
	sh(l.t, "ip", "netns", "exec", l.hosts[i-1], "nft", "delete", "table", "inet", "pdcut")
}

func TestPartitionMinorityGoesInquorate(t *testing.T) {
	lab := newNetLab(t, 3)
	bin := testbin.Paddock(t)
	root := t.TempDir()
	var nodes []*testNode
	for i := 1; i <= 3; i++ {
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
	for i := 1; i < 3; i++ {
		tok := strings.Fields(testbin.Run(t, 30*time.Second, bin, "cluster", "add-token", "--data-dir", nodes[0].dir))[0]
		testbin.Run(t, 60*time.Second, "ip", inNS(i, "cluster", "join", nodes[0].addr, "--token", tok, "--data-dir", nodes[i].dir, "--node-name", nodes[i].name, "--cluster-addr", nodes[i].addr)...)
		start(i)
		nodes[0].waitStatus(t, fmt.Sprintf("%d members", i+1), 20*time.Second, members(i+1))
	}
	for _, n := range nodes {
		n.waitStatus(t, "3 members", 20*time.Second, members(3))
	}
	// Cut host 3 off: it goes inquorate, the other two stay quorate.
	lab.cut(3)
	took := nodes[2].waitStatus(t, "inquorate", 10*time.Second, inquorate)
	t.Logf("minority inquorate %v after the cut", took)
	nodes[0].waitStatus(t, "2 members, quorate", 10*time.Second, members(2))
	nodes[1].waitStatus(t, "2 members, quorate", 10*time.Second, members(2))
	// Heal: one view again.
	lab.heal(3)
	for _, n := range nodes {
		n.waitStatus(t, "3 members after healing", 20*time.Second, members(3))
	}
}
