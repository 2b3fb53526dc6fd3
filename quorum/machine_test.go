package quorum

import (
	"testing"
)

func members(ids ...NodeID) []Member {
	out := make([]Member, len(ids))
	for i, id := range ids {
		out[i] = Member{ID: id}
	}
	return out
}

func TestUpdateCleansItsInput(t *testing.T) {
	m, err := New(Config{Nodes: simNodes(3)}, 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Unknown ids carry no vote, duplicates count once, self always counts.
	m.Update(0, View{Members: members(3, 3, 3, 99, 0)})
	st := m.Status()
	if st.TotalVotes != 2 || !st.Quorate || len(st.Members) != 2 || st.Members[0].ID != 2 || st.Members[1].ID != 3 {
		t.Fatalf("status after a messy view: %+v", st)
	}
	if !st.Members[0].Local || st.Members[1].Local {
		t.Errorf("local flag wrong: %+v", st.Members)
	}
}

func TestUpdateIgnoresBadPeerInfo(t *testing.T) {
	m, _ := New(Config{Nodes: simNodes(5)}, 1, 0)
	// A peer claiming to be quorate with absurd expected votes is not
	// believed: 0 and values past the limit are "unknown".
	for _, exp := range []uint32{0, MaxExpectedVotes + 1} {
		m.Update(0, View{Members: []Member{{ID: 2, Info: NodeInfo{ExpectedVotes: exp, Quorate: true}}}})
		if st := m.Status(); st.Quorate || st.ExpectedVotes != 5 || st.HighestExpected != 5 {
			t.Errorf("expected %d from a peer changed things: %+v", exp, st)
		}
	}
}

func TestClockNeverGoesBack(t *testing.T) {
	m, _ := New(Config{Nodes: simNodes(4), LastManStanding: true}, 1, 100_000)
	m.Update(100_000, View{Members: members(1, 2, 3, 4)})
	m.Update(100_000, View{Members: members(1, 2, 3)})
	if st := m.Status(); st.LastManStandingDeadlineMs == nil || *st.LastManStandingDeadlineMs != 110_000 {
		t.Fatalf("timer not armed at 110 s: %+v", st.LastManStandingDeadlineMs)
	}
	// A clock that jumps back is ignored; the timer waits for real time.
	m.Tick(5_000)
	m.Tick(109_999)
	if m.Status().ExpectedVotes != 4 {
		t.Fatal("the timer fired early")
	}
	m.Tick(110_000)
	if st := m.Status(); st.ExpectedVotes != 3 || st.Quorum != 2 || st.LastManStandingDeadlineMs != nil {
		t.Fatalf("after the window: %+v", st)
	}
}

func TestWitnessVoteCountsOnlyForItsMembership(t *testing.T) {
	cfg := Config{Nodes: simNodes(2), Witness: &WitnessConfig{Algorithm: FFSplit}}
	m, _ := New(cfg, 1, 0)
	// A vote granted for {1,2} does not count once the view is {1}.
	m.Update(0, View{Members: members(1), WitnessVoteFor: []NodeID{1, 2}})
	if m.Quorate() {
		t.Fatal("a vote for another membership counted")
	}
	// Order and duplicates do not matter; self is implied.
	m.Update(0, View{Members: members(1), WitnessVoteFor: []NodeID{}})
	if !m.Quorate() {
		t.Fatal("a vote for exactly this membership did not count")
	}
	m.SetWitness(0, false)
	if m.Quorate() || m.Status().Witness.Vote {
		t.Fatal("SetWitness(false) kept the vote")
	}
	m.SetWitness(0, true)
	if !m.Quorate() {
		t.Fatal("SetWitness(true) did not give the vote back")
	}
	// Without a witness configured the vote means nothing.
	plain, _ := New(Config{Nodes: simNodes(2)}, 1, 0)
	plain.Update(0, View{Members: members(1), WitnessVoteFor: []NodeID{1}})
	plain.SetWitness(0, true)
	if plain.Quorate() || plain.Status().TotalVotes != 1 {
		t.Fatal("a witness vote counted without a witness")
	}
}

func TestApplyExpectedBounds(t *testing.T) {
	m, _ := New(Config{Nodes: simNodes(3)}, 1, 0)
	for _, n := range []uint32{0, MaxExpectedVotes + 1} {
		if err := m.ApplyExpected(0, n); err == nil {
			t.Errorf("ApplyExpected(%d) accepted", n)
		}
		if _, err := m.SetExpected(0, n); err == nil {
			t.Errorf("SetExpected(%d) accepted", n)
		}
	}
	// ApplyExpected does not check the quorate rule: it is the
	// partition's decision made elsewhere.
	m.Update(0, View{Members: members(1, 2, 3)})
	if err := m.ApplyExpected(0, 9); err != nil || m.Quorate() {
		t.Fatalf("ApplyExpected(9) on a quorate node: %v, quorate %v", err, m.Quorate())
	}
}

func TestInfoIsWhatPeersNeed(t *testing.T) {
	wfa := true
	m, _ := New(Config{Nodes: simNodes(3), WaitForAll: &wfa}, 1, 0)
	if got := m.Info(); got != (NodeInfo{ExpectedVotes: 3, WaitingForAll: true}) {
		t.Fatalf("fresh node: %+v", got)
	}
	m.Update(0, View{Members: members(1, 2, 3)})
	if got := m.Info(); got != (NodeInfo{ExpectedVotes: 3, Quorate: true}) {
		t.Fatalf("after seeing all: %+v", got)
	}
	if m.NodeID() != 1 {
		t.Fatal("NodeID")
	}
}

// TestUpdateIsIdempotent: feeding the same view every tick changes
// nothing, which is how the daemon will call it.
func TestUpdateIsIdempotent(t *testing.T) {
	m, err := New(Config{Nodes: simNodes(6), LastManStanding: true, AutoTieBreaker: true}, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	m.Update(0, View{Members: members(1, 2, 3, 4, 5, 6)})
	m.Update(0, View{Members: members(1, 2, 3, 4)})
	before := m.Status()
	for now := int64(1); now < 100; now++ {
		m.Update(now, View{Members: members(1, 2, 3, 4)})
	}
	after := m.Status()
	if before.Quorate != after.Quorate || before.ExpectedVotes != after.ExpectedVotes || before.Quorum != after.Quorum ||
		*before.LastManStandingDeadlineMs != *after.LastManStandingDeadlineMs {
		t.Fatalf("repeated updates changed the state: %+v -> %+v", before, after)
	}
}
