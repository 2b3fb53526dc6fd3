package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-io/paddock/quorum/membership"
)

func createTest(t *testing.T) (DataDir, *ClusterConfig) {
	d := DataDir{Path: filepath.Join(t.TempDir(), "n1")}
	cfg, err := CreateCluster(d, CreateOptions{ClusterName: "lab", NodeName: "pve1", ClusterAddr: "127.0.0.1:5405", StorageAddr: "127.0.0.1:10809"})
	if err != nil {
		t.Fatal(err)
	}
	return d, cfg
}

func TestCreateAndLoad(t *testing.T) {
	d, cfg := createTest(t)
	l, err := Load(d)
	if err != nil {
		t.Fatal(err)
	}
	if l.Config.ClusterID != cfg.ClusterID || l.Identity.Name != "pve1" || len(l.AuthKey) != 32 {
		t.Fatalf("loaded %+v", l.Identity)
	}
	// The node certificate chains to the CA and names the addresses.
	leaf := l.PKI.NodeCert.Leaf
	if leaf == nil || leaf.Subject.CommonName != "pve1" || len(leaf.IPAddresses) != 1 {
		t.Fatalf("node certificate %+v", leaf)
	}
	if _, err := CreateCluster(d, CreateOptions{ClusterName: "lab", NodeName: "x", ClusterAddr: "127.0.0.1:1"}); err == nil {
		t.Fatal("created over an existing node")
	}
	for _, inc := range []uint64{1, 2} {
		if n, err := d.NextIncarnation(); err != nil || n != inc {
			t.Fatalf("incarnation %d %v, want %d", n, err, inc)
		}
	}
}

