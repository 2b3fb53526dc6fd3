package node

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// netTestConfig is a valid 3-node cluster: n1 and n2 on their own hosts
// (cluster and storage on different IPs for n1), n3 sharing n2's host.
func netTestConfig(t *testing.T) *ClusterConfig {
	t.Helper()
	c := &ClusterConfig{Version: 1, ClusterName: "lab", ClusterID: strings.Repeat("ab", 16), TokenMs: 1000,
		Nodes: []NodeConfig{
			{ID: 1, Name: "n1", Votes: 1, ClusterAddr: "10.0.0.1:5405", StorageAddr: "10.1.0.1:10809", MigrationAddr: "10.0.0.1:7000"},
			{ID: 2, Name: "n2", Votes: 1, ClusterAddr: "10.0.0.2:5405", StorageAddr: "10.1.0.2:10809"},
			{ID: 3, Name: "n3", Votes: 1, ClusterAddr: "10.0.0.2:5406", StorageAddr: "10.1.0.3:10809"},
		}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

func addrStrings(as []netip.Addr) string { return fmt.Sprint(as) }

func TestVictimAddrs(t *testing.T) {
	c := netTestConfig(t)
	for _, tc := range []struct{ node, want, err string }{
		{"n1", "[10.0.0.1 10.1.0.1]", ""},
		// n2's cluster IP is n3's too: only its storage IP is its own.
		{"n2", "[10.1.0.2]", ""},
		{"n3", "[10.1.0.3]", ""},
		{"nx", "", "no node named"},
	} {
		got, err := c.victimAddrs(tc.node)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.node, err, tc.err)
			}
			continue
		}
		if err != nil || addrStrings(got) != tc.want {
			t.Errorf("%s: %v %v, want %s", tc.node, got, err, tc.want)
		}
	}
	// The witness's IP is never a victim's.
	c.Quorum.Witness = &Witness{Addr: "10.1.0.1:5500"}
	if got, _ := c.victimAddrs("n1"); addrStrings(got) != "[10.0.0.1]" {
		t.Errorf("with the witness on 10.1.0.1: %v", got)
	}
	// Nodes on one host (loopback tests): nothing of its own to drop.
	lo := &ClusterConfig{Nodes: []NodeConfig{{ID: 1, Name: "a", ClusterAddr: "127.0.0.1:1"}, {ID: 2, Name: "b", ClusterAddr: "127.0.0.1:2"}}}
	if got, err := lo.victimAddrs("a"); err == nil || len(got) > 0 {
		t.Errorf("shared loopback: %v %v, want an error", got, err)
	}
}

