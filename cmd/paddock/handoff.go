package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/paddock-io/paddock/migrate"
	"github.com/paddock-io/paddock/node"
)

// A guest's volumes: the replicated volumes it uses as disks (`guest run
// --volume NAME`). They travel with the guest in its device state, and at
// switchover, inside the pause, their primary role moves to the
// destination's node (node/handoff.go says how, and why the old primary
// can take no write after it).

// Limits of a guest's volume list.
const (
	maxGuestVolumes       = 16 // node.maxHandoffVolumes
	maxVolumeNameBytes    = 128
	volumeStateMagic      = 0x5044_4b56_4f4c_5331 // "PDKVOLS1"
	volumeStateHeadBytes  = 8 + 2
	defaultHandoffTimeout = node.DefaultHandoffTimeoutMs * time.Millisecond
	// handoffCallMarginMs is added to twice the hand-off timeout (the
	// hand-off, then its undo) to bound the call to the node: the
	// configuration changes have their own bound inside it.
	handoffCallMarginMs = 30_000
)

var volumeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// checkVolumes checks a guest's volume list.
func checkVolumes(vols []string) error {
	if len(vols) > maxGuestVolumes {
		return fmt.Errorf("%d volumes: at most %d", len(vols), maxGuestVolumes)
	}
	for i, v := range vols {
		if !volumeNameRE.MatchString(v) {
			return fmt.Errorf("volume name %q: letters, digits, '.', '_', '-', at most %d", v, maxVolumeNameBytes)
		}
		if slices.Contains(vols[:i], v) {
			return fmt.Errorf("volume %q listed twice", v)
		}
	}
	return nil
}

// volumeGuest is a synthetic guest with volumes: its device state is the
// volume list, then the synthetic guest's own state.
type volumeGuest struct {
	*migrate.SynthGuest
	volumes []string
}

// State implements migrate.Guest.
func (g volumeGuest) State() ([]byte, error) {
	inner, err := g.SynthGuest.State()
	if err != nil {
		return nil, err
	}
	return appendVolumeState(nil, g.volumes, inner), nil
}

func appendVolumeState(b []byte, vols []string, inner []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, volumeStateMagic)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(vols)))
	for _, v := range vols {
		b = append(b, byte(len(v)))
		b = append(b, v...)
	}
	return append(b, inner...)
}

// splitVolumeState takes the volume list off a device state. A state
// without one (a guest of an older paddock, or one without volumes sent by
// a plain SynthGuest) has no volumes.
func splitVolumeState(state []byte) (vols []string, inner []byte, err error) {
	if len(state) < volumeStateHeadBytes || binary.LittleEndian.Uint64(state) != volumeStateMagic {
		return nil, state, nil
	}
	n := int(binary.LittleEndian.Uint16(state[8:]))
	if n > maxGuestVolumes {
		return nil, nil, fmt.Errorf("device state lists %d volumes, at most %d", n, maxGuestVolumes)
	}
	rest := state[volumeStateHeadBytes:]
	for range n {
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return nil, nil, errors.New("device state: truncated volume list")
		}
		vols = append(vols, string(rest[1:1+int(rest[0])]))
		rest = rest[1+int(rest[0]):]
	}
	if err := checkVolumes(vols); err != nil {
		return nil, nil, fmt.Errorf("device state: %w", err)
	}
	return vols, rest, nil
}

// handoffTarget says which node the volumes go to: --to-node if given,
// else the node whose cluster certificate the destination showed. Both
// given and different is refused: the volumes would go to a node that
// does not run the guest.
func handoffTarget(toNode, peerName string) (string, error) {
	switch {
	case toNode == "" && peerName == "":
		return "", errors.New("the guest has volumes: name the destination node (--to-node)")
	case toNode == "":
		return peerName, nil
	case peerName != "" && peerName != toNode:
		return "", fmt.Errorf("--to-node %s, but the destination's certificate is node %s's: the volumes must go where the guest goes", toNode, peerName)
	}
	return toNode, nil
}

// handoffLine is the human summary of a hand-off.
func handoffLine(r *node.HandoffResult) string {
	s := fmt.Sprintf("volume hand-off to %s in %.0f ms (configuration %.0f ms, promotion %.0f ms):", r.Node, r.TotalMs, r.ConfigMs, r.PromoteMs)
	for _, v := range r.Volumes {
		s += fmt.Sprintf(" %s %s->%s epoch %d;", v.Name, v.From, v.To, v.Epoch)
	}
	return s[:len(s)-1]
}
