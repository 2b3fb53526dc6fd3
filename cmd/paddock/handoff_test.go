package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// The volume list travels in front of the guest's own device state; a
// state without it means no volumes; a damaged one is refused.
func TestVolumeStateEnvelope(t *testing.T) {
	inner := []byte("synthetic guest state")
	b := appendVolumeState(nil, []string{"vm", "data.1"}, inner)
	vols, got, err := splitVolumeState(b)
	if err != nil || !slices.Equal(vols, []string{"vm", "data.1"}) || !bytes.Equal(got, inner) {
		t.Fatalf("round trip: %v %q %v", vols, got, err)
	}
	vols, got, err = splitVolumeState(inner)
	if err != nil || vols != nil || !bytes.Equal(got, inner) {
		t.Fatalf("plain state: %v %q %v", vols, got, err)
	}
	for _, bad := range [][]byte{
		b[:volumeStateHeadBytes+2],                                     // truncated name
		appendVolumeState(nil, []string{"vm", "vm"}, inner),            // twice
		appendVolumeState(nil, []string{"../x"}, inner),                // not a name
		appendVolumeState(nil, make([]string, maxGuestVolumes+1), nil), // too many
	} {
		if _, _, err := splitVolumeState(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestHandoffTarget(t *testing.T) {
	for _, c := range []struct{ toNode, peer, want, err string }{
		{"", "n2", "n2", ""},
		{"n2", "", "n2", ""},
		{"n2", "n2", "n2", ""},
		{"n3", "n2", "", "must go where the guest goes"},
		{"", "", "", "--to-node"},
	} {
		got, err := handoffTarget(c.toNode, c.peer)
		if got != c.want || (c.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.err) {
			t.Errorf("handoffTarget(%q, %q) = %q, %v", c.toNode, c.peer, got, err)
		}
	}
}
