package migrate

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Compression chooses the page encodings an Encoder may use. Zero pages are
// always sent as EncZero: checking costs ~1/10 of copying them.
type Compression uint8

const (
	CompressNone Compression = iota // raw pages
	CompressS2                      // s2 where it saves at least 1/16
	CompressZstd                    // zstd (fastest level) where it saves at least 1/16
	CompressAuto                    // s2, and deltas for cached pages: the smallest wins
)

var compressionNames = [...]string{"none", "s2", "zstd", "auto"}

func (c Compression) String() string {
	if int(c) < len(compressionNames) {
		return compressionNames[c]
	}
	return fmt.Sprintf("compression-%d", uint8(c))
}

// ParseCompression reads the --compress flag: none, s2, zstd or auto.
func ParseCompression(s string) (Compression, error) {
	for i, n := range compressionNames {
		if n == s {
			return Compression(i), nil
		}
	}
	return 0, fmt.Errorf("migrate: unknown compression %q (none, s2, zstd, auto)", s)
}

// DefaultDeltaCacheBytes is QEMU's default XBZRLE cache size.
const DefaultDeltaCacheBytes = 64 << 20

// EncoderOptions configures an Encoder.
type EncoderOptions struct {
	Compression Compression
	// DeltaCacheBytes bounds the copies of sent pages kept to compute
	// XBZRLE deltas from (per encoder: split the budget between
	// streams). 0 sends no deltas. Deltas are tried only by WritePages,
	// for pages sent before by WritePages: the bulk first pass does not
	// fill the cache, as in QEMU.
	DeltaCacheBytes int64
}

// encoderBufferBytes is the write buffer: large enough that a TLS record or
// a QUIC stream frame is full, small enough to bound latency.
const encoderBufferBytes = 256 << 10

// A page's encoding is worth it only if it saves this fraction (1/16):
// below that, the receiver's decode time costs more than the bytes saved.
const minSavingShift = 4

// deltaGoodBytes: a delta this small is taken without trying s2.
const deltaGoodBytes = PageBytes / 8

var zeroPage [PageBytes]byte

// Encoder writes frames to one stream. Page contents are copied before
// they are encoded, so a guest writing a page while it is encoded gets a
// consistent (if stale) page sent, never a torn encoding, and the delta
// cache holds exactly what the receiver holds. Not safe for concurrent use.
//
// Errors are sticky: after a write fails, every call returns that error.
type Encoder struct {
	w     *bufio.Writer
	opts  EncoderOptions
	cache *pageCache
	zenc  *zstd.Encoder

	snap  []byte // snapshot of up to MaxPagesPerFrame pages
	comp  []byte // compressor output
	batch []byte // the batch frame being built
	delta []byte // delta scratch
	hdr   [frameHeaderBytes]byte

	zeroes [MaxPagesPerFrame]bool // sparseRuns: which snapshot pages are zero
	// snapCRC is the crc32c of all of snap[:snapCRCBytes] while
	// snapCRCValid (WriteRunFile computed it for the digest): a raw
	// frame of exactly those bytes takes it as its payload checksum.
	snapCRC      uint32
	snapCRCBytes int
	snapCRCValid bool
	sparseHead   [MaxPagesPerFrame/8 + 1]byte // a sparse frame's bitmap and data encoding
	pieces       [][]byte                     // a sparse frame's payload pieces

	batchIndex uint64 // first page of the batch
	batchPrev  uint64 // last page added
	batchCount uint32

	stats PageStats
	err   error
}

// NewEncoder returns an Encoder writing to w.
func NewEncoder(w io.Writer, opts EncoderOptions) (*Encoder, error) {
	if opts.Compression > CompressAuto {
		return nil, fmt.Errorf("migrate: unknown compression %d", opts.Compression)
	}
	if opts.DeltaCacheBytes < 0 || opts.DeltaCacheBytes > MaxMemoryBytes {
		return nil, fmt.Errorf("migrate: delta cache of %d bytes", opts.DeltaCacheBytes)
	}
	e := &Encoder{
		w:     bufio.NewWriterSize(w, encoderBufferBytes),
		opts:  opts,
		cache: newPageCache(opts.DeltaCacheBytes),
		snap:  make([]byte, MaxPagesPerFrame*PageBytes),
		comp:  make([]byte, s2.MaxEncodedLen(MaxPagesPerFrame*PageBytes)),
		batch: make([]byte, 0, MaxFramePayloadBytes),
		delta: make([]byte, 0, PageBytes),
	}
	if opts.Compression == CompressZstd {
		z, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(false), // the frame has its own
			zstd.WithWindowSize(1<<20),
			zstd.WithZeroFrames(true))
		if err != nil {
			return nil, fmt.Errorf("migrate: zstd encoder: %w", err)
		}
		e.zenc = z
	}
	return e, nil
}