func TestLoadRefusesCorruptFiles(t *testing.T) {
	for name, content := range map[string]string{
		"cluster.json": `{"version": 1, "nodes": [`,
		"node.json":    `{"id": "one"}`,
		"keys/authkey": "short",
		"keys/ca.pem":  "not a certificate",
	} {
		d, _ := createTest(t)
		if err := os.WriteFile(filepath.Join(d.Path, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(d)
		if err == nil || !strings.Contains(err.Error(), filepath.Base(name)) {
			t.Errorf("corrupt %s: %v", name, err)
		}
	}
	// Unknown fields are refused too: a typo must not pass silently.
	d, _ := createTest(t)
	os.WriteFile(filepath.Join(d.Path, "node.json"), []byte(`{"id":1,"name":"pve1","cluster_id":"x","colour":"red"}`), 0o600)
	if _, err := Load(d); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("unknown field: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	_, base := createTest(t)
	add := func(n NodeConfig) *ClusterConfig {
		c := cloneConfig(base)
		c.Nodes = append(c.Nodes, n)
		return c
	}
	bad := map[string]*ClusterConfig{
		"duplicate name":    add(NodeConfig{ID: 2, Name: "pve1", Votes: 1, ClusterAddr: "127.0.0.2:5405"}),
		"duplicate id":      add(NodeConfig{ID: 1, Name: "pve2", Votes: 1, ClusterAddr: "127.0.0.2:5405"}),
		"duplicate address": add(NodeConfig{ID: 2, Name: "pve2", Votes: 1, ClusterAddr: "127.0.0.1:5405"}),
		"bad address":       add(NodeConfig{ID: 2, Name: "pve2", Votes: 1, ClusterAddr: "pve2:5405"}),
		"wildcard address":  add(NodeConfig{ID: 2, Name: "pve2", Votes: 1, ClusterAddr: "0.0.0.0:5405"}),
		"bad name":          add(NodeConfig{ID: 2, Name: "pve 2", Votes: 1, ClusterAddr: "127.0.0.2:5405"}),
		"too many votes":    add(NodeConfig{ID: 2, Name: "pve2", Votes: 1000, ClusterAddr: "127.0.0.2:5405"}),
	}
	for what, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%s accepted", what)
		}
	}
	if err := add(NodeConfig{ID: 2, Name: "pve2", Votes: 1, ClusterAddr: "127.0.0.2:5405"}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestTokens(t *testing.T) {
	ts := &tokenStore{path: filepath.Join(t.TempDir(), "tokens.json")}
	tok, _, err := ts.issue(strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.consume(p.Secret); err != nil {
		t.Fatal(err)
	}
	if err := ts.consume(p.Secret); err == nil || !strings.Contains(err.Error(), "used already") {
		t.Fatalf("second use: %v", err)
	}
	if err := ts.consume(make([]byte, tokenSecretLen)); err == nil {
		t.Fatal("unknown token accepted")
	}
	for _, bad := range []string{"", "pdk1.x.y", "pdk2.AAAAAAAAAAAAAAAAAAAAAA.00000000000000000000000000000000"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("token %q accepted", bad)
		}
	}
}

// TestQuorumEngine drives the daemon's adapter over package quorum with
// the seeds' examples.
func TestQuorumEngine(t *testing.T) {
	_, c := createTest(t)
	c.Nodes = append(c.Nodes, NodeConfig{ID: 2, Name: "pve2", Votes: 1, ClusterAddr: "127.0.0.2:5405"}, NodeConfig{ID: 3, Name: "pve3", Votes: 1, ClusterAddr: "127.0.0.3:5405"})
	q, err := newQuorumEngine(c, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	now := int64(0)
	step := func(ids ...uint32) QuorumView {
		now += 100
		var ms []membership.MemberInfo
		for _, id := range ids {
			ms = append(ms, membership.MemberInfo{ID: membership.NodeID(id)})
		}
		q.Update(now, ms)
		return q.View(ids)
	}
	if v := step(1, 2, 3); !v.Quorate || v.Quorum != 2 || v.TotalVotes != 3 {
		t.Fatalf("3 of 3: %+v", v)
	}
	if v := step(1, 2); !v.Quorate {
		t.Fatalf("3 nodes lose 1: %+v", v)
	}
	if v := step(1); v.Quorate || v.Quorum != 2 {
		t.Fatalf("3 nodes lose 2: %+v", v)
	}
	if flags, exp := q.LocalInfo(); flags&membership.FlagQuorate != 0 || exp != 3 {
		t.Fatalf("announced %#x %d", flags, exp)
	}
	if _, err := q.SetExpected(now, 0); err == nil {
		t.Fatal("expected 0 accepted")
	}
	if _, err := q.SetExpected(now, 1); err != nil {
		t.Fatal(err)
	}
	if v := step(1); !v.Quorate || v.Quorum != 1 {
		t.Fatalf("after expected 1: %+v", v)
	}
	if v := step(1, 2, 3); v.ExpectedVotes != 3 || v.Quorum != 2 {
		t.Fatalf("expected votes rise again with the votes present: %+v", v)
	}
	if _, err := q.SetExpected(now, 6); err == nil {
		t.Fatal("expected 6 would make a quorate cluster of 3 votes inquorate (quorum 4), yet accepted")
	}
	// Six nodes need four (the Pacemaker seed's example).
	for i := uint32(4); i <= 6; i++ {
		c.Nodes = append(c.Nodes, NodeConfig{ID: i, Name: "pve" + string(rune('0'+i)), Votes: 1, ClusterAddr: "127.0.0." + string(rune('0'+i)) + ":5405"})
	}
	q, _ = newQuorumEngine(c, 1, 0)
	if v := step(1, 2, 3); v.Quorate || v.Quorum != 4 {
		t.Fatalf("6 nodes, 3 present: %+v", v)
	}
	// Two nodes lose one: inquorate, unless two_node.
	c.Nodes = c.Nodes[:2]
	q, _ = newQuorumEngine(c, 1, 0)
	step(1, 2)
	if v := step(1); v.Quorate {
		t.Fatalf("2 nodes lose 1 without two_node: %+v", v)
	}
	c.Quorum.TwoNode = true
	q, _ = newQuorumEngine(c, 1, 0)
	if v := step(1); v.Quorate {
		t.Fatalf("two_node implies wait_for_all: alone at start must wait: %+v", v)
	}
	step(1, 2)
	if v := step(1); !v.Quorate {
		t.Fatalf("two_node after both were seen: %+v", v)
	}
	// Conflicts corosync refuses are refused here too.
	c.Quorum.AutoTieBreaker = true
	if _, err := newQuorumEngine(c, 1, 0); err == nil {
		t.Fatal("two_node with auto_tie_breaker accepted")
	}
	c.Quorum.AutoTieBreaker = false
	c.Quorum.Witness = &Witness{Addr: "127.0.0.9:5406"}
	if _, err := newQuorumEngine(c, 1, 0); err == nil {
		t.Fatal("a witness was accepted though the daemon cannot reach one")
	}
}
