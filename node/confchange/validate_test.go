package confchange

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// testNode is node 1 of {1,2,3} (one vote each) at version 1, holding
// node 2's value "note x" accepted at ballot 5.2, and a proposal of its own
// in flight: state that a bad message could damage.
func testNode(t testing.TB) (*Node, Config) {
	t.Helper()
	base := Bootstrap(simData{members: Votes{1: 1, 2: 1, 3: 1}, note: "initial"}.encode()).Committed
	n, err := New(simOptions(1), HardState{Committed: base})
	if err != nil {
		t.Fatal(err)
	}
	x := changed(t, base, "note x")
	if _, err := n.Step(Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{5, 2}, Value: x}); err != nil {
		t.Fatal(err)
	}
	data, _ := applyChange(base, "note mine")
	if _, _, err := n.Propose(true, 1, data); err != nil {
		t.Fatal(err)
	}
	return n, base
}

func changed(t testing.TB, base Config, change string) Config {
	t.Helper()
	data, err := applyChange(base, change)
	if err != nil {
		t.Fatal(err)
	}
	return NewConfig(base.Version+1, data)
}

// snapshot is everything a message could change.
type snapshot struct {
	hs     []byte
	status Status
	prop   proposal
	seen   uint64
	served int
}

func snap(n *Node) snapshot {
	s := snapshot{hs: EncodeHardState(n.hs), status: n.Status(), seen: n.seenRound, served: n.servedThisTick}
	if n.prop != nil {
		s.prop = *n.prop
	}
	return s
}

func sameSnap(a, b snapshot) bool {
	return bytes.Equal(a.hs, b.hs) && reflect.DeepEqual(a.status, b.status) &&
		reflect.DeepEqual(a.prop, b.prop) && a.seen == b.seen && a.served == b.served
}

