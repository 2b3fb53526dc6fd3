package blockrep

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The peer protocol's messages, as bytes. Every message is a frame:
//
//	magic u32 | type u8 | flags u8 | reserved u16 | volume u64 | epoch u64 |
//	gen.epoch u64 | gen.seq u64 | seq u64 | offset u64 | length u32 |
//	members count u16 | from u32 | payload length u32 |
//	crc32c u32 (of header and body) | members u32 × count | payload
//
// Length is the range a message is about (a write's length equals its
// payload's); the payload length is separate so that a digest request or a
// refusal can carry a few bytes without a range. Each type says whether it
// may carry a payload and how much (payloadLimit).
//
// A frame travels inside the cluster's mutual-TLS connections, so the
// checksum is not for authentication but for catching a bug or a torn
// buffer before it reaches the disk. Decode bounds everything it reads.

// MsgType is the kind of a peer message.
type MsgType uint8

const (
	MsgPrepare    MsgType = iota + 1 // a would-be primary asks for a promise of Epoch
	MsgPromise                       // the promise: Gen, Members; payload: the replica's hot extents, then (FlagRecovering) its Length recovered ones (u64 each)
	MsgRefuse                        // refused: Epoch is the one promised; payload: the reason
	MsgStoreGen                      // store generation Gen with Members under Epoch
	MsgStoreGenOK                    // stored
	MsgWrite                         // write Payload at Offset under Epoch, Gen (a member's write)
	MsgWriteOK                       // written (Seq names the write)
	MsgZero                          // zero Length bytes at Offset
	MsgFlush                         // make every acknowledged write durable
	MsgFlushOK                       // flushed
	MsgSyncWrite                     // resync data for a replica that is not (yet) a member: only the epoch is checked
	MsgRead                          // read Length bytes at Offset (repair, forwarding)
	MsgReadOK                        // payload: the data
	MsgDigest                        // digests of the regions of [Offset, Offset+Length) (FlagSums: of their block checksums); payload: region bytes u64
	MsgDigestOK                      // payload: one u64 digest per region
	MsgFailed                        // the request failed on the replica (I/O error); payload: the error text
	MsgVerify                        // check the blocks of [Offset, Offset+Length) against their checksums
	MsgVerifyOK                      // payload: the failing block numbers (u64 each)
	MsgConfirm                       // to the witness: accept a write of Epoch in Gen (no data); answered with WriteOK
	MsgRelease                       // the primary of Epoch stepped down and serves nothing more (epoch.go, rule 5)
	MsgReleaseOK                     // the release was recorded
	MsgResolve                       // the recovered extents in the payload (u64 each; none: the whole volume) were resent under Epoch: flush, then forget them (recovered.go)
	MsgResolveOK                     // flushed and forgotten
	msgTypeEnd
)

// Flags of a message.
const (
	FlagFUA uint8 = 1 << 0
	// FlagSync marks a zero sent to a replica that is catching up (as
	// MsgSyncWrite is for data): only the epoch is checked.
	FlagSync uint8 = 1 << 1
	// FlagQuery on a Prepare asks what the voter holds without asking
	// for a promise (a pre-vote): a candidate that could not win does
	// not disturb the serving primary by raising the epoch.
	FlagQuery uint8 = 1 << 2
	// FlagBlank on a Promise: the replica lost its state and was created
	// again; its promise fences but carries no knowledge (epoch.go, rule 4).
	FlagBlank uint8 = 1 << 3
	// FlagReleased on a Promise: the voter's previous promise was
	// released by its primary (epoch.go, rule 5).
	FlagReleased uint8 = 1 << 4
	// FlagFenced on a Release: the node in Members (one) was fenced; the
	// sender acts for the cluster and releases whatever that node holds.
	FlagFenced uint8 = 1 << 5
	// FlagRecovering on a Promise: the replica re-verified extents after
	// a crash that no primary has resent yet (recovered.go), so it is
	// not a complete up-to-date copy. The last Length extents of the
	// payload are those; Length 0 means the whole volume.
	FlagRecovering uint8 = 1 << 6
	// FlagSums on a Digest asks for digests of the stored block
	// checksums rather than of the data (Store.sumDigests); on a
	// DigestOK it says the answer holds those.
	FlagSums uint8 = 1 << 7
)

