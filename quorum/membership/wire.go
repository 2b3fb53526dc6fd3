package membership

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// NodeID is a node's numeric id, as in the cluster configuration.
type NodeID uint32

const (
	// MaxNodes bounds the heard list of a heartbeat (DESIGN: 2 to 32
	// nodes).
	MaxNodes = 32
	// AuthKeyBytes is the length of the cluster authkey.
	AuthKeyBytes = 32

	magic = "PDHB"
	// wireVersion 2 replaced the heard list by one report per peer
	// (heard, age, echo), for the echo-anchored lease.
	wireVersion = 2
	macBytes    = sha256.Size
	// headerBytes: magic 4, version 1, reserved 1, report count 2,
	// cluster tag 8, from 4, incarnation 8, seq 8, config version 8,
	// flags 4, expected votes 4.
	headerBytes = 4 + 1 + 1 + 2 + 8 + 4 + 8 + 8 + 8 + 4 + 4
	// reportBytes: id 4, flags 1, reserved 3, age 4, echo incarnation 8,
	// echo seq 8.
	reportBytes = 4 + 1 + 3 + 4 + 8 + 8
	// MaxPacketBytes is the largest valid heartbeat (under 1 KiB: one
	// datagram on any link).
	MaxPacketBytes = headerBytes + reportBytes*MaxNodes + macBytes
	// MaxAgeMs caps a report's age: older is as good as never.
	MaxAgeMs = 1<<31 - 1
)

// Heartbeat is one node's sign of life.
type Heartbeat struct {
	ClusterTag    uint64 // from the cluster id, so two clusters on one network ignore each other
	From          NodeID
	Incarnation   uint64
	Seq           uint64
	ConfigVersion uint64
	// Flags and ExpectedVotes carry the sender's votequorum state (its
	// NodeInfo): see FlagQuorate and FlagWaitingForAll.
	Flags         uint32
	ExpectedVotes uint32
	// Peers is what the sender knows of each configured peer: whether it
	// hears it, how long ago it last did, and which of its heartbeats
	// that was (the echo a node measures its lease from).
	Peers []PeerReport
}

// PeerReport is a sender's view of one peer.
type PeerReport struct {
	ID NodeID
	// Heard: a heartbeat from ID was accepted within the sender's
	// token timeout (membership is built from this).
	Heard bool
	// AgeMs is the time on the sender's clock from its last accepted
	// heartbeat of ID to the sending of this one; if it accepted none
	// since it started, the time since it started (anything it heard
	// in an earlier life is older than that). Capped at MaxAgeMs.
	AgeMs uint32
	// EchoIncarnation and EchoSeq name that last accepted heartbeat (0
	// when none).
	EchoIncarnation uint64
	EchoSeq         uint64
}

// reportHeard is the only PeerReport flag.
const reportHeard = 1 << 0

// HeardIDs lists the peers the sender hears.
func (hb *Heartbeat) HeardIDs() []NodeID {
	var out []NodeID
	for _, r := range hb.Peers {
		if r.Heard {
			out = append(out, r.ID)
		}
	}
	return out
}

// Heartbeat flags.
const (
	FlagQuorate       uint32 = 1 << 0
	FlagWaitingForAll uint32 = 1 << 1
)

// Errors of Decode; each is counted by the receiver.
var (
	ErrShort     = errors.New("heartbeat too short")
	ErrMagic     = errors.New("not a paddock heartbeat")
	ErrVersion   = errors.New("unknown heartbeat version")
	ErrAuth      = errors.New("heartbeat authentication failed")
	ErrMalformed = errors.New("malformed heartbeat")
)

// Encode appends the authenticated packet for hb to dst.
func Encode(dst []byte, hb *Heartbeat, key []byte) ([]byte, error) {
	if len(hb.Peers) > MaxNodes {
		return nil, fmt.Errorf("reports on %d nodes exceed %d", len(hb.Peers), MaxNodes)
	}
	start := len(dst)
	dst = append(dst, magic...)
	dst = append(dst, wireVersion, 0)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(hb.Peers)))
	dst = binary.BigEndian.AppendUint64(dst, hb.ClusterTag)
	dst = binary.BigEndian.AppendUint32(dst, uint32(hb.From))
	dst = binary.BigEndian.AppendUint64(dst, hb.Incarnation)
	dst = binary.BigEndian.AppendUint64(dst, hb.Seq)
	dst = binary.BigEndian.AppendUint64(dst, hb.ConfigVersion)
	dst = binary.BigEndian.AppendUint32(dst, hb.Flags)
	dst = binary.BigEndian.AppendUint32(dst, hb.ExpectedVotes)
	for _, r := range hb.Peers {
		dst = binary.BigEndian.AppendUint32(dst, uint32(r.ID))
		var flags byte
		if r.Heard {
			flags |= reportHeard
		}
		dst = append(dst, flags, 0, 0, 0)
		dst = binary.BigEndian.AppendUint32(dst, min(r.AgeMs, MaxAgeMs))
		dst = binary.BigEndian.AppendUint64(dst, r.EchoIncarnation)
		dst = binary.BigEndian.AppendUint64(dst, r.EchoSeq)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(dst[start:])
	return mac.Sum(dst), nil
}

// Decode checks the HMAC and the framing of a packet.
func Decode(pkt []byte, key []byte) (*Heartbeat, error) {
	if len(pkt) < headerBytes+macBytes {
		return nil, ErrShort
	}
	if len(pkt) > MaxPacketBytes {
		return nil, ErrMalformed
	}
	if string(pkt[:4]) != magic {
		return nil, ErrMagic
	}
	if pkt[4] != wireVersion {
		return nil, ErrVersion
	}
	body, sum := pkt[:len(pkt)-macBytes], pkt[len(pkt)-macBytes:]
	mac := hmac.New(sha256.New, key)
	mac.Write(body)
	if !hmac.Equal(mac.Sum(nil), sum) {
		return nil, ErrAuth
	}
	n := int(binary.BigEndian.Uint16(pkt[6:]))
	if n > MaxNodes || len(body) != headerBytes+reportBytes*n || pkt[5] != 0 {
		return nil, ErrMalformed
	}
	hb := &Heartbeat{
		ClusterTag:    binary.BigEndian.Uint64(pkt[8:]),
		From:          NodeID(binary.BigEndian.Uint32(pkt[16:])),
		Incarnation:   binary.BigEndian.Uint64(pkt[20:]),
		Seq:           binary.BigEndian.Uint64(pkt[28:]),
		ConfigVersion: binary.BigEndian.Uint64(pkt[36:]),
		Flags:         binary.BigEndian.Uint32(pkt[44:]),
		ExpectedVotes: binary.BigEndian.Uint32(pkt[48:]),
	}
	for i := 0; i < n; i++ {
		b := pkt[headerBytes+reportBytes*i:]
		flags := b[4]
		// Unknown flags, reserved bytes and ages past the cap are
		// refused, so that every accepted packet has one encoding.
		if flags&^reportHeard != 0 || b[5]|b[6]|b[7] != 0 {
			return nil, ErrMalformed
		}
		r := PeerReport{
			ID:              NodeID(binary.BigEndian.Uint32(b)),
			Heard:           flags&reportHeard != 0,
			AgeMs:           binary.BigEndian.Uint32(b[8:]),
			EchoIncarnation: binary.BigEndian.Uint64(b[12:]),
			EchoSeq:         binary.BigEndian.Uint64(b[20:]),
		}
		if r.AgeMs > MaxAgeMs {
			return nil, ErrMalformed
		}
		hb.Peers = append(hb.Peers, r)
	}
	return hb, nil
}