// Stats returns what this encoder has sent so far.
func (e *Encoder) Stats() PageStats { return e.stats }

// Flush writes any pending batch and buffered frames to the stream.
func (e *Encoder) Flush() error {
	if err := e.flushBatch(); err != nil {
		return err
	}
	if err := e.w.Flush(); err != nil {
		e.err = err
	}
	return e.err
}

// writeFrameVec writes one frame whose payload is pieces, in order.
func (e *Encoder) writeFrameVec(h frameHeader, pieces [][]byte) error {
	if e.err != nil {
		return e.err
	}
	length, crc := 0, uint32(0)
	for _, pc := range pieces {
		length += len(pc)
		crc = crc32.Update(crc, castagnoli, pc)
	}
	h.length = uint32(length)
	h.payloadCRC = crc
	h.put(e.hdr[:])
	if _, err := e.w.Write(e.hdr[:]); err != nil {
		e.err = err
		return err
	}
	for _, pc := range pieces {
		if _, err := e.w.Write(pc); err != nil {
			e.err = err
			return err
		}
	}
	e.stats.WireBytes += uint64(frameHeaderBytes + length)
	return nil
}

func (e *Encoder) writeFrame(h frameHeader, payload []byte) error {
	return e.writeFrameCRC(h, payload, crc32.Checksum(payload, castagnoli))
}

// writeFrameCRC is writeFrame given the payload's crc32c.
func (e *Encoder) writeFrameCRC(h frameHeader, payload []byte, crc uint32) error {
	if e.err != nil {
		return e.err
	}
	h.length = uint32(len(payload))
	h.payloadCRC = crc
	h.put(e.hdr[:])
	if _, err := e.w.Write(e.hdr[:]); err != nil {
		e.err = err
		return err
	}
	if _, err := e.w.Write(payload); err != nil {
		e.err = err
		return err
	}
	e.stats.WireBytes += uint64(frameHeaderBytes + len(payload))
	return nil
}

// WriteRun sends consecutive pages starting at page index: the bulk first
// pass over RAM, and long runs of dirty pages. pages is a whole number of
// pages, typically a slice of guest RAM. Zero pages go as EncZero frames,
// the rest raw or compressed, in frames of at most MaxPagesPerFrame.
func (e *Encoder) WriteRun(index uint64, pages []byte) error {
	if len(pages) == 0 || len(pages)%PageBytes != 0 {
		return fmt.Errorf("migrate: WriteRun of %d bytes, not whole pages", len(pages))
	}
	if err := e.flushBatch(); err != nil {
		return err
	}
	for len(pages) > 0 {
		n := min(len(pages), len(e.snap))
		snap := e.snap[:n]
		copy(snap, pages[:n])
		if err := e.writeSnap(index, snap); err != nil {
			return err
		}
		index += uint64(n / PageBytes)
		pages = pages[n:]
	}
	return nil
}

// WriteRunFile is WriteRun of count (1..MaxPagesPerFrame) pages read with
// pread from fd, the memfd under the guest's RAM, at page index. It
// returns the crc32c of the pages as read and sent (a RAMDigest chunk's
// checksum when they are one chunk), and fills sums (nil, or count long)
// with the pages' sums (RAMDigest.ChunkPageSums). pread copies the pages as WriteRun's
// snapshot does, but never faults in pages that are not mapped (a guest
// just received with pwrite has none mapped), and faults cost more than
// the copy here (see RAMDigest.UpdateChunkFile).
func (e *Encoder) WriteRunFile(fd int, index uint64, count int, sums []uint32) (uint32, error) {
	if count < 1 || count > MaxPagesPerFrame {
		return 0, fmt.Errorf("migrate: WriteRunFile of %d pages, want 1..%d", count, MaxPagesPerFrame)
	}
	if sums != nil && len(sums) != count {
		return 0, fmt.Errorf("migrate: WriteRunFile of %d pages given %d page sums", count, len(sums))
	}
	if err := e.flushBatch(); err != nil {
		return 0, err
	}
	snap := e.snap[:count*PageBytes]
	if err := preadFull(fd, snap, int64(index)*PageBytes); err != nil {
		return 0, err
	}
	runs := e.sparseRuns(snap)
	// The checksum of zero pages costs a table step each (crcZeroPage),
	// not a pass over 4 KiB; data runs are hashed whole.
	crc := uint32(0)
	if sums != nil {
		// Page by page, for the digest's page sums (pagesum.go); the
		// run's checksum is their fold. The same bytes are hashed.
		for p := range count {
			if e.zeroes[p] {
				sums[p] = 0
			} else {
				sums[p] = pageSum(snap[p*PageBytes : (p+1)*PageBytes])
			}
		}
		crc = foldPageSums(sums)
	} else {
		for p := 0; p < count; {
			q := p + 1
			for q < count && e.zeroes[q] == e.zeroes[p] {
				q++
			}
			if e.zeroes[p] {
				crc = crcZeroPages(crc, q-p)
			} else {
				crc = crc32.Update(crc, castagnoli, snap[p*PageBytes:q*PageBytes])
			}
			p = q
		}
	}
	// A chunk of data pages alone goes as one raw frame (unless it
	// compresses) whose payload checksum is this one.
	e.snapCRC, e.snapCRCBytes, e.snapCRCValid = crc, len(snap), true
	err := e.writeSnapRuns(index, snap, runs)
	e.snapCRCValid = false
	return crc, err
}

