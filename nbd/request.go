package nbd

import (
	"encoding/binary"
	"fmt"
)

// Request is one transmission request header.
type Request struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

// parseRequest decodes a request header. Only the magic is checked here:
// a bad magic means the stream cannot be trusted any more.
func parseRequest(b *[requestHeaderBytes]byte) (Request, error) {
	if m := binary.BigEndian.Uint32(b[0:]); m != magicRequest {
		return Request{}, fmt.Errorf("bad request magic %#x", m)
	}
	return Request{
		Flags:  binary.BigEndian.Uint16(b[4:]),
		Type:   binary.BigEndian.Uint16(b[6:]),
		Cookie: binary.BigEndian.Uint64(b[8:]),
		Offset: binary.BigEndian.Uint64(b[16:]),
		Length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

func (r Request) encode(b *[requestHeaderBytes]byte) {
	binary.BigEndian.PutUint32(b[0:], magicRequest)
	binary.BigEndian.PutUint16(b[4:], r.Flags)
	binary.BigEndian.PutUint16(b[6:], r.Type)
	binary.BigEndian.PutUint64(b[8:], r.Cookie)
	binary.BigEndian.PutUint64(b[16:], r.Offset)
	binary.BigEndian.PutUint32(b[24:], r.Length)
}

// exportView is what validation needs to know of the session.
type exportView struct {
	size       uint64
	features   Features
	structured bool
	baseAlloc  bool
	maxPayload uint32
}

const knownCmdFlags = CmdFlagFUA | CmdFlagNoHole | CmdFlagDF | CmdFlagReqOne | CmdFlagFastZero

// validate checks a request against the protocol and the export. It returns
// 0 when the request may be served, or the error value and a message for
// the client and the log.
func validate(r Request, v exportView) (uint32, string) {
	if r.Flags&^knownCmdFlags != 0 {
		return EINVAL, fmt.Sprintf("unknown command flags %#x", r.Flags&^knownCmdFlags)
	}
	if r.Flags&CmdFlagDF != 0 && (r.Type != CmdRead || !v.structured) {
		return EINVAL, "DF is only valid on READ with structured replies"
	}
	if r.Flags&CmdFlagReqOne != 0 && r.Type != CmdBlockStatus {
		return EINVAL, "REQ_ONE is only valid on BLOCK_STATUS"
	}
	if r.Flags&(CmdFlagNoHole|CmdFlagFastZero) != 0 && r.Type != CmdWriteZeroes {
		return EINVAL, "NO_HOLE and FAST_ZERO are only valid on WRITE_ZEROES"
	}
	writes := false
	switch r.Type {
	case CmdRead, CmdWrite:
		if r.Length > v.maxPayload {
			return EINVAL, fmt.Sprintf("%s of %d bytes exceeds the maximum of %d", cmdName(r.Type), r.Length, v.maxPayload)
		}
		writes = r.Type == CmdWrite
	case CmdFlush:
		return 0, ""
	case CmdTrim:
		if !v.features.CanTrim && !v.features.ReadOnly {
			return EINVAL, "TRIM is not supported by this export"
		}
		writes = true
	case CmdWriteZeroes:
		if !v.features.CanZero && !v.features.ReadOnly {
			return EINVAL, "WRITE_ZEROES is not supported by this export"
		}
		if r.Flags&CmdFlagFastZero != 0 && !v.features.CanFastZero && !v.features.ReadOnly {
			return EINVAL, "FAST_ZERO is not supported by this export"
		}
		writes = true
	case CmdCache:
		if !v.features.CanCache {
			return EINVAL, "CACHE is not supported by this export"
		}
	case CmdBlockStatus:
		if !v.baseAlloc {
			return EINVAL, "BLOCK_STATUS needs the base:allocation context negotiated"
		}
		if r.Length == 0 {
			return EINVAL, "BLOCK_STATUS of zero length"
		}
	default:
		return EINVAL, fmt.Sprintf("unknown command %d", r.Type)
	}
	if writes && v.features.ReadOnly {
		return EPERM, "the export is read-only"
	}
	end := r.Offset + uint64(r.Length)
	if end < r.Offset || end > v.size {
		if writes {
			return ENOSPC, fmt.Sprintf("%s at %d+%d is past the end of the export (%d bytes)", cmdName(r.Type), r.Offset, r.Length, v.size)
		}
		return EINVAL, fmt.Sprintf("%s at %d+%d is past the end of the export (%d bytes)", cmdName(r.Type), r.Offset, r.Length, v.size)
	}
	return 0, ""
}
