package membership

import (
	"fmt"
	"testing"
)

func hb(from NodeID, inc, seq uint64, heard ...NodeID) *Heartbeat {
	return &Heartbeat{ClusterTag: 1, From: from, Incarnation: inc, Seq: seq, Heard: heard}
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
	tr.Receive(0, &Heartbeat{ClusterTag: 1, From: 2, Incarnation: 1, Seq: 1, Flags: FlagQuorate, ExpectedVotes: 3, Heard: []NodeID{1}})
	tr.Receive(0, &Heartbeat{ClusterTag: 1, From: 3, Incarnation: 1, Seq: 1, Flags: FlagWaitingForAll, ExpectedVotes: 2, Heard: []NodeID{1}})
	got := fmt.Sprint(tr.MembersInfo(10))
	if want := "[{1 0 0} {2 1 3} {3 2 2}]"; got != want {
		t.Fatalf("members info %s, want %s", got, want)
	}
}
