package blockrep

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cespare/xxhash/v2"

	"github.com/paddock-io/paddock/internal/atomicfile"
)

// ReplicaMeta is what a replica keeps beside its data: which volume it
// belongs to, and its voter state (the epoch it promised, the generation
// it stored). It is written whole (write, fsync, rename, fsync dir) before
// any answer that depends on it leaves the node.
type ReplicaMeta struct {
	VolumeID  uint64     `json:"volume_id"`
	SizeBytes int64      `json:"size_bytes"`
	Voter     VoterState `json:"voter"`
}

const metaFileName = "meta.json"

// ReplicaOptions say which replica to open or create.
type ReplicaOptions struct {
	Self      NodeID
	VolumeID  uint64
	SizeBytes int64
	// Members is the first generation's set when the replica is new: the
	// volume's initial replicas (all zeroes, hence identical). A replica
	// added to an existing volume starts outside every set.
	Members   []NodeID
	ALExtents int
	// Blank: this node held a replica of the volume before and lost it
	// (its directory is gone); the new one knows no generation and holds
	// no data until a full resync (epoch.go, rule 4).
	Blank bool
}

// Replica is one node's copy of a volume plus its voter state. It answers
// the peer protocol (Handle) and is the local half of a primary.
type Replica struct {
	// gate orders writes against promises: a write holds it shared from
	// its epoch check to the end of its disk write, a promise or a new
	// generation holds it exclusively. So once a promise is given, no
	// write of an older epoch is still landing (a new primary reads what
	// it was promised).
	gate  sync.RWMutex
	mu    sync.Mutex // guards meta
	dir   string
	meta  ReplicaMeta
	store *Store
	// syncFailuresAtPromise is the store's count of failed fdatasyncs
	// when this replica last promised (mu): MsgResolve passes it on.
	syncFailuresAtPromise uint64
}

// ReplicaExists says whether dir holds a replica's metadata (a crash
// before it was first written leaves a replica that never answered
// anyone, so a missing file means: none, or lost).
func ReplicaExists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, metaFileName))
	return err == nil
}

// OpenReplica opens the replica in dir, creating it when dir holds none.
func OpenReplica(dir string, o ReplicaOptions) (*Replica, error) {
	r := &Replica{dir: dir}
	b, err := os.ReadFile(filepath.Join(dir, metaFileName))
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &r.meta); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, metaFileName), err)
		}
		if r.meta.VolumeID != o.VolumeID || r.meta.SizeBytes != o.SizeBytes || r.meta.Voter.ID != o.Self {
			return nil, fmt.Errorf("%s holds volume %d (%d bytes, node %d), not volume %d (%d bytes, node %d)",
				dir, r.meta.VolumeID, r.meta.SizeBytes, r.meta.Voter.ID, o.VolumeID, o.SizeBytes, o.Self)
		}
		if r.store, err = OpenStore(dir, StoreOptions{ALExtents: o.ALExtents}); err != nil {
			return nil, err
		}
	case errors.Is(err, os.ErrNotExist):
		if r.store, err = CreateStore(dir, o.SizeBytes, StoreOptions{ALExtents: o.ALExtents}); err != nil {
			return nil, err
		}
		r.meta = ReplicaMeta{VolumeID: o.VolumeID, SizeBytes: o.SizeBytes,
			Voter: VoterState{ID: o.Self, HasData: true, Members: slices.Clone(o.Members)}}
		if o.Blank {
			r.meta.Voter.Members, r.meta.Voter.Blank = nil, true
		}
		if err := r.saveMeta(); err != nil {
			r.store.Close()
			return nil, err
		}
	default:
		return nil, err
	}
	return r, nil
}

func (r *Replica) saveMeta() error {
	b, err := json.MarshalIndent(r.meta, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(r.dir, metaFileName), b, 0o600)
}

// Close closes the store.
func (r *Replica) Close() error { return r.store.Close() }

// Store is the replica's data.
func (r *Replica) Store() *Store { return r.store }

// Dir is where the replica lives.
func (r *Replica) Dir() string { return r.dir }

// Voter is a copy of the voter state.
func (r *Replica) Voter() VoterState {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := r.meta.Voter
	v.Members = slices.Clone(v.Members)
	return v
}

// VolumeID names the volume.
func (r *Replica) VolumeID() uint64 { return r.meta.VolumeID }

