package node

import (
	"strings"
	"testing"
)

func TestWitnessTiming(t *testing.T) {
	for _, c := range []struct{ tokenMs, lease, interval, hold int64 }{
		{1000, 750, 125, 500}, // the default token
		{200, 150, 25, 100},   // the shortest token
		{60000, 30000, 7500, 30000},
	} {
		l, i, h := witnessTiming(c.tokenMs)
		if l != c.lease || i != c.interval || h != c.hold {
			t.Errorf("token %d: lease %d interval %d hold %d; want %d %d %d", c.tokenMs, l, i, h, c.lease, c.interval, c.hold)
		}
		if l >= c.tokenMs && c.tokenMs <= 30000 {
			t.Errorf("token %d: lease %d is not shorter", c.tokenMs, l)
		}
	}
}

func TestWitnessConfig(t *testing.T) {
	base := func() *ClusterConfig {
		return &ClusterConfig{Version: 2, ClusterName: "c", ClusterID: strings.Repeat("a", 32), TokenMs: 1000, Nodes: []NodeConfig{
			{ID: 1, Name: "a", Votes: 1, ClusterAddr: "10.0.0.1:5405"}, {ID: 2, Name: "b", Votes: 1, ClusterAddr: "10.0.0.2:5405"}}}
	}
	for addr, want := range map[string]string{"": "static IP:PORT", "10.0.0.9": "static IP:PORT", "0.0.0.0:5403": "static IP:PORT", "10.0.0.1:5405": "used by a"} {
		c := base()
		c.Quorum.Witness = &Witness{Addr: addr}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("witness %q: %v", addr, err)
		}
	}
	c := base()
	c.Quorum.Witness = &Witness{Addr: "10.0.0.9:5403", Algorithm: "coin"}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "ffsplit or lms") {
		t.Errorf("unknown algorithm: %v", err)
	}
	c.Quorum.Witness.Algorithm = ""
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	qc, err := quorumConfig(c)
	if err != nil || qc.Witness == nil || qc.Witness.Algorithm != "ffsplit" {
		t.Fatalf("quorum config: %+v %v", qc.Witness, err)
	}
	c.Quorum.TwoNode = true
	if _, err := quorumConfig(c); err == nil || !strings.Contains(err.Error(), "two_node and a witness") {
		t.Fatalf("two_node with a witness: %v", err)
	}
}
