package confchange

import (
	"errors"
	"math/rand/v2"
	"testing"
)

// disjointQuorums looks, by brute force, for a strict majority of the old
// votes and a strict majority of the new votes with no voter in common.
func disjointQuorums(old, new Votes) bool {
	ids := Votes{}
	for id := range old {
		ids[id] = 0
	}
	for id := range new {
		ids[id] = 0
	}
	list := ids.IDs()
	qOld, qNew := Majority(old), Majority(new)
	for a := 0; a < 1<<len(list); a++ {
		var wa uint64
		for i, id := range list {
			if a&(1<<i) != 0 {
				wa += uint64(old[id])
			}
		}
		if wa < qOld {
			continue
		}
		var wb uint64 // the best new quorum outside a
		for i, id := range list {
			if a&(1<<i) == 0 {
				wb += uint64(new[id])
			}
		}
		if wb >= qNew {
			return true
		}
	}
	return false
}

// TestVoterChangeRuleIsSafe: whenever CheckVoterChange allows a change, no
// majority of the old votes is disjoint from a majority of the new ones
// (checked by brute force on random small clusters).
func TestVoterChangeRuleIsSafe(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	allowed, refused := 0, 0
	for i := 0; i < 20000; i++ {
		old := Votes{}
		for id := NodeID(1); id <= NodeID(1+rng.IntN(6)); id++ {
			old[id] = uint32(rng.IntN(4))
		}
		if old.Total() == 0 {
			continue
		}
		new := old.clone()
		// One or two nodes change (added, removed, or new votes).
		for k := 0; k < 1+rng.IntN(2); k++ {
			id := NodeID(1 + rng.IntN(7))
			if rng.IntN(3) == 0 {
				delete(new, id)
			} else {
				new[id] = uint32(rng.IntN(4))
			}
		}
		err := CheckVoterChange(old.Voters(), new.Voters())
		if err != nil {
			refused++
			continue
		}
		allowed++
		if disjointQuorums(old.Voters(), new.Voters()) {
			t.Fatalf("allowed %v -> %v, but two majorities are disjoint", old, new)
		}
	}
	if allowed < 1000 || refused < 1000 {
		t.Fatalf("allowed %d, refused %d: the generator is off", allowed, refused)
	}
}

func TestVoterChangeExamples(t *testing.T) {
	three := Votes{1: 1, 2: 1, 3: 1}
	for _, c := range []struct {
		name     string
		old, new Votes
		ok       bool
	}{
		{"same", three, three, true},
		{"add one", three, Votes{1: 1, 2: 1, 3: 1, 4: 1}, true},
		{"remove one", three, Votes{1: 1, 2: 1}, true},
		{"add two", three, Votes{1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, false},
		{"replace one", three, Votes{1: 1, 2: 1, 4: 1}, false},
		{"one node +2 from an odd total", three, Votes{1: 3, 2: 1, 3: 1}, false},
		{"one node +1", three, Votes{1: 2, 2: 1, 3: 1}, true},
		{"one node +2 from an even total", Votes{1: 1, 2: 1}, Votes{1: 1, 2: 1, 3: 2}, true},
		{"no voter left", Votes{1: 1}, Votes{}, false},
		{"learners do not count", Votes{1: 1, 2: 1, 3: 1}.Voters(), Votes{1: 1, 2: 1, 3: 1, 9: 0}.Voters(), true},
	} {
		if err := CheckVoterChange(c.old, c.new); (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

func TestNeedNeverBelowMajority(t *testing.T) {
	voters := Votes{1: 1, 2: 1, 3: 1, 4: 1}
	for _, c := range []struct {
		q    QuorumFunc
		want uint64
		err  error
	}{
		{nil, 3, nil},
		{func(Votes) uint64 { return 1 }, 3, nil}, // two_node-like: ignored
		{func(Votes) uint64 { return 0 }, 3, nil},
		{func(Votes) uint64 { return 4 }, 4, nil}, // expected votes above the voters'
		{func(Votes) uint64 { return 5 }, 0, ErrQuorumUnreachable},
	} {
		got, err := Need(voters, c.q)
		if got != c.want || !errors.Is(err, c.err) {
			t.Errorf("need %d, %v; want %d, %v", got, err, c.want, c.err)
		}
	}
	// The function gets a copy: changing it changes nothing.
	Need(voters, func(v Votes) uint64 { v[1] = 200; return 0 })
	if voters[1] != 1 {
		t.Fatal("quorum function changed the voters")
	}
}

// The daemon's quorum function raises the bar: with 4 of 4 required, a
// node that hears 3 voters cannot commit.
func TestQuorumFunctionRaisesTheBar(t *testing.T) {
	opts := simOptions(1)
	opts.Quorum = func(v Votes) uint64 { return v.Total() }
	hs := Bootstrap(simData{members: Votes{1: 1, 2: 1, 3: 1, 4: 1}, note: "initial"}.encode())
	n, err := New(opts, hs)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := applyChange(hs.Committed, "note x")
	_, out, err := n.Propose(true, 1, data)
	if err != nil {
		t.Fatal(err)
	}
	var prepares []Message
	for _, m := range out.Messages {
		prepares = append(prepares, m)
	}
	for _, m := range prepares[:2] { // nodes 2 and 3 promise; node 4 is silent
		if out, err = n.Step(Message{Type: MsgPromise, From: m.To, To: 1, Version: 2, Ballot: m.Ballot}); err != nil {
			t.Fatal(err)
		}
		for _, m := range out.Messages {
			if m.Type == MsgAccept {
				t.Fatalf("phase 2 with 3 of the 4 required votes")
			}
		}
	}
	out, _ = n.Step(Message{Type: MsgPromise, From: 4, To: 1, Version: 2, Ballot: prepares[0].Ballot})
	if len(out.Messages) == 0 || out.Messages[0].Type != MsgAccept {
		t.Fatalf("no phase 2 with all 4 votes: %+v", out.Messages)
	}
}