// Prepare answers a would-be primary (from), durably.
func (r *Replica) Prepare(e Epoch, from NodeID) (Promise, *Refusal, error) {
	r.gate.Lock()
	defer r.gate.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	before := r.meta.Voter
	p, ref := r.meta.Voter.PrepareFrom(e, from)
	if ref != nil {
		return p, ref, nil
	}
	if err := r.saveMeta(); err != nil {
		r.meta.Voter = before
		return Promise{}, nil, err
	}
	// What the primary compares from now on is resolved only if no
	// fdatasync fails before its MsgResolve (recovered.go).
	r.syncFailuresAtPromise = r.store.SyncFailures()
	return p, nil, nil
}

// promiseExtents fills what a promise tells the primary to send again:
// the extents written recently (they may differ from the peers' after a
// crash of the primary), then, with FlagRecovering, those this replica
// re-verified after a crash of its own that no primary has resent yet
// (writes it acknowledged but had not flushed may be missing here). The
// recovered ones stay on disk (recovered.go) until a primary resolves
// them: sending them twice costs a resend, forgetting them would leave
// this copy different from the others.
func (r *Replica) promiseExtents(m *Message) {
	for _, e := range r.store.HotExtents() {
		m.Payload = binary.BigEndian.AppendUint64(m.Payload, uint64(e))
	}
	rec, whole := r.store.Recovered()
	if !whole && len(rec) == 0 {
		return
	}
	m.Flags |= FlagRecovering
	if whole {
		return // Length 0: the whole volume
	}
	for _, e := range rec {
		m.Payload = binary.BigEndian.AppendUint64(m.Payload, uint64(e))
	}
	m.Length = uint32(len(rec))
}

// PromiseExtents splits a promise's payload: the hot extents, the
// recovered ones, and whether the whole volume is recovering.
func PromiseExtents(m *Message) (hot, recovered []int64, whole bool) {
	all := decodeExtents(m.Payload)
	if m.Flags&FlagRecovering == 0 {
		return all, nil, false
	}
	n := min(int(m.Length), len(all))
	return all[:len(all)-n], all[len(all)-n:], n == 0
}

// Release records that the primary of epoch e (from) stepped down; kept
// in memory only (epoch.go, rule 5).
func (r *Replica) Release(e Epoch, from NodeID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.meta.Voter.Release(e, from)
}

// StoreGen stores a new generation, durably.
func (r *Replica) StoreGen(e Epoch, g Gen, members []NodeID) (*Refusal, error) {
	r.gate.Lock()
	defer r.gate.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	before := r.meta.Voter
	if ref := r.meta.Voter.StoreGen(e, g, members); ref != nil {
		return ref, nil
	}
	if err := r.saveMeta(); err != nil {
		r.meta.Voter = before
		return nil, err
	}
	return nil, nil
}

// admit checks a write of epoch e in generation g and, when it may go on,
// holds the gate until the returned function is called. A member's write
// must match the epoch and generation exactly; a sync write (resync, or a
// write copied to a replica still catching up) only the epoch.
func (r *Replica) admit(e Epoch, g Gen, sync bool) (func(), *Refusal) {
	r.gate.RLock()
	r.mu.Lock()
	var ref *Refusal
	if sync {
		if e != r.meta.Voter.Promised {
			ref = &Refusal{From: r.meta.Voter.ID, Promised: r.meta.Voter.Promised, Reason: fmt.Sprintf("sync write from epoch %d", e)}
		}
	} else {
		ref = r.meta.Voter.AcceptWrite(e, g)
	}
	r.mu.Unlock()
	if ref != nil {
		r.gate.RUnlock()
		return nil, ref
	}
	return r.gate.RUnlock, nil
}

// Write applies a write of the primary of epoch e, if the voter state
// admits it.
func (r *Replica) Write(e Epoch, g Gen, sync bool, p []byte, off int64, fua bool) (*Refusal, error) {
	return r.write(e, g, sync, p, nil, off, fua)
}

// write is Write with the blocks' checksums when the frame's decoding
// computed them (nil: computed here).
func (r *Replica) write(e Epoch, g Gen, sync bool, p []byte, sums []uint32, off int64, fua bool) (*Refusal, error) {
	release, ref := r.admit(e, g, sync)
	if ref != nil {
		return ref, nil
	}
	defer release()
	return nil, r.store.writeAt(p, sums, off, fua)
}

// Zero zeroes a range for the primary of epoch e.
func (r *Replica) Zero(e Epoch, g Gen, sync bool, off, length int64, fua bool) (*Refusal, error) {
	release, ref := r.admit(e, g, sync)
	if ref != nil {
		return ref, nil
	}
	defer release()
	return nil, r.store.Zero(off, length, fua)
}