const (
	wireMagic       = 0x50445251 // "PDRQ": the second frame layout
	wireHeaderBytes = 4 + 1 + 1 + 2 + 8 + 8 + 8 + 8 + 8 + 8 + 4 + 2 + 4 + 4 + 4
	// MaxPayloadBytes bounds one write's data (the NBD server's maximum).
	MaxPayloadBytes = 32 << 20
	maxMembers      = 32
	// MaxDigestRegions bounds one digest request: 4096 digests of 8 bytes.
	MaxDigestRegions = 4096
	maxTextBytes     = 1024
	// MaxVerifyBytes bounds one verify request, and MaxVerifyBlocks the
	// bad blocks one answer lists (all of them, at 4 KiB per block).
	MaxVerifyBytes  = 16 << 20
	MaxVerifyBlocks = MaxVerifyBytes / BlockBytes
	// A promise names the hot extents (at most a slot of the activity
	// log) and the recovered ones (recovered.go).
	maxPromiseExtents = alMaxExtents + maxRecoveredExtents

	// Field offsets in the header.
	offLength     = 56
	offMembers    = 60
	offFrom       = 62
	offPayloadLen = 66
	offCRC        = 70
)

// payloadLimit is the largest payload a type may carry (0: none).
func payloadLimit(t MsgType) int {
	switch t {
	case MsgWrite, MsgSyncWrite, MsgReadOK:
		return MaxPayloadBytes
	case MsgPromise:
		return 8 * maxPromiseExtents
	case MsgResolve:
		return 8 * maxRecoveredExtents
	case MsgRefuse, MsgFailed:
		return maxTextBytes
	case MsgDigest:
		return 8
	case MsgDigestOK:
		return 8 * MaxDigestRegions
	case MsgVerifyOK:
		return 8 * MaxVerifyBlocks
	}
	return 0
}

// Message is one peer message.
type Message struct {
	Type    MsgType
	Flags   uint8
	Volume  uint64
	From    NodeID
	Epoch   Epoch
	Gen     Gen
	Seq     uint64 // names a request, for its answer
	Offset  uint64
	Length  uint32 // the range's length; for a write, len(Payload)
	Members []NodeID
	Payload []byte

	// payloadSum, when payloadSumSet, is the crc32c of Payload, known
	// to the sender already (a resync read checksums every block it
	// reads): EncodeHeader then folds it in instead of reading the
	// payload again.
	payloadSum    uint32
	payloadSumSet bool
	// blockSums, set by Decode on a write of whole blocks, holds the
	// crc32c of each 4 KiB block of Payload: the frame checksum was
	// verified from them, and the replica stores them as the blocks'
	// checksums instead of computing them again.
	blockSums []uint32
}

// ErrBadMessage wraps every decoding error.
var ErrBadMessage = errors.New("bad peer message")

func badf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadMessage}, args...)...)
}

// Encode appends m's frame to dst.
func Encode(dst []byte, m *Message) ([]byte, error) {
	dst, err := EncodeHeader(dst, m)
	if err != nil {
		return nil, err
	}
	return append(dst, m.Payload...), nil
}

// EncodeHeader appends everything of m's frame but the payload (whose
// checksum it includes): a writer sends the payload from where it lies,
// without copying it into the frame.
func EncodeHeader(dst []byte, m *Message) ([]byte, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, wireMagic)
	dst = append(dst, byte(m.Type), m.Flags, 0, 0)
	dst = binary.BigEndian.AppendUint64(dst, m.Volume)
	dst = binary.BigEndian.AppendUint64(dst, uint64(m.Epoch))
	dst = binary.BigEndian.AppendUint64(dst, uint64(m.Gen.Epoch))
	dst = binary.BigEndian.AppendUint64(dst, m.Gen.Seq)
	dst = binary.BigEndian.AppendUint64(dst, m.Seq)
	dst = binary.BigEndian.AppendUint64(dst, m.Offset)
	dst = binary.BigEndian.AppendUint32(dst, m.Length)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(m.Members)))
	dst = binary.BigEndian.AppendUint32(dst, uint32(m.From))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(m.Payload)))
	crcAt := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, 0)
	for _, id := range m.Members {
		dst = binary.BigEndian.AppendUint32(dst, uint32(id))
	}
	c := crc32.Checksum(dst[start:], castagnoli)
	if m.payloadSumSet {
		c = crcCombine(c, m.payloadSum, int64(len(m.Payload)))
	} else {
		c = crc32.Update(c, castagnoli, m.Payload)
	}
	binary.BigEndian.PutUint32(dst[crcAt:], c)
	return dst, nil
}

