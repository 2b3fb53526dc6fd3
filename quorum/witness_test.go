package quorum

import (
	"strings"
	"testing"
)

func twoNodeWitness() Config {
	return Config{Nodes: simNodes(2), Witness: &WitnessConfig{Algorithm: FFSplit}}
}

func TestArbiterNeedsAWitness(t *testing.T) {
	if _, err := NewArbiter(Config{Nodes: simNodes(2)}, nil); err == nil {
		t.Fatal("an arbiter without a witness configured")
	}
	if _, err := NewArbiter(Config{}, nil); err == nil {
		t.Fatal("an arbiter for an invalid configuration")
	}
}

func TestArbiterRefusesUnstableMembership(t *testing.T) {
	a, _ := NewArbiter(Config{Nodes: simNodes(4), Witness: &WitnessConfig{Algorithm: FFSplit}}, nil)
	d := a.Decide([]WitnessClient{{ID: 1, Membership: []NodeID{1, 2, 3}}, {ID: 2, Membership: []NodeID{2, 3}}})
	if d.Winner != nil || !strings.Contains(d.Reason, "not stable") {
		t.Fatalf("unstable membership decided: %+v", d)
	}
	d = a.Decide([]WitnessClient{{ID: 1, Membership: []NodeID{1}}, {ID: 1, Membership: []NodeID{1}}})
	if d.Winner != nil || !strings.Contains(d.Reason, "twice") {
		t.Fatalf("a node connected twice: %+v", d)
	}
}

func TestArbiterIgnoresStrangers(t *testing.T) {
	a, _ := NewArbiter(twoNodeWitness(), nil)
	// Node 9 is not in the cluster: neither a client nor a member.
	d := a.Decide([]WitnessClient{{ID: 9, Membership: []NodeID{9, 1, 2}}, {ID: 1, Membership: []NodeID{1, 2, 9}}, {ID: 2, Membership: []NodeID{2, 1}}})
	if !d.Grants(1) || !d.Grants(2) || d.Grants(9) || len(d.Winner) != 2 {
		t.Fatalf("decision with a stranger: %+v", d)
	}
}

// TestArbiterRemembersAcrossRestarts: the witness keeps Active on disk;
// a restarted witness still refuses the vote to a partition that does not
// share a node with the last one it voted for.
func TestArbiterRemembersAcrossRestarts(t *testing.T) {
	a, _ := NewArbiter(twoNodeWitness(), nil)
	// A new witness votes only for a majority of the nodes.
	if d := a.Decide([]WitnessClient{{ID: 1, Membership: []NodeID{1}}}); d.Winner != nil {
		t.Fatalf("a new witness gave a lone node the vote: %+v", d)
	}
	a.Decide([]WitnessClient{{ID: 1, Membership: []NodeID{1, 2}}, {ID: 2, Membership: []NodeID{1, 2}}})
	a.Decide([]WitnessClient{{ID: 1, Membership: []NodeID{1}}, {ID: 2, Membership: []NodeID{2}}})
	if got := a.Active(); len(got) != 1 || got[0] != 1 {
		t.Fatalf("active after a split: %v", got)
	}
	restarted, _ := NewArbiter(twoNodeWitness(), append(a.Active(), 7)) // 7: not configured, dropped
	if d := restarted.Decide([]WitnessClient{{ID: 2, Membership: []NodeID{2}}}); d.Winner != nil {
		t.Fatalf("restarted witness gave node 2 the vote: %+v", d)
	}
	if d := restarted.Decide([]WitnessClient{{ID: 1, Membership: []NodeID{1}}}); !d.Grants(1) {
		t.Fatalf("restarted witness refused node 1: %+v", d)
	}
}

func TestArbiterLMSTieBreakers(t *testing.T) {
	for _, tc := range []struct {
		tb   TieBreaker
		want NodeID
	}{
		{TieBreaker{Mode: TieBreakLowest}, 1},
		{TieBreaker{Mode: TieBreakHighest}, 4},
		{TieBreaker{Mode: TieBreakList, Nodes: []NodeID{3}}, 3},
	} {
		cfg := Config{Nodes: simNodes(4), Witness: &WitnessConfig{Algorithm: LMS, TieBreaker: tc.tb}}
		a, err := NewArbiter(cfg, []NodeID{1, 2, 3, 4})
		if err != nil {
			t.Fatal(err)
		}
		d := a.Decide([]WitnessClient{
			{ID: 1, Membership: []NodeID{1, 2}}, {ID: 2, Membership: []NodeID{1, 2}},
			{ID: 3, Membership: []NodeID{3, 4}}, {ID: 4, Membership: []NodeID{3, 4}},
		})
		if !d.Grants(tc.want) {
			t.Errorf("tie breaker %s: %+v, want node %d to get the vote", tc.tb, d, tc.want)
		}
	}
}

func TestArbiterTieBreakerAbsent(t *testing.T) {
	// lms, node 6 named as tie breaker but down: two equal halves, the
	// one with the lowest node wins, deterministically (qnetd keeps the
	// first partition it looked at).
	cfg := Config{Nodes: simNodes(6), Witness: &WitnessConfig{Algorithm: LMS, TieBreaker: TieBreaker{Mode: TieBreakList, Nodes: []NodeID{6}}}}
	a, _ := NewArbiter(cfg, []NodeID{1, 2, 3, 4, 5, 6})
	d := a.Decide([]WitnessClient{
		{ID: 3, Membership: []NodeID{3, 4}}, {ID: 4, Membership: []NodeID{3, 4}},
		{ID: 1, Membership: []NodeID{1, 2}}, {ID: 2, Membership: []NodeID{1, 2}},
	})
	if !d.Grants(1) || !d.Grants(2) || !strings.Contains(d.Reason, "lowest node id") {
		t.Fatalf("fallback tie break: %+v", d)
	}
	// ffsplit halves of an even cluster always hold the tie breaker.
	cfg.Witness.Algorithm = FFSplit
	a, _ = NewArbiter(cfg, []NodeID{1, 2, 3, 4, 5, 6})
	d = a.Decide([]WitnessClient{{ID: 2, Membership: []NodeID{2, 3, 4}}, {ID: 1, Membership: []NodeID{1, 5, 6}}})
	if !d.Grants(1) || !strings.Contains(d.Reason, "node 6") {
		t.Fatalf("ffsplit tie break: %+v", d)
	}
}

func TestArbiterMarksUnstable(t *testing.T) {
	a, _ := NewArbiter(twoNodeWitness(), nil)
	d := a.Decide([]WitnessClient{{ID: 1, Membership: []NodeID{1}}, {ID: 2, Membership: []NodeID{1, 2}}})
	if !d.Unstable || d.Winner != nil {
		t.Fatalf("disagreeing reports: %+v", d)
	}
	if d := a.Decide([]WitnessClient{{ID: 1, Membership: []NodeID{1, 2}}, {ID: 2, Membership: []NodeID{1, 2}}}); d.Unstable {
		t.Fatalf("agreeing reports marked unstable: %+v", d)
	}
}