// Digests returns one 64-bit digest (xxhash64 of the data) per region of
// [off, off+length): resync and verify compare replicas by these, so only
// digests cross the network.
func (r *Replica) Digests(off, length, regionBytes int64) ([]uint64, error) {
	if regionBytes < BlockBytes || regionBytes%BlockBytes != 0 || off%regionBytes != 0 {
		return nil, fmt.Errorf("digest of %d+%d in regions of %d: not aligned", off, length, regionBytes)
	}
	if err := r.store.checkRange(off, length); err != nil {
		return nil, err
	}
	// Several regions per read (fewer system calls and locks), from a
	// pooled buffer. The data is digested as it lies, without checking
	// the block checksums: a block that fails its checksum is digested
	// as it is all the same (the digest then differs from a good copy's,
	// which is the point), so the check was a crc32c pass for nothing.
	readBytes := max(regionBytes, digestReadBytes/regionBytes*regionBytes)
	fb := getFrame(int(min(readBytes, length)))
	defer putFrame(fb)
	buf := *fb
	out := make([]uint64, 0, (length+regionBytes-1)/regionBytes)
	for pos := off; pos < off+length; {
		chunk := buf[:min(readBytes, int64(len(buf)), off+length-pos)]
		if err := r.store.readRaw(chunk, pos); err != nil {
			return nil, err
		}
		for o := int64(0); o < int64(len(chunk)); o += regionBytes {
			out = append(out, xxhash.Sum64(chunk[o:min(o+regionBytes, int64(len(chunk)))]))
		}
		pos += int64(len(chunk))
	}
	return out, nil
}

// SumDigests returns one 64-bit digest per region of [off, off+length)
// computed from the stored block checksums (Store.sumDigests): what a
// primary compares a returning replica's hot and recovered extents by.
// Full comparisons (a blank or discarded copy), verify and scrub compare
// data digests (Digests).
func (r *Replica) SumDigests(off, length, regionBytes int64) ([]uint64, error) {
	return r.store.sumDigests(off, length, regionBytes)
}

// digestReadBytes is what one read of Digests takes at most (whole
// regions; a region larger than it is read whole).
const digestReadBytes = 1 << 20

