package migrate

import (
	"encoding/binary"
	"strings"
	"unicode/utf8"
)

// Payloads of the control frames: fixed layouts, little-endian, checked for
// exact length on decode so that a version mismatch is an error, not a
// misread.

// Hello opens a migration on the control stream: the source says what it
// will send, and the destination sizes its RAM and decoder limits from it
// (after checking it against what it was told to expect).
type Hello struct {
	RAMBytes    uint64 // guest RAM, a multiple of PageBytes
	PageBytes   uint32 // must be PageBytes
	PageStreams uint32 // page streams that follow, 1..MaxPageStreams
}

const helloBytes = 16

func (h Hello) marshal() []byte {
	b := make([]byte, helloBytes)
	binary.LittleEndian.PutUint64(b[0:], h.RAMBytes)
	binary.LittleEndian.PutUint32(b[8:], h.PageBytes)
	binary.LittleEndian.PutUint32(b[12:], h.PageStreams)
	return b
}

func parseHello(p []byte) (Hello, error) {
	if len(p) != helloBytes {
		return Hello{}, corrupt("hello of %d bytes, want %d", len(p), helloBytes)
	}
	h := Hello{
		RAMBytes:    binary.LittleEndian.Uint64(p[0:]),
		PageBytes:   binary.LittleEndian.Uint32(p[8:]),
		PageStreams: binary.LittleEndian.Uint32(p[12:]),
	}
	if h.PageBytes != PageBytes {
		return h, corrupt("hello with page size %d, this side uses %d", h.PageBytes, PageBytes)
	}
	if err := checkMemorySize(int64(min(h.RAMBytes, MaxMemoryBytes+1))); err != nil {
		return h, corrupt("hello with RAM of %d bytes", h.RAMBytes)
	}
	if h.PageStreams == 0 || h.PageStreams > MaxPageStreams {
		return h, corrupt("hello with %d page streams, limit %d", h.PageStreams, MaxPageStreams)
	}
	return h, nil
}

// MaxPageStreams bounds the parallel page streams of one migration.
const MaxPageStreams = 64

// PageStats counts what an encoder sent; a RoundEnd frame carries one round's.
type PageStats struct {
	Pages        uint64 // pages sent, in any encoding
	ZeroPages    uint64 // sent as zero, no payload (QEMU's "duplicate")
	RawPages     uint64
	S2Pages      uint64
	ZstdPages    uint64
	DeltaPages   uint64
	PayloadBytes uint64 // page payload bytes
	WireBytes    uint64 // every frame's header and payload, control frames too
}

const pageStatsBytes = 64

// Add adds o to s.
func (s *PageStats) Add(o PageStats) {
	s.Pages += o.Pages
	s.ZeroPages += o.ZeroPages
	s.RawPages += o.RawPages
	s.S2Pages += o.S2Pages
	s.ZstdPages += o.ZstdPages
	s.DeltaPages += o.DeltaPages
	s.PayloadBytes += o.PayloadBytes
	s.WireBytes += o.WireBytes
}

// Sub returns s - o, for the stats of one round out of running totals.
func (s PageStats) Sub(o PageStats) PageStats {
	return PageStats{
		Pages:        s.Pages - o.Pages,
		ZeroPages:    s.ZeroPages - o.ZeroPages,
		RawPages:     s.RawPages - o.RawPages,
		S2Pages:      s.S2Pages - o.S2Pages,
		ZstdPages:    s.ZstdPages - o.ZstdPages,
		DeltaPages:   s.DeltaPages - o.DeltaPages,
		PayloadBytes: s.PayloadBytes - o.PayloadBytes,
		WireBytes:    s.WireBytes - o.WireBytes,
	}
}

func (s PageStats) marshal() []byte {
	b := make([]byte, 0, pageStatsBytes)
	for _, v := range []uint64{s.Pages, s.ZeroPages, s.RawPages, s.S2Pages, s.ZstdPages, s.DeltaPages, s.PayloadBytes, s.WireBytes} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

func parsePageStats(p []byte) (PageStats, error) {
	if len(p) != pageStatsBytes {
		return PageStats{}, corrupt("round stats of %d bytes, want %d", len(p), pageStatsBytes)
	}
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(p[8*i:]) }
	return PageStats{u(0), u(1), u(2), u(3), u(4), u(5), u(6), u(7)}, nil
}

// RoundStart announces a round: how many dirty pages it will send.
type RoundStart struct {
	DirtyPages uint64
}

// Digest summarizes all of RAM (see RAMDigest).
type Digest struct {
	ChunkBytes uint32
	Chunks     uint64
	Sum        [32]byte
}

const digestBytes = 4 + 4 + 8 + 32

func (d Digest) marshal() []byte {
	b := make([]byte, digestBytes)
	binary.LittleEndian.PutUint32(b[0:], d.ChunkBytes)
	binary.LittleEndian.PutUint64(b[8:], d.Chunks)
	copy(b[16:], d.Sum[:])
	return b
}

func parseDigest(p []byte) (Digest, error) {
	if len(p) != digestBytes {
		return Digest{}, corrupt("digest of %d bytes, want %d", len(p), digestBytes)
	}
	if binary.LittleEndian.Uint32(p[4:]) != 0 {
		return Digest{}, corrupt("digest with reserved bytes set")
	}
	d := Digest{ChunkBytes: binary.LittleEndian.Uint32(p[0:]), Chunks: binary.LittleEndian.Uint64(p[8:])}
	copy(d.Sum[:], p[16:])
	return d, nil
}

// ErrorInfo is the payload of an Error frame: the sender gives up and says
// why. Codes are the engine's; the message is for people.
type ErrorInfo struct {
	Code    uint32
	Message string
}

func (e ErrorInfo) marshal() []byte {
	msg := e.Message
	if len(msg) > MaxErrorMessageBytes {
		msg = msg[:MaxErrorMessageBytes]
	}
	b := binary.LittleEndian.AppendUint32(make([]byte, 0, 4+len(msg)), e.Code)
	return append(b, msg...)
}

func parseErrorInfo(p []byte) (ErrorInfo, error) {
	if len(p) < 4 || len(p) > 4+MaxErrorMessageBytes {
		return ErrorInfo{}, corrupt("error frame of %d bytes", len(p))
	}
	msg := p[4:]
	if !utf8.Valid(msg) {
		// Keep it printable whatever the peer sent.
		msg = []byte(strings.ToValidUTF8(string(msg), "\uFFFD"))
	}
	return ErrorInfo{Code: binary.LittleEndian.Uint32(p), Message: string(msg)}, nil
}