func TestBadMessagesChangeNothing(t *testing.T) {
	_, base := testNode(t)
	y := changed(t, base, "note y")
	bigData := append(append([]byte(nil), base.Data...), bytes.Repeat([]byte(" "), MaxConfigBytes)...)
	withData := func(v uint64, data string) Config { return NewConfig(v, []byte(data)) }
	badDigest := y
	badDigest.Digest[0] ^= 1
	mine := Ballot{6, 1} // the proposal's ballot

	cases := []struct {
		name string
		m    Message
		want string
	}{
		{"type 0", Message{From: 2, To: 1, Version: 2}, "unknown type"},
		{"type 99", Message{Type: 99, From: 2, To: 1, Version: 2}, "unknown type"},
		{"from 0", Message{Type: MsgPrepare, To: 1, Version: 2, Ballot: Ballot{7, 0}}, "ids start at 1"},
		{"to 0", Message{Type: MsgPrepare, From: 2, Version: 2, Ballot: Ballot{7, 2}}, "ids start at 1"},
		{"to itself", Message{Type: MsgPrepare, From: 1, To: 1, Version: 2, Ballot: Ballot{7, 1}}, "to itself"},
		{"for another node", Message{Type: MsgPrepare, From: 2, To: 3, Version: 2, Ballot: Ballot{7, 2}}, "reached node 1"},
		{"prepare v1", Message{Type: MsgPrepare, From: 2, To: 1, Version: 1, Ballot: Ballot{7, 2}}, "from 2 on"},
		{"prepare v0", Message{Type: MsgPrepare, From: 2, To: 1, Ballot: Ballot{7, 2}}, "from 2 on"},
		{"version too high", Message{Type: MsgPrepare, From: 2, To: 1, Version: MaxVersion + 1, Ballot: Ballot{7, 2}}, "above"},
		{"prepare no ballot", Message{Type: MsgPrepare, From: 2, To: 1, Version: 2}, "round 0"},
		{"round too high", Message{Type: MsgPrepare, From: 2, To: 1, Version: 2, Ballot: Ballot{MaxRound + 1, 2}}, "outside"},
		{"ballot of another proposer", Message{Type: MsgPrepare, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 3}}, "names proposer 3"},
		{"ballot without proposer", Message{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 1}, Reason: NackBallot, Promised: Ballot{8, 0}}, "no proposer"},
		{"prepare with value", Message{Type: MsgPrepare, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: y}, "carries a configuration"},
		{"prepare with accepted", Message{Type: MsgPrepare, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, AcceptedBallot: Ballot{1, 2}}, "accepted ballot"},
		{"prepare with nack fields", Message{Type: MsgPrepare, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Committed: 3}, "nack fields"},
		{"prepare from non-member", Message{Type: MsgPrepare, From: 9, To: 1, Version: 2, Ballot: Ballot{7, 9}}, "not a member"},
		{"promise for another proposer", Message{Type: MsgPromise, From: 2, To: 1, Version: 2, Ballot: Ballot{6, 2}}, "names proposer 2"},
		{"promise accepted without value", Message{Type: MsgPromise, From: 2, To: 1, Version: 2, Ballot: mine, AcceptedBallot: Ballot{1, 2}}, "go together"},
		{"promise value without ballot", Message{Type: MsgPromise, From: 2, To: 1, Version: 2, Ballot: mine, Value: y}, "go together"},
		{"promise value of another version", Message{Type: MsgPromise, From: 2, To: 1, Version: 2, Ballot: mine, AcceptedBallot: Ballot{1, 2}, Value: withData(3, "x")}, "carries version 3"},
		{"promise accepted above promise", Message{Type: MsgPromise, From: 2, To: 1, Version: 2, Ballot: mine, AcceptedBallot: Ballot{9, 2}, Value: y}, "higher"},
		{"accept without value", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}}, "must carry"},
		{"accept bad digest", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: badDigest}, "does not match"},
		{"accept other version", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: withData(3, "members 1=1")}, "must carry"},
		{"accept too large", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: NewConfig(2, bigData)}, "at most"},
		{"accept unreadable", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: withData(2, "garbage")}, "unknown line"},
		{"accept no voters", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: withData(2, "members 1=0 2=0")}, "no member has a vote"},
		{"accept member id 0", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: withData(2, "members 0=1 1=1 2=1 3=1")}, "id 0"},
		{"accept too many votes", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: withData(2, "members 1=1 2=1 3=256")}, "at most 255"},
		{"accept too many members", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: withData(2, "members 1=1 2=1 3=1"+manyLearners())}, "at most 64"},
		{"accept two voters at once", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: changed(t, base, "add 4, add 5")}, "one node at a time"},
		{"accept from non-member", Message{Type: MsgAccept, From: 9, To: 1, Version: 2, Ballot: Ballot{7, 9}, Value: y}, "not a member"},
		{"two values at one ballot", Message{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{5, 2}, Value: y}, "already named"},
		{"accepted with value", Message{Type: MsgAccepted, From: 2, To: 1, Version: 2, Ballot: mine, Value: y}, "carries a configuration"},
		{"nack reason 0", Message{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: mine}, "unknown reason"},
		{"nack reason 9", Message{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: mine, Reason: 9}, "unknown reason"},
		{"nack ballot not higher", Message{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: mine, Reason: NackBallot, Promised: Ballot{6, 0}}, "no proposer"},
		{"nack ballot lower", Message{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: mine, Reason: NackBallot, Promised: Ballot{2, 2}}, "not higher"},
		{"nack ballot with value", Message{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: mine, Reason: NackBallot, Promised: Ballot{9, 2}, Value: y, Committed: 2}, "carries a configuration"},
		{"nack decided without value", Message{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: mine, Reason: NackDecided, Committed: 2}, "must carry"},
		{"nack decided older value", Message{Type: MsgNack, From: 2, To: 1, Version: 3, Ballot: mine, Reason: NackDecided, Value: y, Committed: 2}, "must carry"},
		{"nack decided wrong committed", Message{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: mine, Reason: NackDecided, Value: y, Committed: 5}, "must carry"},
		{"nack behind not behind", Message{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: mine, Reason: NackBehind, Committed: 1}, "from a node at version 1"},
		{"nack behind with ballot", Message{Type: MsgNack, From: 2, To: 1, Version: 3, Ballot: mine, Reason: NackBehind, Promised: Ballot{9, 2}}, "carries"},
		{"commit v1", Message{Type: MsgCommit, From: 2, To: 1, Version: 1, Value: base}, "from 2 on"},
		{"commit with ballot", Message{Type: MsgCommit, From: 2, To: 1, Version: 2, Ballot: Ballot{1, 2}, Value: y}, "carries a ballot"},
		{"commit of another version", Message{Type: MsgCommit, From: 2, To: 1, Version: 3, Value: y}, "must carry"},
		{"commit without value", Message{Type: MsgCommit, From: 2, To: 1, Version: 2}, "must carry"},
		{"catch-up conflicting", Message{Type: MsgCatchUp, From: 2, To: 1, Version: 1, Value: withData(1, "members 1=1 2=1 3=1\nnote forged")}, "but v1"},
		{"catch-up without value", Message{Type: MsgCatchUp, From: 2, To: 1, Version: 2}, "must carry"},
		{"catch-up request with value", Message{Type: MsgCatchUpRequest, From: 2, To: 1, Version: 0, Value: y}, "carries a configuration"},
		{"catch-up request with ballot", Message{Type: MsgCatchUpRequest, From: 2, To: 1, Ballot: Ballot{1, 2}}, "carries a ballot"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, _ := testNode(t)
			before := snap(n)
			out, err := n.Step(c.m)
			if err == nil {
				t.Fatalf("accepted %s", c.m)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			if !out.IsEmpty() {
				t.Errorf("output on error: %+v", out)
			}
			if !sameSnap(before, snap(n)) {
				t.Errorf("state changed")
			}
			// The wire decoder refuses what Validate refuses (except what
			// needs the node's state).
			if _, err := DecodeMessage(EncodeMessage(c.m), 0); err == nil && c.m.Validate(0) != nil {
				t.Errorf("decoder accepted what Validate refuses")
			}
		})
	}
}

