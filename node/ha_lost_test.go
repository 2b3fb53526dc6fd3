package node

import (
	"slices"
	"testing"
)

func TestLostNodes(t *testing.T) {
	nodes := []NodeConfig{{ID: 1, Name: "n1"}, {ID: 2, Name: "n2"}, {ID: 3, Name: "n3"}}
	const token = 1000
	l := newLostNodes()
	// This node (2) has just started: inquorate alone, then quorate with
	// n3 before n1's first heartbeat. n1 is not lost yet.
	l.observe(0, false, []uint32{2}, nodes, token)
	l.observe(100, true, []uint32{2, 3}, nodes, token)
	if _, ok := l.lostAt[1]; ok {
		t.Fatal("a node never heard from is lost 0 ms after the partition turned quorate")
	}
	l.observe(100+settleTokens*token-1, true, []uint32{2, 3}, nodes, token)
	if _, ok := l.lostAt[1]; ok {
		t.Fatal("a node never heard from is lost before the settling time")
	}
	// Had n1 been alive its heartbeats would have come by now: it is lost.
	l.observe(100+settleTokens*token, true, []uint32{2, 3}, nodes, token)
	if at, ok := l.lostAt[1]; !ok || at != 100+settleTokens*token {
		t.Fatalf("n1 not lost after the settling time: %v", l.lostAt)
	}
	// It comes back: reported once, then lost again at once when it goes
	// (it was seen).
	if back := l.observe(5000, true, []uint32{1, 2, 3}, nodes, token); !slices.Equal(back, []uint32{1}) {
		t.Fatalf("back %v, want [1]", back)
	}
	if back := l.observe(5100, true, []uint32{1, 2, 3}, nodes, token); len(back) != 0 {
		t.Fatalf("back %v reported twice", back)
	}
	l.observe(6000, true, []uint32{2, 3}, nodes, token)
	if at := l.lostAt[1]; at != 6000 {
		t.Fatalf("a node seen before is lost at %d, want 6000 (at once)", at)
	}
	// Inquorate: nobody is lost; quorate again: a seen node at once.
	l.observe(7000, false, []uint32{2}, nodes, token)
	if len(l.lostAt) != 0 {
		t.Fatalf("lost while inquorate: %v", l.lostAt)
	}
	l.observe(7100, true, []uint32{2, 3}, nodes, token)
	if at := l.lostAt[1]; at != 7100 {
		t.Fatalf("seen node lost at %d after quorum came back, want 7100", at)
	}
}