// writeSnap sends snap, a private copy of the pages from page index, as
// runs of zero and data frames.
func (e *Encoder) writeSnap(index uint64, snap []byte) error {
	return e.writeSnapRuns(index, snap, e.sparseRuns(snap))
}

// writeSnapRuns is writeSnap once sparseRuns has marked snap's zero pages
// in e.zeroes and counted runs.
func (e *Encoder) writeSnapRuns(index uint64, snap []byte, runs int) error {
	count := len(snap) / PageBytes
	if runs >= minSparseRuns {
		return e.writeSparse(index, snap)
	}
	for p := 0; p < count; {
		zero := e.zeroes[p]
		q := p + 1
		for q < count && e.zeroes[q] == zero {
			q++
		}
		var err error
		if zero {
			err = e.writeZeroRun(index+uint64(p), q-p)
		} else {
			err = e.writeDataRun(index+uint64(p), snap[p*PageBytes:q*PageBytes])
		}
		if err != nil {
			return err
		}
		p = q
	}
	return nil
}

// minSparseRuns: a snapshot whose pages change between zero and data this
// many times or more goes as one sparse frame rather than a frame per run.
// Two runs (zero then data, or the reverse) cost two headers, less than a
// bitmap; from three on the sparse frame is smaller, one header and one
// checksum instead of one a run, and, at the destination over RAM that
// holds data, one pwritev instead of one pwrite per run (on fresh RAM it
// writes the data runs alone: see maxZeroFillPages).
const minSparseRuns = 3

// sparseRuns records which pages of snap are zero in e.zeroes and returns
// how many runs of zero and data pages snap has.
func (e *Encoder) sparseRuns(snap []byte) int {
	count := len(snap) / PageBytes
	runs := 0
	for p := range count {
		e.zeroes[p] = bytes.Equal(snap[p*PageBytes:(p+1)*PageBytes], zeroPage[:])
		if p == 0 || e.zeroes[p] != e.zeroes[p-1] {
			runs++
		}
	}
	return runs
}

// writeSparse sends snap (pages from page index, their zero pages marked
// in e.zeroes by sparseRuns) as one EncSparse frame.
func (e *Encoder) writeSparse(index uint64, snap []byte) error {
	count := len(snap) / PageBytes
	nb := (count + 7) / 8
	head := e.sparseHead[:nb+1]
	clear(head)
	pieces := e.pieces[:0]
	pieces = append(pieces, head)
	dataPages := 0
	for p := range count {
		if !e.zeroes[p] {
			head[p/8] |= 1 << (p % 8)
			pieces = append(pieces, snap[p*PageBytes:(p+1)*PageBytes])
			dataPages++
		}
	}
	enc := EncRaw
	// Compress only if the first data page does: trying a compressor on
	// the whole frame means gathering its data pages into one buffer
	// first, a copy that incompressible data (the common case of
	// scattered data pages, a half-zero guest) pays for nothing.
	if e.opts.Compression != CompressNone {
		first := pieces[1]
		if _, ok := e.compress(first, PageBytes-PageBytes>>minSavingShift); ok {
			gathered := e.batch[:0]
			for _, pc := range pieces[1:] {
				gathered = append(gathered, pc...)
			}
			if c, ok := e.compress(gathered, len(gathered)-len(gathered)>>minSavingShift); ok {
				enc = c
				pieces = append(pieces[:1], e.comp)
			}
		}
	}
	head[nb] = byte(enc)
	payloadBytes := 0
	for _, pc := range pieces {
		payloadBytes += len(pc)
	}
	err := e.writeFrameVec(frameHeader{typ: FramePages, encoding: EncSparse, index: index, count: uint32(count)}, pieces)
	clear(pieces)
	e.pieces = pieces[:0]
	if err != nil {
		return err
	}
	e.stats.PayloadBytes += uint64(payloadBytes)
	e.stats.Pages += uint64(count)
	e.stats.ZeroPages += uint64(count - dataPages)
	e.stats.add(enc, uint64(dataPages))
	if e.cache != nil {
		for p := range count {
			if e.zeroes[p] {
				e.cache.update(index+uint64(p), zeroPage[:])
			} else {
				e.cache.update(index+uint64(p), snap[p*PageBytes:(p+1)*PageBytes])
			}
		}
	}
	return nil
}

