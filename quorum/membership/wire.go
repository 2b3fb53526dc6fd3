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

	magic       = "PDHB"
	wireVersion = 1
	macBytes    = sha256.Size
	// headerBytes: magic 4, version 1, reserved 1, heard count 2,
	// cluster tag 8, from 4, incarnation 8, seq 8, config version 8,
	// flags 4, expected votes 4.
	headerBytes = 4 + 1 + 1 + 2 + 8 + 4 + 8 + 8 + 8 + 4 + 4
	// MaxPacketBytes is the largest valid heartbeat.
	MaxPacketBytes = headerBytes + 4*MaxNodes + macBytes
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
	Heard         []NodeID
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
	if len(hb.Heard) > MaxNodes {
		return nil, fmt.Errorf("heard list of %d nodes exceeds %d", len(hb.Heard), MaxNodes)
	}
	start := len(dst)
	dst = append(dst, magic...)
	dst = append(dst, wireVersion, 0)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(hb.Heard)))
	dst = binary.BigEndian.AppendUint64(dst, hb.ClusterTag)
	dst = binary.BigEndian.AppendUint32(dst, uint32(hb.From))
	dst = binary.BigEndian.AppendUint64(dst, hb.Incarnation)
	dst = binary.BigEndian.AppendUint64(dst, hb.Seq)
	dst = binary.BigEndian.AppendUint64(dst, hb.ConfigVersion)
	dst = binary.BigEndian.AppendUint32(dst, hb.Flags)
	dst = binary.BigEndian.AppendUint32(dst, hb.ExpectedVotes)
	for _, id := range hb.Heard {
		dst = binary.BigEndian.AppendUint32(dst, uint32(id))
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
	if n > MaxNodes || len(body) != headerBytes+4*n {
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
		hb.Heard = append(hb.Heard, NodeID(binary.BigEndian.Uint32(pkt[headerBytes+4*i:])))
	}
	return hb, nil
}
