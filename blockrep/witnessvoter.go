package blockrep

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/paddock-io/paddock/internal/atomicfile"
)

// WitnessID is the witness's voter id in a volume's voter set (node ids
// are small; this one is reserved).
const WitnessID NodeID = 0xFFFFFFFE

// maxWitnessVolumes bounds the volumes one witness votes for.
const maxWitnessVolumes = 4096

// WitnessVoters is the witness's part in the volumes of a cluster: for a
// 2-replica volume it is the third voter, which stores the epoch it
// promised and the generation, never data (DESIGN.md: the witness). It
// answers Prepare, StoreGen, Confirm (a write the primary makes while one
// replica is away) and Flush; each volume's state is a small JSON file,
// written (fsync, rename) before an answer that depends on it.
type WitnessVoters struct {
	dir    string
	mu     sync.Mutex
	voters map[uint64]*VoterState
}

// OpenWitnessVoters keeps the voters' state in dir.
func OpenWitnessVoters(dir string) (*WitnessVoters, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &WitnessVoters{dir: dir, voters: map[uint64]*VoterState{}}, nil
}

func (w *WitnessVoters) path(vol uint64) string {
	return filepath.Join(w.dir, fmt.Sprintf("volume-%d.json", vol))
}

// voter loads or creates a volume's state (w.mu held).
func (w *WitnessVoters) voter(vol uint64) (*VoterState, error) {
	if v := w.voters[vol]; v != nil {
		return v, nil
	}
	if len(w.voters) >= maxWitnessVolumes {
		return nil, fmt.Errorf("the witness votes for at most %d volumes", maxWitnessVolumes)
	}
	v := &VoterState{ID: WitnessID}
	b, err := os.ReadFile(w.path(vol))
	switch {
	case err == nil:
		if err := json.Unmarshal(b, v); err != nil || v.ID != WitnessID || v.HasData {
			return nil, fmt.Errorf("%s is corrupt", w.path(vol))
		}
	case errors.Is(err, os.ErrNotExist):
		// The witness cannot tell a volume it never heard of from one
		// whose state it lost (a reinstalled witness): either way it
		// knows no generation, so it starts Blank (epoch.go, rule 4) and
		// counts for knowledge only once it stored one. A new 2-replica
		// volume so needs both replicas for its first promotion.
		v.Blank = true
	default:
		return nil, err
	}
	w.voters[vol] = v
	return v, nil
}

func (w *WitnessVoters) save(vol uint64, v *VoterState) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.Write(w.path(vol), b, 0o600)
}

// Voter returns a copy of a volume's state (for status and tests).
func (w *WitnessVoters) Voter(vol uint64) (VoterState, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	v, err := w.voter(vol)
	if err != nil {
		return VoterState{}, err
	}
	return *v, nil
}

// Handle implements Handler.
func (w *WitnessVoters) Handle(m *Message) *Message {
	reply := &Message{Volume: m.Volume, From: WitnessID, Seq: m.Seq, Epoch: m.Epoch}
	fail := func(err error) *Message {
		reply.Type, reply.Payload = MsgFailed, truncText(err.Error())
		return reply
	}
	refuse := func(ref *Refusal) *Message {
		reply.Type, reply.Epoch, reply.Payload = MsgRefuse, ref.Promised, truncText(ref.Reason)
		return reply
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	v, err := w.voter(m.Volume)
	if err != nil {
		return fail(err)
	}
	before := *v
	switch m.Type {
	case MsgPrepare:
		if m.Flags&FlagQuery != 0 {
			reply.Type, reply.Epoch, reply.Gen, reply.Members = MsgPromise, max(v.Promised, 1), v.Gen, slices.Clone(v.Members)
			if v.Blank {
				reply.Flags |= FlagBlank
			}
			if v.ReleasedNow() {
				reply.Flags |= FlagReleased
			}
			return reply
		}
		p, ref := v.PrepareFrom(m.Epoch, m.From)
		if ref != nil {
			return refuse(ref)
		}
		if err := w.save(m.Volume, v); err != nil {
			*v = before
			return fail(err)
		}
		reply.Type, reply.Gen, reply.Members = MsgPromise, p.Gen, p.Members
		if p.Blank {
			reply.Flags |= FlagBlank
		}
		if p.Released {
			reply.Flags |= FlagReleased
		}
		return reply
	case MsgRelease:
		// In memory only (epoch.go, rule 5): nothing to save.
		if m.Flags&FlagFenced != 0 {
			if len(m.Members) != 1 {
				return fail(fmt.Errorf("a fence release names one node, not %d", len(m.Members)))
			}
			v.ReleaseFenced(m.Members[0])
			reply.Type = MsgReleaseOK
			return reply
		}
		if !v.Release(m.Epoch, m.From) {
			return refuse(&Refusal{From: WitnessID, Promised: v.Promised, Reason: fmt.Sprintf("release of epoch %d by node %d: not the promise this voter holds", m.Epoch, m.From)})
		}
		reply.Type = MsgReleaseOK
		return reply
	case MsgStoreGen:
		if ref := v.StoreGen(m.Epoch, m.Gen, m.Members); ref != nil {
			return refuse(ref)
		}
		if err := w.save(m.Volume, v); err != nil {
			*v = before
			return fail(err)
		}
		reply.Type, reply.Gen = MsgStoreGenOK, m.Gen
		return reply
	case MsgConfirm:
		if ref := v.AcceptWrite(m.Epoch, m.Gen); ref != nil {
			return refuse(ref)
		}
		reply.Type, reply.Gen = MsgWriteOK, m.Gen
		return reply
	case MsgFlush:
		if m.Epoch != v.Promised {
			return refuse(&Refusal{From: WitnessID, Promised: v.Promised, Reason: fmt.Sprintf("flush from epoch %d", m.Epoch)})
		}
		reply.Type = MsgFlushOK
		return reply
	}
	return fail(fmt.Errorf("the witness stores no data: %v is not for it", m.Type))
}