func (e *Encoder) writeZeroRun(index uint64, count int) error {
	if err := e.writeFrame(frameHeader{typ: FramePages, encoding: EncZero, index: index, count: uint32(count)}, nil); err != nil {
		return err
	}
	e.stats.Pages += uint64(count)
	e.stats.ZeroPages += uint64(count)
	if e.cache != nil {
		for i := range count {
			e.cache.update(index+uint64(i), zeroPage[:])
		}
	}
	return nil
}

func (e *Encoder) writeDataRun(index uint64, raw []byte) error {
	count := len(raw) / PageBytes
	enc, payload := EncRaw, raw
	if c, ok := e.compress(raw, len(raw)-len(raw)>>minSavingShift); ok {
		enc, payload = c, e.comp
	}
	h := frameHeader{typ: FramePages, encoding: enc, index: index, count: uint32(count)}
	var err error
	if enc == EncRaw && e.snapCRCValid && len(raw) == e.snapCRCBytes && &raw[0] == &e.snap[0] {
		err = e.writeFrameCRC(h, payload, e.snapCRC)
	} else {
		err = e.writeFrame(h, payload)
	}
	if err != nil {
		return err
	}
	e.stats.Pages += uint64(count)
	e.stats.PayloadBytes += uint64(len(payload))
	e.stats.add(enc, uint64(count))
	if e.cache != nil {
		for i := range count {
			e.cache.update(index+uint64(i), raw[i*PageBytes:(i+1)*PageBytes])
		}
	}
	return nil
}

// compress tries the configured compressor on src and, if the result fits
// in limitBytes, leaves it in e.comp and returns its encoding.
func (e *Encoder) compress(src []byte, limitBytes int) (Encoding, bool) {
	switch e.opts.Compression {
	case CompressS2, CompressAuto:
		out := s2.Encode(e.comp[:cap(e.comp)], src)
		if len(out) <= limitBytes {
			e.comp = out
			return EncS2, true
		}
	case CompressZstd:
		out := e.zenc.EncodeAll(src, e.comp[:0])
		if cap(out) > cap(e.comp) {
			e.comp = out[:0] // keep the larger buffer
		}
		if len(out) <= limitBytes {
			e.comp = out
			return EncZstd, true
		}
	}
	return 0, false
}

// WritePages sends the pages of ram listed in pages, scattered dirty pages
// of a later round, as batch frames with one record a page, each in the
// smallest encoding allowed: zero, delta against the cached copy, s2 or
// zstd, raw. Pass pages ascending, many per call (thousands): a batch
// frame holds up to MaxPagesPerFrame records and is sent when full or at
// the end of the call.
func (e *Encoder) WritePages(ram []byte, pages []uint64) error {
	if len(ram)%PageBytes != 0 {
		return fmt.Errorf("migrate: WritePages over %d bytes of RAM, not whole pages", len(ram))
	}
	ramPages := uint64(len(ram) / PageBytes)
	snap := e.snap[:PageBytes]
	for _, p := range pages {
		if p >= ramPages {
			return fmt.Errorf("migrate: WritePages: page %d beyond RAM of %d pages", p, ramPages)
		}
		copy(snap, ram[p*PageBytes:(p+1)*PageBytes])
		if err := e.addRecord(p, snap); err != nil {
			return err
		}
	}
	return e.flushBatch()
}

