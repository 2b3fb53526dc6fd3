package node

import (
	"testing"

	"github.com/paddock-io/paddock/blockrep"
)

// TestReplicaRowsRecovering: a replica that re-verified extents after a
// crash is never shown UpToDate before a primary resent them, with a
// primary serving (Syncing) or without one (Outdated, whatever its
// generation says).
func TestReplicaRowsRecovering(t *testing.T) {
	v := VolumeConfig{Name: "vm", Replicas: []uint32{1, 2, 3}, Primary: 1}
	gen := blockrep.Gen{Epoch: 2, Seq: 1}
	voter := func(id uint32) *blockrep.VoterState {
		return &blockrep.VoterState{Promised: 2, Gen: gen, Members: []blockrep.NodeID{1, 2, 3}}
	}
	reports := []ReplicaReport{
		{Node: "a", NodeID: 1, Reachable: true, Voter: voter(1)},
		{Node: "b", NodeID: 2, Reachable: true, Voter: voter(2), RecoveringExtents: 3},
		{Node: "c", NodeID: 3, Reachable: true, Voter: voter(3)},
	}
	var rows []ReplicaRow
	if p := replicaRows(v, reports, &rows); p != "" {
		t.Fatalf("no primary serves, got %q", p)
	}
	if rows[0].State != "UpToDate" || rows[1].State != "Outdated" || rows[2].State != "UpToDate" {
		t.Fatalf("without a primary: %+v", rows)
	}
	if rows[1].Detail == "" {
		t.Fatal("a recovering replica's row says nothing about it")
	}

	reports[0].Primary = &blockrep.PrimaryStatus{Peers: []blockrep.PeerStatus{
		{Node: 2, State: blockrep.PeerMember, RecoveringExtents: 3},
		{Node: 3, State: blockrep.PeerMember},
	}}
	rows = nil
	if p := replicaRows(v, reports, &rows); p != "a" {
		t.Fatalf("serving primary %q, want a", p)
	}
	if rows[0].Role != "primary" || rows[1].State != "Syncing" || rows[2].State != "UpToDate" {
		t.Fatalf("with a primary: %+v", rows)
	}
}