// Handle answers one peer message addressed to this replica. It never
// panics on a well-formed message (Decode checked the shape); a message
// out of range gets MsgFailed and changes nothing.
func (r *Replica) Handle(m *Message) *Message {
	reply := &Message{Volume: m.Volume, From: r.meta.Voter.ID, Seq: m.Seq, Epoch: m.Epoch}
	refuse := func(ref *Refusal) *Message {
		reply.Type, reply.Epoch = MsgRefuse, ref.Promised
		reply.Payload = truncText(ref.Reason)
		return reply
	}
	fail := func(err error) *Message {
		reply.Type = MsgFailed
		reply.Payload = truncText(err.Error())
		return reply
	}
	size := r.store.Size()
	inRange := func() bool { return int64(m.Offset) <= size && int64(m.Offset)+int64(m.Length) <= size }
	switch m.Type {
	case MsgPrepare:
		if m.Flags&FlagQuery != 0 {
			v := r.Voter()
			reply.Type, reply.Epoch, reply.Gen, reply.Members = MsgPromise, max(v.Promised, 1), v.Gen, v.Members
			if v.Blank {
				reply.Flags |= FlagBlank
			}
			if v.ReleasedNow() {
				reply.Flags |= FlagReleased
			}
			return reply
		}
		p, ref, err := r.Prepare(m.Epoch, m.From)
		if err != nil {
			return fail(err)
		}
		if ref != nil {
			return refuse(ref)
		}
		reply.Type, reply.Gen, reply.Members = MsgPromise, p.Gen, p.Members
		if p.Blank {
			reply.Flags |= FlagBlank
		}
		if p.Released {
			reply.Flags |= FlagReleased
		}
		r.promiseExtents(reply)
		return reply
	case MsgResolve:
		// Only the primary of the epoch this replica promised may say
		// it resent the extents (the safe side: a deposed primary's
		// word is not taken, the next one resends them again).
		if v := r.Voter(); m.Epoch != v.Promised {
			return refuse(&Refusal{From: v.ID, Promised: v.Promised, Reason: fmt.Sprintf("resolve from epoch %d", m.Epoch)})
		}
		es := decodeExtents(m.Payload)
		r.mu.Lock()
		since := r.syncFailuresAtPromise
		r.mu.Unlock()
		if err := r.store.ResolveRecovered(es, len(es) == 0, since); err != nil {
			return fail(err)
		}
		reply.Type = MsgResolveOK
		return reply
	case MsgRelease:
		if m.Flags&FlagFenced != 0 {
			if len(m.Members) != 1 {
				return fail(fmt.Errorf("a fence release names one node, not %d", len(m.Members)))
			}
			r.mu.Lock()
			r.meta.Voter.ReleaseFenced(m.Members[0])
			r.mu.Unlock()
			reply.Type = MsgReleaseOK
			return reply
		}
		if !r.Release(m.Epoch, m.From) {
			v := r.Voter()
			return refuse(&Refusal{From: v.ID, Promised: v.Promised, Reason: fmt.Sprintf("release of epoch %d by node %d: not the promise this voter holds", m.Epoch, m.From)})
		}
		reply.Type = MsgReleaseOK
		return reply
	case MsgStoreGen:
		ref, err := r.StoreGen(m.Epoch, m.Gen, m.Members)
		if err != nil {
			return fail(err)
		}
		if ref != nil {
			return refuse(ref)
		}
		reply.Type, reply.Gen = MsgStoreGenOK, m.Gen
		return reply
	case MsgWrite, MsgSyncWrite, MsgZero:
		if !inRange() {
			return fail(fmt.Errorf("range %d+%d outside the volume (%d bytes)", m.Offset, m.Length, size))
		}
		var ref *Refusal
		var err error
		fua := m.Flags&FlagFUA != 0
		if m.Type == MsgZero {
			ref, err = r.Zero(m.Epoch, m.Gen, m.Flags&FlagSync != 0, int64(m.Offset), int64(m.Length), fua)
		} else {
			ref, err = r.write(m.Epoch, m.Gen, m.Type == MsgSyncWrite, m.Payload, m.blockSums, int64(m.Offset), fua)
		}
		if ref != nil {
			return refuse(ref)
		}
		if err != nil {
			return fail(err)
		}
		reply.Type, reply.Gen = MsgWriteOK, m.Gen
		return reply
	case MsgFlush:
		if v := r.Voter(); m.Epoch != v.Promised {
			return refuse(&Refusal{From: v.ID, Promised: v.Promised, Reason: fmt.Sprintf("flush from epoch %d", m.Epoch)})
		}
		if err := r.store.Flush(); err != nil {
			return fail(err)
		}
		reply.Type = MsgFlushOK
		return reply
	case MsgRead:
		if !inRange() {
			return fail(fmt.Errorf("range %d+%d outside the volume (%d bytes)", m.Offset, m.Length, size))
		}
		buf := make([]byte, m.Length)
		if err := r.store.ReadAt(buf, int64(m.Offset)); err != nil {
			return fail(err)
		}
		reply.Type, reply.Payload = MsgReadOK, buf
		return reply
	case MsgDigest:
		rb := int64(binary.BigEndian.Uint64(m.Payload))
		if !inRange() {
			return fail(fmt.Errorf("range %d+%d outside the volume (%d bytes)", m.Offset, m.Length, size))
		}
		digests := r.Digests
		if m.Flags&FlagSums != 0 {
			digests = r.SumDigests
		}
		ds, err := digests(int64(m.Offset), int64(m.Length), rb)
		if err != nil {
			return fail(err)
		}
		reply.Type = MsgDigestOK
		reply.Flags |= m.Flags & FlagSums // which kind the answer holds
		for _, d := range ds {
			reply.Payload = binary.BigEndian.AppendUint64(reply.Payload, d)
		}
		return reply
	case MsgVerify:
		if !inRange() {
			return fail(fmt.Errorf("range %d+%d outside the volume (%d bytes)", m.Offset, m.Length, size))
		}
		bad, err := r.store.VerifyBlocks(int64(m.Offset), int64(m.Length))
		if err != nil {
			return fail(err)
		}
		reply.Type = MsgVerifyOK
		for _, b := range bad {
			reply.Payload = binary.BigEndian.AppendUint64(reply.Payload, uint64(b))
		}
		return reply
	}
	return fail(fmt.Errorf("%v is not a request", m.Type))
}

func truncText(s string) []byte {
	if len(s) > maxTextBytes {
		s = s[:maxTextBytes]
	}
	return []byte(s)
}
