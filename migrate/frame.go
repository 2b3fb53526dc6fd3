package migrate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The frame format, spoken on the control stream and on every page stream.
// A frame is a fixed 32-byte header, little-endian, then a payload:
//
//	 0  magic       "PDKM"
//	 4  version     1
//	 5  type        FrameType
//	 6  encoding    Encoding of a page frame; 0 for control frames
//	 7  flags       FlagLast on the last device state chunk; else 0
//	 8  index       page frames: first page; round frames: round number;
//	                device state: byte offset; ack: what is acknowledged
//	16  count       run frames: pages covered; batch frames: records;
//	                0 for control frames
//	20  length      payload bytes
//	24  payloadCRC  crc32c (Castagnoli) of the payload
//	28  headerCRC   crc32c of bytes 0..27
//
// The header has its own checksum so that a corrupt page index or length is
// caught before it is used: a payload checksum alone would let a flipped
// index bit write good data to the wrong page. Checksums catch corruption
// and bugs; forgery is TLS's business, and the decoder's limits make a
// forged frame cost an error, never a crash or unbounded memory.
const (
	frameHeaderBytes = 32
	frameVersion     = 1
)

var frameMagic = [4]byte{'P', 'D', 'K', 'M'}

// castagnoli is hardware-accelerated on amd64 and arm64 (~25 GB/s here).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Limits of the format. A decoder refuses anything larger before reading it.
const (
	// MaxPagesPerFrame bounds a page frame to 1 MiB of RAM: large
	// enough that header and syscall costs vanish, small enough that
	// N streams keep a bounded amount in flight.
	MaxPagesPerFrame = 256
	// maxRecordOverheadBytes is the worst-case record header in a batch
	// frame: a 10-byte gap, a kind byte, a 3-byte length.
	maxRecordOverheadBytes = 14
	// MaxFramePayloadBytes bounds any payload: a batch of
	// MaxPagesPerFrame records, each no larger than a raw page (the
	// encoder never sends an encoding larger than raw).
	MaxFramePayloadBytes = MaxPagesPerFrame * (PageBytes + maxRecordOverheadBytes)
	// maxControlPayloadBytes bounds the fixed-layout control frames.
	maxControlPayloadBytes = 4096
	// MaxErrorMessageBytes bounds the text of an Error frame.
	MaxErrorMessageBytes = 1024
	// MaxDeviceStateBytes bounds a guest's device state (CPU registers,
	// device models), sent in chunks of at most MaxFramePayloadBytes.
	MaxDeviceStateBytes = 64 << 20
)

// FrameType says what a frame carries.
type FrameType uint8

const (
	FrameHello       FrameType = 1 // Hello: RAM size, page size, streams
	FramePages       FrameType = 2 // guest pages (run or batch)
	FrameRoundStart  FrameType = 3 // index = round; RoundStart payload
	FrameRoundEnd    FrameType = 4 // index = round; RoundStats payload
	FrameDeviceState FrameType = 5 // index = byte offset; chunk; FlagLast on the last
	FrameDigest      FrameType = 6 // Digest of all of RAM
	FrameCommit      FrameType = 7 // source: the destination may resume
	FrameAck         FrameType = 8 // index = what is acknowledged
	FrameError       FrameType = 9 // ErrorInfo: the sender gives up
	frameTypeEnd     FrameType = 10
)

var frameTypeNames = [...]string{"", "hello", "pages", "round-start", "round-end", "device-state", "digest", "commit", "ack", "error"}

func (t FrameType) String() string {
	if t > 0 && t < frameTypeEnd {
		return frameTypeNames[t]
	}
	return fmt.Sprintf("frame-type-%d", uint8(t))
}

// Encoding says how a page frame, or one record of a batch, holds pages.
type Encoding uint8

const (
	EncZero  Encoding = 1 // all zero; no payload
	EncRaw   Encoding = 2 // the bytes as they are
	EncS2    Encoding = 3 // one s2 block of the pages
	EncZstd  Encoding = 4 // one zstd frame of the pages
	EncDelta Encoding = 5 // XBZRLE-style delta against the receiver's copy (records only)
	EncBatch Encoding = 6 // records of scattered pages (frame header only)
	// EncSparse is a run frame whose pages mix zero and data pages: a
	// bitmap of which pages hold data, then the data pages alone (see
	// sparsePrefixBytes). A guest whose zero and data pages alternate
	// would otherwise cost one frame, one checksum and, at the
	// destination, one pwrite per page.
	EncSparse Encoding = 7
	encEnd    Encoding = 8
)

var encodingNames = [...]string{"", "zero", "raw", "s2", "zstd", "delta", "batch", "sparse"}

// sparsePrefixBytes is the head of an EncSparse payload covering count
// pages: a bitmap of ceil(count/8) bytes (bit i of byte i/8 set: page
// index+i holds data; clear: it is zero), then one byte, the encoding of
// the data pages taken together (EncRaw, EncS2 or EncZstd), then that
// encoding of the data pages in page order.
func sparsePrefixBytes(count int) int { return (count+7)/8 + 1 }

