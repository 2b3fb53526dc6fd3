package node

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/paddock-io/paddock/fence"
	"github.com/paddock-io/paddock/fence/netfence"
)

// The fence part of "paddock status": one line per node with its state and
// last fence, then the filter.
func TestFencingText(t *testing.T) {
	last := fence.HistoryEntry{TimeMs: 1767225600000, Target: "h1", Method: fence.MethodNetwork, Action: fence.ActionOff,
		Device: "h2,h3", Result: fence.ResultOK, DurationMs: 223}
	s := Status{Fencing: &FencingStatus{
		Nodes: []NodeFenceStatus{
			{ID: 1, Name: "h1", Fenced: true, NetBlocked: true, PowerFenced: true, Last: &last},
			{ID: 2, Name: "h2"},
		},
		Filter: &NetFilterStatus{Interface: "eth0", Mode: "xdp", DroppedPackets: 7,
			Blocked: []netfence.Blocked{{Addr: netip.MustParseAddr("10.77.0.1"), Dropped: 7}}},
	}}
	var b bytes.Buffer
	s.WriteText(&b)
	out := b.String()
	for _, want := range []string{
		"Fencing information",
		"0x00000001 h1               power+net  2026-01-01 00:00:00 network off (h2,h3) ok in 223 ms",
		"0x00000002 h2               no         -",
		"Network filter:   eth0 (xdp), 7 packets dropped; blocking 10.77.0.1 (7 dropped)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
	s.Fencing.Filter = nil
	b.Reset()
	s.WriteText(&b)
	if !strings.Contains(b.String(), "none on this node") {
		t.Errorf("without a filter:\n%s", b.String())
	}
}