// check enforces what each type may carry.
func (m *Message) check() error {
	if m.Type == 0 || m.Type >= msgTypeEnd {
		return badf("unknown type %d", m.Type)
	}
	if len(m.Members) > maxMembers {
		return badf("%d members, at most %d", len(m.Members), maxMembers)
	}
	if m.Flags&^(FlagFUA|FlagSync|FlagQuery|FlagBlank|FlagReleased|FlagFenced|FlagRecovering|FlagSums) != 0 {
		return badf("unknown flags %#x", m.Flags)
	}
	if lim := payloadLimit(m.Type); len(m.Payload) > lim {
		return badf("%v with a payload of %d bytes (at most %d)", m.Type, len(m.Payload), lim)
	}
	switch m.Type {
	case MsgWrite, MsgSyncWrite:
		if len(m.Payload) == 0 || uint32(len(m.Payload)) != m.Length {
			return badf("write of %d bytes (length field %d)", len(m.Payload), m.Length)
		}
	case MsgPromise:
		if len(m.Payload)%8 != 0 {
			return badf("promise with %d bytes of hot extents", len(m.Payload))
		}
		if m.Flags&FlagRecovering == 0 && m.Length != 0 {
			return badf("promise with %d recovered extents but no recovering flag", m.Length)
		}
		if uint64(m.Length) > uint64(len(m.Payload)/8) || m.Length > maxRecoveredExtents {
			return badf("promise with %d recovered extents in %d extents", m.Length, len(m.Payload)/8)
		}
	case MsgResolve:
		if len(m.Payload)%8 != 0 {
			return badf("resolve with %d bytes of extents", len(m.Payload))
		}
	case MsgDigest:
		if len(m.Payload) != 8 {
			return badf("digest request without its region size")
		}
		rb := binary.BigEndian.Uint64(m.Payload)
		if rb < BlockBytes || rb%BlockBytes != 0 || rb > 1<<30 {
			return badf("digest region of %d bytes", rb)
		}
		if uint64(m.Length) > rb*MaxDigestRegions {
			return badf("digest of %d bytes: at most %d regions", m.Length, MaxDigestRegions)
		}
	case MsgDigestOK, MsgVerifyOK:
		if len(m.Payload)%8 != 0 {
			return badf("%v of %d bytes", m.Type, len(m.Payload))
		}
	case MsgVerify:
		if m.Length == 0 || m.Length > MaxVerifyBytes {
			return badf("verify of %d bytes (1 to %d)", m.Length, MaxVerifyBytes)
		}
	case MsgRead, MsgZero:
		if m.Length == 0 || m.Length > MaxPayloadBytes && m.Type == MsgRead {
			return badf("%v of %d bytes", m.Type, m.Length)
		}
	}
	fenceRelease := m.Type == MsgRelease && m.Flags&FlagFenced != 0
	if m.Flags&FlagFenced != 0 && m.Type != MsgRelease {
		return badf("%v cannot be a fence release", m.Type)
	}
	if m.Flags&FlagSums != 0 && m.Type != MsgDigest && m.Type != MsgDigestOK {
		return badf("only digests can be of checksums, not %v", m.Type)
	}
	if m.Flags&FlagRecovering != 0 && m.Type != MsgPromise {
		return badf("only a promise can say its replica is recovering, not %v", m.Type)
	}
	if fenceRelease && (len(m.Members) != 1 || m.Members[0] == 0) {
		return badf("a fence release names one node, not %v", m.Members)
	}
	if m.Type != MsgPromise && m.Type != MsgStoreGen && !fenceRelease && len(m.Members) != 0 {
		return badf("%v carries no members", m.Type)
	}
	if m.Offset+uint64(m.Length) < m.Offset {
		return badf("offset %d + length %d overflows", m.Offset, m.Length)
	}
	// A fence release names a node, not an epoch: the sender does not
	// know which epoch the fenced node holds at each voter.
	if m.Epoch == 0 && m.Type != MsgRefuse && m.Type != MsgFailed && m.Type != MsgReleaseOK && !fenceRelease {
		return badf("%v without an epoch", m.Type)
	}
	return nil
}