func TestNetBlockAddRemove(t *testing.T) {
	c := netTestConfig(t)
	next, err := withNetBlock(c, "n1", "n2", 1234)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.netBlock("n1"); ok {
		t.Fatal("withNetBlock changed its input")
	}
	b, ok := next.netBlock("n1")
	if !ok || fmt.Sprint(b.Addrs) != "[10.0.0.1 10.1.0.1]" || b.SinceMs != 1234 || b.By != "n2" {
		t.Fatalf("block %+v %v", b, ok)
	}
	if !next.netBlockedID(1) || next.netBlockedID(2) {
		t.Fatal("netBlockedID")
	}
	if _, err := withNetBlock(next, "n1", "n2", 1); err == nil || !strings.Contains(err.Error(), "already") {
		t.Fatalf("blocking twice: %v", err)
	}
	if _, err := withNetBlock(next, "nx", "n2", 1); err == nil || !strings.Contains(err.Error(), "no node named") {
		t.Fatalf("blocking an unknown node: %v", err)
	}
	// Survives the trip through cluster.json.
	data, _ := json.Marshal(next)
	var loaded ClusterConfig
	if err := json.Unmarshal(data, &loaded); err != nil || loaded.Validate() != nil || !loaded.netBlockedID(1) {
		t.Fatalf("after a JSON round trip: %v %v", err, loaded.Validate())
	}
	// Every node but the victim drops its addresses; the victim drops
	// nothing of its own block.
	if got := next.blockedAddrsFor(2); addrStrings(got) != "[10.0.0.1 10.1.0.1]" {
		t.Errorf("n2 drops %v", got)
	}
	if got := next.blockedAddrsFor(1); len(got) != 0 {
		t.Errorf("the victim drops %v", got)
	}
	both, err := withNetBlock(next, "n3", "n2", 5)
	if err != nil {
		t.Fatal(err)
	}
	if got := both.blockedAddrsFor(2); addrStrings(got) != "[10.0.0.1 10.1.0.1 10.1.0.3]" {
		t.Errorf("n2 drops %v with two blocks", got)
	}

	back, err := withoutNetBlock(both, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if back.netBlockedID(1) || !back.netBlockedID(3) || !both.netBlockedID(1) {
		t.Fatal("withoutNetBlock removed the wrong block or changed its input")
	}
	if _, err := withoutNetBlock(back, "n1"); err == nil || !strings.Contains(err.Error(), "not fenced") {
		t.Fatalf("unfencing a node that is not fenced: %v", err)
	}
	if _, err := withoutNetBlock(back, "nx"); err == nil || !strings.Contains(err.Error(), "no node named") {
		t.Fatalf("unfencing an unknown node: %v", err)
	}
}

func TestNetBlockValidate(t *testing.T) {
	base, err := withNetBlock(netTestConfig(t), "n1", "n2", 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(c *ClusterConfig)
		want string
	}{
		{"another node's address", func(c *ClusterConfig) { c.Fence.Blocked[0].Addrs = []string{"10.0.0.2"} }, "not one of its own"},
		{"shared address", func(c *ClusterConfig) {
			c.Fence.Blocked[0] = NetBlock{Node: "n2", Addrs: []string{"10.0.0.2"}}
		}, "not one of its own"},
		{"not an address", func(c *ClusterConfig) { c.Fence.Blocked[0].Addrs = []string{"10.0.0.1:5405"} }, "address"},
		{"no addresses", func(c *ClusterConfig) { c.Fence.Blocked[0].Addrs = nil }, "addresses"},
		{"too many addresses", func(c *ClusterConfig) {
			c.Fence.Blocked[0].Addrs = []string{"10.0.0.1", "10.1.0.1", "10.0.0.1", "10.1.0.1"}
		}, "addresses"},
		{"unknown node", func(c *ClusterConfig) { c.Fence.Blocked[0].Node = "nx" }, "no such node"},
		{"twice", func(c *ClusterConfig) { c.Fence.Blocked = append(c.Fence.Blocked, c.Fence.Blocked[0]) }, "twice"},
		// Removing a fenced node would let it through: refused.
		{"fenced node removed", func(c *ClusterConfig) {
			c.Nodes = slices.DeleteFunc(c.Nodes, func(n NodeConfig) bool { return n.Name == "n1" })
		}, "unfence n1"},
		// A witness moved onto a blocked address.
		{"witness on the address", func(c *ClusterConfig) { c.Quorum.Witness = &Witness{Addr: "10.1.0.1:5500"} }, "not one of its own"},
	} {
		c := cloneConfig(base)
		tc.edit(c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	if err := base.Validate(); err != nil {
		t.Fatalf("the unedited block: %v", err)
	}
}

func TestAddrDiff(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	applied := map[netip.Addr]bool{a("10.0.0.1"): true, a("10.0.0.2"): true}
	block, unblock := addrDiff(applied, []netip.Addr{a("10.0.0.2"), a("10.0.0.3")})
	if addrStrings(block) != "[10.0.0.3]" || addrStrings(unblock) != "[10.0.0.1]" {
		t.Fatalf("block %v unblock %v", block, unblock)
	}
	block, unblock = addrDiff(nil, nil)
	if len(block)+len(unblock) != 0 {
		t.Fatalf("empty: %v %v", block, unblock)
	}
}