// addRecord appends page p (a snapshot) to the batch in its best encoding.
func (e *Encoder) addRecord(p uint64, snap []byte) error {
	if e.batchCount > 0 && (p <= e.batchPrev || e.batchCount == MaxPagesPerFrame ||
		len(e.batch)+maxRecordOverheadBytes+PageBytes > MaxFramePayloadBytes) {
		if err := e.flushBatch(); err != nil {
			return err
		}
	}
	gap := uint64(0)
	if e.batchCount == 0 {
		e.batchIndex = p
	} else {
		gap = p - e.batchPrev - 1
	}

	enc, data := EncRaw, snap
	if bytes.Equal(snap, zeroPage[:]) {
		enc, data = EncZero, nil
	} else {
		best := PageBytes - PageBytes>>minSavingShift // what an encoding must beat
		if e.cache != nil {
			if old, ok := e.cache.get(p); ok {
				if d, ok := appendDelta(e.delta[:0], old, snap, best); ok {
					enc, data, best = EncDelta, d, len(d)
				}
			}
		}
		if best > deltaGoodBytes {
			if c, ok := e.compress(snap, best-1); ok {
				enc, data = c, e.comp
			}
		}
	}

	base := len(e.batch)
	e.batch = binary.AppendUvarint(e.batch, gap)
	e.batch = append(e.batch, byte(enc))
	if enc != EncZero && enc != EncRaw {
		e.batch = binary.AppendUvarint(e.batch, uint64(len(data)))
	}
	e.batch = append(e.batch, data...)

	e.stats.Pages++
	e.stats.PayloadBytes += uint64(len(e.batch) - base)
	switch enc {
	case EncZero:
		e.stats.ZeroPages++
	case EncRaw:
		e.stats.RawPages++
	case EncS2:
		e.stats.S2Pages++
	case EncZstd:
		e.stats.ZstdPages++
	case EncDelta:
		e.stats.DeltaPages++
	}
	if e.cache != nil {
		if enc == EncZero {
			e.cache.update(p, zeroPage[:])
		} else {
			e.cache.put(p, snap)
		}
	}
	e.batchPrev = p
	e.batchCount++
	return nil
}

// flushBatch writes the pending batch frame, if any.
func (e *Encoder) flushBatch() error {
	if e.batchCount == 0 {
		return e.err
	}
	h := frameHeader{typ: FramePages, encoding: EncBatch, index: e.batchIndex, count: e.batchCount}
	err := e.writeFrame(h, e.batch)
	e.batch = e.batch[:0]
	e.batchCount = 0
	return err
}

// Control frames. Each is flushed at once, with any pages before it: they
// are few, and the peer is waiting for them.

func (e *Encoder) writeControl(h frameHeader, payload []byte) error {
	if err := e.flushBatch(); err != nil {
		return err
	}
	if err := e.writeFrame(h, payload); err != nil {
		return err
	}
	return e.Flush()
}

// WriteHello sends the opening frame of a migration.
func (e *Encoder) WriteHello(h Hello) error {
	return e.writeControl(frameHeader{typ: FrameHello}, h.marshal())
}

// WriteRoundStart announces round number round and the pages it will send.
func (e *Encoder) WriteRoundStart(round uint64, rs RoundStart) error {
	return e.writeControl(frameHeader{typ: FrameRoundStart, index: round}, binary.LittleEndian.AppendUint64(nil, rs.DirtyPages))
}

// WriteRoundEnd ends round number round on this stream, with its stats. On
// a page stream it is also a barrier: every page of the round is before it.
func (e *Encoder) WriteRoundEnd(round uint64, s PageStats) error {
	return e.writeControl(frameHeader{typ: FrameRoundEnd, index: round}, s.marshal())
}

// WriteDeviceState sends the guest's device state in chunks, the last one
// flagged FlagLast. An empty state is one empty last chunk.
func (e *Encoder) WriteDeviceState(state []byte) error {
	if len(state) > MaxDeviceStateBytes {
		return fmt.Errorf("migrate: device state of %d bytes, limit %d", len(state), MaxDeviceStateBytes)
	}
	off := 0
	for {
		n := min(len(state)-off, MaxFramePayloadBytes)
		h := frameHeader{typ: FrameDeviceState, index: uint64(off)}
		if off+n == len(state) {
			h.flags = FlagLast
		}
		if err := e.writeFrame(h, state[off:off+n]); err != nil {
			return err
		}
		off += n
		if off == len(state) {
			return e.Flush()
		}
	}
}

// WriteDigest sends the digest of all of RAM.
func (e *Encoder) WriteDigest(d Digest) error {
	return e.writeControl(frameHeader{typ: FrameDigest}, d.marshal())
}

// WriteCommit tells the destination it owns the guest now.
func (e *Encoder) WriteCommit() error {
	return e.writeControl(frameHeader{typ: FrameCommit}, nil)
}

// WriteAck acknowledges index (a round, or the digest: the engine decides).
func (e *Encoder) WriteAck(index uint64) error {
	return e.writeControl(frameHeader{typ: FrameAck, index: index}, nil)
}

// WriteError tells the peer this side gives up, and why.
func (e *Encoder) WriteError(info ErrorInfo) error {
	return e.writeControl(frameHeader{typ: FrameError}, info.marshal())
}