func (e Encoding) String() string {
	if e > 0 && e < encEnd {
		return encodingNames[e]
	}
	return fmt.Sprintf("encoding-%d", uint8(e))
}

// FlagLast marks the last chunk of the device state.
const FlagLast = 1

// ErrCorruptFrame is wrapped by every error about a frame's contents
// (bad magic, checksum, a field out of its limits, a payload that does not
// decode). Truncation wraps io.ErrUnexpectedEOF instead.
var ErrCorruptFrame = errors.New("migrate: corrupt frame")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorruptFrame, fmt.Sprintf(format, args...))
}

// frameHeader is the decoded header.
type frameHeader struct {
	typ        FrameType
	encoding   Encoding
	flags      uint8
	index      uint64
	count      uint32
	length     uint32
	payloadCRC uint32
}

func (h *frameHeader) put(b []byte) {
	_ = b[frameHeaderBytes-1]
	copy(b[0:4], frameMagic[:])
	b[4] = frameVersion
	b[5] = byte(h.typ)
	b[6] = byte(h.encoding)
	b[7] = h.flags
	binary.LittleEndian.PutUint64(b[8:], h.index)
	binary.LittleEndian.PutUint32(b[16:], h.count)
	binary.LittleEndian.PutUint32(b[20:], h.length)
	binary.LittleEndian.PutUint32(b[24:], h.payloadCRC)
	binary.LittleEndian.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoli))
}

// parseHeader checks what can be checked without context: magic, version,
// checksum, known type, flags and the payload bound.
func parseHeader(b []byte) (frameHeader, error) {
	var h frameHeader
	if [4]byte(b[0:4]) != frameMagic {
		return h, corrupt("bad magic %q", b[0:4])
	}
	if got, want := binary.LittleEndian.Uint32(b[28:]), crc32.Checksum(b[:28], castagnoli); got != want {
		return h, corrupt("header checksum %#08x, computed %#08x", got, want)
	}
	if b[4] != frameVersion {
		return h, corrupt("version %d, this side speaks %d", b[4], frameVersion)
	}
	h = frameHeader{
		typ:        FrameType(b[5]),
		encoding:   Encoding(b[6]),
		flags:      b[7],
		index:      binary.LittleEndian.Uint64(b[8:]),
		count:      binary.LittleEndian.Uint32(b[16:]),
		length:     binary.LittleEndian.Uint32(b[20:]),
		payloadCRC: binary.LittleEndian.Uint32(b[24:]),
	}
	if h.typ == 0 || h.typ >= frameTypeEnd {
		return h, corrupt("unknown frame type %d", b[5])
	}
	if h.length > MaxFramePayloadBytes {
		return h, corrupt("%s payload of %d bytes, limit %d", h.typ, h.length, MaxFramePayloadBytes)
	}
	if h.flags&^FlagLast != 0 || (h.flags != 0 && h.typ != FrameDeviceState) {
		return h, corrupt("%s with flags %#x", h.typ, h.flags)
	}
	if h.typ != FramePages {
		if h.encoding != 0 || h.count != 0 {
			return h, corrupt("%s with encoding %d, count %d", h.typ, h.encoding, h.count)
		}
		if h.typ != FrameDeviceState && h.length > maxControlPayloadBytes {
			return h, corrupt("%s payload of %d bytes, limit %d", h.typ, h.length, maxControlPayloadBytes)
		}
	}
	return h, nil
}

// checkPageHeader checks a page frame's header against the RAM size,
// before its payload is read.
func checkPageHeader(h *frameHeader, ramPages uint64) error {
	if ramPages == 0 {
		return corrupt("page frame before the RAM size is known")
	}
	if h.count == 0 || h.count > MaxPagesPerFrame {
		return corrupt("page frame of %d pages, limit %d", h.count, MaxPagesPerFrame)
	}
	if h.index >= ramPages {
		return corrupt("page %d beyond RAM of %d pages", h.index, ramPages)
	}
	// Run frames cover [index, index+count); a batch's records are
	// checked one by one as they are decoded.
	if h.encoding != EncBatch && uint64(h.count) > ramPages-h.index {
		return corrupt("pages [%d,+%d) beyond RAM of %d pages", h.index, h.count, ramPages)
	}
	switch h.encoding {
	case EncZero:
		if h.length != 0 {
			return corrupt("zero frame with %d payload bytes", h.length)
		}
	case EncRaw:
		if h.length != h.count*PageBytes {
			return corrupt("raw frame of %d pages with %d payload bytes", h.count, h.length)
		}
	case EncSparse:
		if h.length < uint32(sparsePrefixBytes(int(h.count))) {
			return corrupt("sparse frame of %d pages with %d payload bytes", h.count, h.length)
		}
	case EncS2, EncZstd, EncBatch:
		if h.length == 0 {
			return corrupt("%s frame without payload", h.encoding)
		}
	default:
		return corrupt("page frame with encoding %s", h.encoding)
	}
	return nil
}
