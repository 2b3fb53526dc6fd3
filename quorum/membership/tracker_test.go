package membership

import (
	"fmt"
	"testing"
)

func hb(from NodeID, inc, seq uint64, heard ...NodeID) *Heartbeat {
	return &Heartbeat{ClusterTag: 1, From: from, Incarnation: inc, Seq: seq, Peers: heardReports(heard...)}
}

func heardReports(ids ...NodeID) []PeerReport {
	var out []PeerReport
	for _, id := range ids {
		out = append(out, PeerReport{ID: id, Heard: true})
	}
	return out
}

func TestTrackerMembership(t *testing.T) {
	tr, err := NewTracker(1, 1, 1000, []NodeID{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	if m := fmt.Sprint(tr.Members(0)); m != "[1]" {
		t.Fatalf("alone: %s", m)
	}
	// 2 hears us, 3 does not (a one-way link): only 2 is a member.
	tr.Receive(100, hb(2, 1, 1, 1, 3))
	tr.Receive(100, hb(3, 1, 1, 2))
	if m := fmt.Sprint(tr.Members(100)); m != "[1 2]" {
		t.Fatalf("members %s", m)
	}
	if h := fmt.Sprint(tr.Heard(100)); h != "[2 3]" {
		t.Fatalf("heard %s", h)
	}
	// Token timeout: 2 is lost 1000 ms after its last heartbeat.
	if m := fmt.Sprint(tr.Members(1099)); m != "[1 2]" {
		t.Fatalf("members before timeout %s", m)
	}
	if m := fmt.Sprint(tr.Members(1100)); m != "[1]" {
		t.Fatalf("members after timeout %s", m)
	}
}

func TestTrackerDropsReplaysAndStrangers(t *testing.T) {
	tr, _ := NewTracker(1, 1, 1000, []NodeID{2})
	if r := tr.Receive(0, hb(2, 5, 10, 1)); r != Accepted {
		t.Fatal(r)
	}
	for _, c := range []struct {
		hb   *Heartbeat
		want DropReason
	}{
		{hb(2, 5, 10, 1), DropReplay}, // the same packet again
		{hb(2, 5, 9, 1), DropReplay},  // an older one
		{hb(2, 4, 99, 1), DropReplay}, // from an older life of the node
		{hb(9, 1, 1, 1), DropUnknown},
		{hb(1, 1, 1, 1), DropSelf},
		{&Heartbeat{ClusterTag: 2, From: 2, Incarnation: 9, Seq: 1}, DropCluster},
	} {
		if r := tr.Receive(500, c.hb); r != c.want {
			t.Errorf("%+v: %q, want %q", c.hb, r, c.want)
		}
	}
	// Replays did not refresh the node's liveness.
	if m := fmt.Sprint(tr.Members(1000)); m != "[1]" {
		t.Fatalf("replayed packets kept node 2 alive: %s", m)
	}
	// A restarted node (higher incarnation, seq from 1) is accepted.
	if r := tr.Receive(1200, hb(2, 6, 1, 1)); r != Accepted {
		t.Fatal(r)
	}
}

func TestTrackerSetPeers(t *testing.T) {
	tr, _ := NewTracker(1, 1, 1000, []NodeID{2})
	tr.Receive(0, hb(2, 1, 1, 1))
	tr.SetPeers([]NodeID{1, 2, 3})
	if r := tr.Receive(10, hb(3, 1, 1, 1)); r != Accepted {
		t.Fatal(r)
	}
	if m := fmt.Sprint(tr.Members(10)); m != "[1 2 3]" {
		t.Fatalf("members %s", m)
	}
	tr.SetPeers([]NodeID{3})
	if m := fmt.Sprint(tr.Members(10)); m != "[1 3]" {
		t.Fatalf("after removing 2: %s", m)
	}
}

func TestTrackerMembersInfo(t *testing.T) {
	tr, _ := NewTracker(1, 1, 1000, []NodeID{2, 3})
	tr.Receive(0, &Heartbeat{ClusterTag: 1, From: 2, Incarnation: 1, Seq: 1, Flags: FlagQuorate, ExpectedVotes: 3, Peers: heardReports(1)})
	tr.Receive(0, &Heartbeat{ClusterTag: 1, From: 3, Incarnation: 1, Seq: 1, Flags: FlagWaitingForAll, ExpectedVotes: 2, Peers: heardReports(1)})
	got := fmt.Sprint(tr.MembersInfo(10))
	if want := "[{1 0 0} {2 1 3} {3 2 2}]"; got != want {
		t.Fatalf("members info %s, want %s", got, want)
	}
}

// TestTrackerEchoAnchors: each member vouches for the send time of our
// heartbeat it echoes; an echo of another life, one that fell out of the
// ring, or none, vouches for nothing.
func TestTrackerEchoAnchors(t *testing.T) {
	tr, _ := NewTracker(1, 1, 1000, []NodeID{2, 3})
	for seq := uint64(1); seq <= 10; seq++ {
		tr.Sent(7, seq, int64(seq)*100)
	}
	echo := func(from NodeID, seq, inc, echoSeq uint64) {
		tr.Receive(1050, &Heartbeat{ClusterTag: 1, From: from, Incarnation: 1, Seq: seq,
			Peers: []PeerReport{{ID: 1, Heard: true, EchoIncarnation: inc, EchoSeq: echoSeq}}})
	}
	anchors := func(members ...NodeID) string { return fmt.Sprint(tr.EchoAnchorsMs(members)) }
	if a := anchors(1, 2, 3); a != "map[]" {
		t.Fatalf("no echo yet: %s", a)
	}
	echo(2, 1, 7, 9)
	echo(3, 1, 7, 6)
	if a := anchors(1, 2, 3); a != "map[2:900 3:600]" {
		t.Fatalf("anchors %s", a)
	}
	if a := anchors(1, 2); a != "map[2:900]" {
		t.Fatalf("anchors over {1,2} %s", a)
	}
	echo(3, 2, 6, 9) // an echo of our previous life
	if a := anchors(1, 2, 3); a != "map[2:900]" {
		t.Fatalf("an echo from another incarnation counted: %s", a)
	}
	for seq := uint64(11); seq <= 9+sentRing; seq++ {
		tr.Sent(7, seq, int64(seq)*100)
	}
	if a := anchors(1, 2, 3); a != "map[]" {
		t.Fatalf("an echo that left the ring counted: %s", a)
	}
	echo(3, 3, 7, 9+sentRing)
	tr.Sent(8, 1, 9000) // restarted: a new life forgets the old sends
	if a := anchors(1, 2, 3); a != "map[]" {
		t.Fatalf("an echo of the old life counted after a restart: %s", a)
	}
}

// TestTrackerLastHeardBound: the bound is the latest of our own last
// receipt and each peer's receipt less the age it reports.
func TestTrackerLastHeardBound(t *testing.T) {
	tr, _ := NewTracker(1, 1, 1000, []NodeID{2, 3, 4})
	if b := tr.LastHeardBoundMs(4, []NodeID{1, 2, 3}); b != 0 {
		t.Fatalf("nothing heard: bound %d, want 0 (our start)", b)
	}
	tr.Receive(500, hb(4, 1, 1, 1))
	tr.Receive(2000, &Heartbeat{ClusterTag: 1, From: 2, Incarnation: 1, Seq: 1, Peers: []PeerReport{{ID: 1, Heard: true}, {ID: 4, AgeMs: 1200}}})
	tr.Receive(2100, &Heartbeat{ClusterTag: 1, From: 3, Incarnation: 1, Seq: 1, Peers: []PeerReport{{ID: 1, Heard: true}, {ID: 4, AgeMs: 1900}}})
	if b := tr.LastHeardBoundMs(4, []NodeID{1, 2, 3}); b != 800 {
		t.Fatalf("bound %d, want 800 (node 2: 2000 - 1200)", b)
	}
	if b := tr.LastHeardBoundMs(4, []NodeID{1, 3}); b != 500 {
		t.Fatalf("bound via 3 %d, want 500 (our own receipt)", b)
	}
	// A peer that says nothing of the victim may have heard it just
	// before its heartbeat left.
	tr.Receive(2200, hb(3, 1, 2, 1))
	if b := tr.LastHeardBoundMs(4, []NodeID{1, 3}); b != 2200 {
		t.Fatalf("silent peer: bound %d, want 2200", b)
	}
}