// manyLearners is MaxMembers learners, enough to go over the limit.
func manyLearners() string {
	var b strings.Builder
	for id := 100; id < 100+MaxMembers; id++ {
		fmt.Fprintf(&b, " %d=0", id)
	}
	return b.String()
}

// Late, duplicated or unsolicited messages are not errors: they are
// ignored, or answered without harm.
func TestStaleMessagesAreIgnored(t *testing.T) {
	n, base := testNode(t)
	y := changed(t, base, "note y")
	for _, m := range []Message{
		{Type: MsgPromise, From: 2, To: 1, Version: 2, Ballot: Ballot{3, 1}},                                          // an old ballot
		{Type: MsgAccepted, From: 2, To: 1, Version: 2, Ballot: Ballot{6, 1}},                                         // phase 2 not reached
		{Type: MsgPromise, From: 2, To: 1, Version: 5, Ballot: Ballot{6, 1}},                                          // another version
		{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: Ballot{3, 1}, Reason: NackBallot, Promised: Ballot{4, 2}}, // old ballot
		{Type: MsgNack, From: 2, To: 1, Version: 3, Ballot: Ballot{6, 1}, Reason: NackBehind, Committed: 0},           // not our version
		{Type: MsgCatchUpRequest, From: 2, To: 1, Version: 1},                                                         // not behind us
	} {
		before := snap(n)
		out, err := n.Step(m)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		if !out.IsEmpty() {
			t.Errorf("%s: output %+v", m, out)
		}
		after := snap(n)
		before.seen, after.seen = 0, 0 // a refusal teaches the round, harmlessly
		if !sameSnap(before, after) {
			t.Errorf("%s: state changed", m)
		}
	}
	// A duplicate Commit of our own version: no error, nothing new.
	out, err := n.Step(Message{Type: MsgCommit, From: 2, To: 1, Version: 2, Value: y})
	if err != nil || len(out.Applied) != 1 {
		t.Fatalf("commit: %v %+v", err, out)
	}
	out, err = n.Step(Message{Type: MsgCommit, From: 3, To: 1, Version: 2, Value: y})
	if err != nil || !out.IsEmpty() {
		t.Fatalf("duplicate commit: %v %+v", err, out)
	}
}

func TestObservePeerVersionRefusesNonsense(t *testing.T) {
	n, _ := testNode(t)
	for _, c := range []struct {
		peer    NodeID
		version uint64
	}{{0, 5}, {1, 5}, {2, MaxVersion + 1}} {
		before := snap(n)
		out, err := n.ObservePeerVersion(c.peer, c.version)
		if err == nil || !out.IsEmpty() || !sameSnap(before, snap(n)) {
			t.Errorf("peer %d version %d: err %v", c.peer, c.version, err)
		}
	}
	// Asking is rate-limited to once per RetryTicks.
	out, _ := n.ObservePeerVersion(2, 9)
	out2, _ := n.ObservePeerVersion(3, 9)
	if len(out.Messages) != 1 || len(out2.Messages) != 0 {
		t.Errorf("asked %d then %d times", len(out.Messages), len(out2.Messages))
	}
}