// FrameLength reads the total length of the frame that starts hdr (at
// least wireHeaderBytes long), so a reader knows how much to read next.
func FrameLength(hdr []byte) (int, error) {
	if len(hdr) < wireHeaderBytes {
		return 0, badf("header of %d bytes", len(hdr))
	}
	if binary.BigEndian.Uint32(hdr) != wireMagic {
		return 0, badf("bad magic %#x", binary.BigEndian.Uint32(hdr))
	}
	members := int(binary.BigEndian.Uint16(hdr[offMembers:]))
	if members > maxMembers {
		return 0, badf("%d members", members)
	}
	t := MsgType(hdr[4])
	if t == 0 || t >= msgTypeEnd {
		return 0, badf("unknown type %d", t)
	}
	payload := binary.BigEndian.Uint32(hdr[offPayloadLen:])
	if int64(payload) > int64(payloadLimit(t)) {
		return 0, badf("%v with a payload of %d bytes", t, payload)
	}
	n := wireHeaderBytes + 4*members + int(payload)
	return n, nil
}

// Decode parses one whole frame. The payload aliases frame.
func Decode(frame []byte) (*Message, error) {
	n, err := FrameLength(frame)
	if err != nil {
		return nil, err
	}
	if len(frame) != n {
		return nil, badf("frame of %d bytes, header says %d", len(frame), n)
	}
	sum := binary.BigEndian.Uint32(frame[offCRC:])
	c := crc32.Update(crc32.Checksum(frame[:offCRC], castagnoli), castagnoli, []byte{0, 0, 0, 0})
	// A write of whole blocks: checksum each block (the store keeps
	// these) and fold them into the frame's checksum, one pass over
	// the data for both. FrameLength checked the lengths.
	payloadAt := wireHeaderBytes + 4*int(binary.BigEndian.Uint16(frame[offMembers:]))
	var blockSums []uint32
	if t := MsgType(frame[4]); (t == MsgWrite || t == MsgSyncWrite) && payloadAt < len(frame) && (len(frame)-payloadAt)%BlockBytes == 0 {
		c = crc32.Update(c, castagnoli, frame[wireHeaderBytes:payloadAt])
		payload := frame[payloadAt:]
		blockSums = make([]uint32, len(payload)/BlockBytes)
		var pc uint32
		for i := range blockSums {
			blockSums[i] = blockSum(payload[i*BlockBytes : (i+1)*BlockBytes])
			pc = foldBlock(pc, blockSums[i])
		}
		c = crcCombine(c, pc, int64(len(payload)))
	} else {
		c = crc32.Update(c, castagnoli, frame[wireHeaderBytes:])
	}
	if c != sum {
		return nil, badf("checksum mismatch")
	}
	if frame[6] != 0 || frame[7] != 0 {
		return nil, badf("reserved bytes set")
	}
	m := &Message{
		Type:   MsgType(frame[4]),
		Flags:  frame[5],
		Volume: binary.BigEndian.Uint64(frame[8:]),
		Epoch:  Epoch(binary.BigEndian.Uint64(frame[16:])),
		Gen:    Gen{Epoch: Epoch(binary.BigEndian.Uint64(frame[24:])), Seq: binary.BigEndian.Uint64(frame[32:])},
		Seq:    binary.BigEndian.Uint64(frame[40:]),
		Offset: binary.BigEndian.Uint64(frame[48:]),
		Length: binary.BigEndian.Uint32(frame[offLength:]),
		From:   NodeID(binary.BigEndian.Uint32(frame[offFrom:])),
	}
	count := int(binary.BigEndian.Uint16(frame[offMembers:]))
	for i := 0; i < count; i++ {
		m.Members = append(m.Members, NodeID(binary.BigEndian.Uint32(frame[wireHeaderBytes+4*i:])))
	}
	if p := frame[wireHeaderBytes+4*count:]; len(p) > 0 {
		m.Payload = p
		m.blockSums = blockSums
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	return m, nil
}

func (t MsgType) String() string {
	names := [...]string{"", "Prepare", "Promise", "Refuse", "StoreGen", "StoreGenOK", "Write", "WriteOK", "Zero", "Flush", "FlushOK",
		"SyncWrite", "Read", "ReadOK", "Digest", "DigestOK", "Failed", "Verify", "VerifyOK", "Confirm", "Release", "ReleaseOK", "Resolve", "ResolveOK"}
	if int(t) < len(names) && t != 0 {
		return names[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}
