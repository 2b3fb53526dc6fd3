package confchange

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The wire format of a Message and the disk format of a HardState: fixed
// big-endian fields, a configuration as (version, digest, length, data).
// Decoding checks lengths before reading and bounds the data by
// MaxConfigBytes, so a garbage buffer gives an error, never a panic or a
// large allocation.

const (
	messageFormat   = 1
	hardStateFormat = 1
	ballotBytes     = 8 + 4
	configHeader    = 8 + 32 + 4
	// messageHeader: format, type, from, to, version, three ballots,
	// reason, committed.
	messageHeader = 1 + 1 + 4 + 4 + 8 + 3*ballotBytes + 1 + 8
	// MaxMessageBytes bounds an encoded message.
	MaxMessageBytes = messageHeader + configHeader + MaxConfigBytes
)

var hardStateMagic = [4]byte{'P', 'D', 'C', 'C'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func putBallot(b []byte, x Ballot) []byte {
	b = binary.BigEndian.AppendUint64(b, x.Round)
	return binary.BigEndian.AppendUint32(b, uint32(x.Proposer))
}

func putConfig(b []byte, c Config) []byte {
	b = binary.BigEndian.AppendUint64(b, c.Version)
	b = append(b, c.Digest[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.Data)))
	return append(b, c.Data...)
}

// reader reads fixed fields, remembering the first shortfall.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b) < n {
		r.err = errors.New("truncated")
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8() uint8 {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if b := r.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *reader) ballot() Ballot {
	round := r.u64()
	return Ballot{Round: round, Proposer: NodeID(r.u32())}
}

func (r *reader) config() Config {
	var c Config
	c.Version = r.u64()
	copy(c.Digest[:], r.take(32))
	n := r.u32()
	if r.err == nil && n > MaxConfigBytes {
		r.err = fmt.Errorf("configuration of %d bytes; at most %d", n, MaxConfigBytes)
		return Config{}
	}
	if data := r.take(int(n)); len(data) > 0 {
		c.Data = append([]byte(nil), data...)
	}
	return c
}

// EncodeMessage is the wire form of m.
func EncodeMessage(m Message) []byte {
	b := make([]byte, 0, messageHeader+configHeader+len(m.Value.Data))
	b = append(b, messageFormat, byte(m.Type))
	b = binary.BigEndian.AppendUint32(b, uint32(m.From))
	b = binary.BigEndian.AppendUint32(b, uint32(m.To))
	b = binary.BigEndian.AppendUint64(b, m.Version)
	b = putBallot(b, m.Ballot)
	b = putBallot(b, m.AcceptedBallot)
	b = putBallot(b, m.Promised)
	b = append(b, byte(m.Reason))
	b = binary.BigEndian.AppendUint64(b, m.Committed)
	return putConfig(b, m.Value)
}

// DecodeMessage reads a message and validates it (Message.Validate with
// maxConfigBytes). It never keeps a reference to b.
func DecodeMessage(b []byte, maxConfigBytes int) (Message, error) {
	if len(b) > MaxMessageBytes {
		return Message{}, errf("%d bytes; at most %d", len(b), MaxMessageBytes)
	}
	r := reader{b: b}
	if f := r.u8(); r.err == nil && f != messageFormat {
		return Message{}, errf("format %d; this node speaks %d", f, messageFormat)
	}
	var m Message
	m.Type = MsgType(r.u8())
	m.From = NodeID(r.u32())
	m.To = NodeID(r.u32())
	m.Version = r.u64()
	m.Ballot = r.ballot()
	m.AcceptedBallot = r.ballot()
	m.Promised = r.ballot()
	m.Reason = NackReason(r.u8())
	m.Committed = r.u64()
	m.Value = r.config()
	if r.err != nil {
		return Message{}, errf("%v", r.err)
	}
	if len(r.b) != 0 {
		return Message{}, errf("%d trailing bytes", len(r.b))
	}
	if err := m.Validate(maxConfigBytes); err != nil {
		return Message{}, err
	}
	return m, nil
}

// EncodeHardState is the disk form of hs, with a CRC-32C at the end so
// that a torn or rotted file is refused rather than believed. Write it
// atomically (temporary file, fsync, rename, fsync of the directory).
func EncodeHardState(hs HardState) []byte {
	b := make([]byte, 0, 5+2*configHeader+2*ballotBytes+8+4+len(hs.Committed.Data)+len(hs.Accepted.Data))
	b = append(b, hardStateMagic[:]...)
	b = append(b, hardStateFormat)
	b = putConfig(b, hs.Committed)
	b = putBallot(b, hs.Promised)
	b = putBallot(b, hs.AcceptedBallot)
	b = putConfig(b, hs.Accepted)
	b = binary.BigEndian.AppendUint64(b, hs.Round)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// DecodeHardState reads what EncodeHardState wrote. It checks the framing
// and the checksum; New checks the contents.
func DecodeHardState(b []byte) (HardState, error) {
	if len(b) < 4 {
		return HardState{}, errors.New("confchange: state file truncated")
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return HardState{}, errors.New("confchange: state file checksum mismatch (torn or corrupt)")
	}
	r := reader{b: body}
	if magic := r.take(4); r.err == nil && [4]byte(magic) != hardStateMagic {
		return HardState{}, errors.New("confchange: not a confchange state file")
	}
	if f := r.u8(); r.err == nil && f != hardStateFormat {
		return HardState{}, fmt.Errorf("confchange: state file format %d; this node reads %d", f, hardStateFormat)
	}
	var hs HardState
	hs.Committed = r.config()
	hs.Promised = r.ballot()
	hs.AcceptedBallot = r.ballot()
	hs.Accepted = r.config()
	hs.Round = r.u64()
	if r.err != nil {
		return HardState{}, fmt.Errorf("confchange: state file: %v", r.err)
	}
	if len(r.b) != 0 {
		return HardState{}, fmt.Errorf("confchange: state file: %d trailing bytes", len(r.b))
	}
	return hs, nil
}
