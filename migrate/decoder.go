package migrate

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Frame is one decoded frame. Payload is only valid until the next call to
// Decoder.Next.
type Frame struct {
	Type     FrameType
	Encoding Encoding // page frames
	Flags    uint8
	Index    uint64
	Count    uint32
	Payload  []byte

	// payloadCRC is the payload's crc32c as Next checked it; valid only
	// if hasCRC (a Frame built by a caller has none).
	payloadCRC uint32
	hasCRC     bool
}

// Decoder reads frames from one stream and checks every one against hard
// limits before trusting it: header checksum, known type and encoding,
// payload length bounded by MaxFramePayloadBytes (the only allocation it
// ever makes on a peer's say-so), page indexes inside RAM, payload checksum.
// Errors wrap ErrCorruptFrame, or io.ErrUnexpectedEOF for a stream cut
// mid-frame; a stream that ends between frames gives io.EOF.
type Decoder struct {
	r        *bufio.Reader
	ramPages uint64
	hdr      [frameHeaderBytes]byte
	payload  []byte
	frame    Frame
	zdec     *zstd.Decoder
	touched  *Bitmap  // pages ApplyPages wrote, if set
	skipZero bool     // RAM is fresh: zero run frames need no write
	ramFd    int      // the memfd under the RAM given to ApplyPages, or -1
	scratch  []byte   // pages decoded before they are written to ramFd
	iov      [][]byte // pieces of one pwritev (sparse frames)

	// Chunk checksums of the pages as written (see ChunkSum): the run of
	// frames in progress from a digest chunk's first page, and the chunks
	// wholly written by such runs since ResetChunkSums.
	run  chunkRun
	sums map[int]uint32

	// Page changes (SetPageChanges): per digest chunk, the XOR of
	// chunkPageChange for every page written since TakePageChanges,
	// from the page's sum before and after the write.
	changes  map[int]uint32
	trackOld bool
	oldSums  []uint32
	oldBuf   []byte
}

// chunkRun is a digest chunk being written by run frames in page order.
type chunkRun struct {
	chunk int    // -1: none
	pages int    // pages written from the chunk's first
	crc   uint32 // crc32c of those pages as written
}

// SetRAMFile makes ApplyPages write pages with pwrite on fd, the
// memfd whose mapping is the RAM it is given (-1: through the mapping).
// Filling a page of shmem from the kernel allocates it without zeroing it
// first, where a write through the mapping faults it in zeroed (or needs
// a populate that zeroes it) and then copies: measured here on a fresh
// 256 MiB memfd in 1 MiB pieces, pwrite 3.0 GB/s against 0.48 GB/s for
// MADV_POPULATE_WRITE then copy. The caller owns fd.
func (d *Decoder) SetRAMFile(fd int) { d.ramFd = fd }

// WritesByFile says whether ApplyPages writes pages with pwrite (they then
// need no populated mapping).
func (d *Decoder) WritesByFile() bool { return d.ramFd >= 0 }

// writeFile writes pages decoded from enc and payload at page index of
// the RAM file: raw payloads as they are, others decoded into a scratch
// buffer first (deltas onto the page's current contents, read with pread).
// It returns the bytes it wrote (valid until the next call).
func (d *Decoder) writeFile(enc Encoding, index uint64, count int, payload []byte) ([]byte, error) {
	off := int64(index) * PageBytes
	if enc == EncRaw {
		if len(payload) != count*PageBytes {
			return nil, corrupt("raw payload of %d bytes for %d pages", len(payload), count)
		}
		return payload, pwriteFull(d.ramFd, payload, off)
	}
	if d.scratch == nil {
		d.scratch = make([]byte, MaxPagesPerFrame*PageBytes)
	}
	dst := d.scratch[:count*PageBytes]
	if enc == EncDelta {
		if err := checkDelta(payload); err != nil {
			return nil, err
		}
		if err := preadFull(d.ramFd, dst, off); err != nil {
			return nil, err
		}
		applyDelta(dst, payload)
	} else if err := d.decodeInto(enc, dst, payload); err != nil {
		return nil, err
	}
	return dst, pwriteFull(d.ramFd, dst, off)
}

// ChunkSum returns the crc32c of digest chunk c as this decoder wrote it,
// if run frames in page order wrote all of the chunk since
// ResetChunkSums and nothing else wrote to it since. The destination then
// takes it for its digest instead of reading the chunk back: its RAM is
// written by this decoder alone until the commit (the guest runs there
// only after it), so the bytes handed to pwrite, or copied through the
// mapping (RAM without a file to write, such as huge pages), are the
// bytes RAM holds. Pages a skipped zero frame covers are counted as zero,
// which fresh RAM is.
func (d *Decoder) ChunkSum(c int) (uint32, bool) {
	crc, ok := d.sums[c]
	return crc, ok
}

// ResetChunkSums forgets every chunk checksum and the run in progress: the
// destination calls it at each round's end.
func (d *Decoder) ResetChunkSums() {
	clear(d.sums)
	d.run = chunkRun{chunk: -1}
}

// forgetChunks drops what is known of the chunks holding pages
// [from, to]: something other than an in-order run wrote to them.
func (d *Decoder) forgetChunks(from, to uint64) {
	for c := int(from / chunkPages); c <= int(to/chunkPages); c++ {
		delete(d.sums, c)
		if d.run.chunk == c {
			d.run.chunk = -1
		}
	}
}

// noteRun records that a run frame wrote count pages from page index;
// update extends a crc32c with those pages as written. A run that starts
// a chunk begins its checksum, one that continues the run in progress
// extends it, anything else makes the chunk unknown. Called only after
// the pages were written.
func (d *Decoder) noteRun(index uint64, count int, update func(crc uint32) uint32) {
	if d.touched == nil || d.touched.Len() != int(d.ramPages) {
		// Without the touched bitmap the caller cannot know which
		// chunks to take, nor this decoder which pages were written.
		return
	}
	c := int(index / chunkPages)
	off := int(index % chunkPages)
	chunkLen := int(min(chunkPages, d.ramPages-uint64(c)*chunkPages))
	if off+count > chunkLen {
		// Crosses into the next chunk (a single page stream sends
		// contiguous dirty pages as one run): read back.
		d.forgetChunks(index, index+uint64(count)-1)
		return
	}
	delete(d.sums, c)
	switch {
	case off == 0:
		d.run = chunkRun{chunk: c}
	case d.run.chunk != c || d.run.pages != off:
		d.run.chunk = -1
		return
	}
	d.run.crc = update(d.run.crc)
	d.run.pages += count
	if d.run.pages == chunkLen {
		if d.sums == nil {
			d.sums = make(map[int]uint32)
		}
		d.sums[c] = d.run.crc
		d.run.chunk = -1
	}
}

// anyTouched says whether a page of [index, index+count) was written
// since the touched bitmap's last reset. Without a bitmap it says yes, so
// that nothing is assumed zero.
func (d *Decoder) anyTouched(index uint64, count int) bool {
	if d.touched == nil || d.touched.Len() != int(d.ramPages) {
		return true
	}
	// Test page by page: NextSet would scan on to the end of the
	// bitmap when nothing after is set, which fresh RAM is.
	for p := int(index); p < int(index)+count; p++ {
		if d.touched.Test(p) {
			return true
		}
	}
	return false
}

// crcZeroPages extends crc with n zero pages.
func crcZeroPages(crc uint32, n int) uint32 {
	if crc == 0 && n == chunkPages {
		return zeroChunkCRC
	}
	for range n {
		crc = crcZeroPage(crc)
	}
	return crc
}

// SetSkipZero says whether the RAM under zero run frames is known to be
// zero already (fresh RAM during the bulk pass): they are then neither
// written, which would allocate the pages, nor marked touched.
// It turns page changes off (SetPageChanges): the two are for different
// rounds, and a skipped zero page would need its own case.
func (d *Decoder) SetSkipZero(skip bool) {
	d.skipZero = skip
	if skip {
		d.trackOld = false
	}
}

// decoderBufferBytes matches the encoder's buffer.
const decoderBufferBytes = 256 << 10

// NewDecoder reads frames from r. ramPages is the guest's RAM in pages, or
// 0 until a Hello has been checked (then call SetRAMPages): page frames are
// refused while it is 0.
func NewDecoder(r io.Reader, ramPages uint64) *Decoder {
	return &Decoder{r: bufio.NewReaderSize(r, decoderBufferBytes), ramPages: min(ramPages, MaxMemoryBytes/PageBytes), ramFd: -1, run: chunkRun{chunk: -1}}
}

// SetRAMPages sets the RAM size page indexes are checked against.
func (d *Decoder) SetRAMPages(n uint64) { d.ramPages = min(n, MaxMemoryBytes/PageBytes) }

// SetPageChanges makes ApplyPages record, for every page it writes, how
// the page's digest chunk checksum changes (pagesum.go): it hashes the
// page before (read from RAM) and after the write. The destination turns
// it on after the bulk pass, when a round writes scattered pages over RAM
// that holds data: updating the digest then costs the pages written, not
// a rehash of their 1 MiB chunks.
// It turns SetSkipZero off: RAM is no longer fresh then.
func (d *Decoder) SetPageChanges(on bool) {
	d.trackOld = on
	if on {
		d.skipZero = false
		if d.changes == nil {
			d.changes = make(map[int]uint32)
		}
	}
}

// TakePageChanges calls fn with each chunk's recorded change and forgets
// them.
func (d *Decoder) TakePageChanges(fn func(chunk int, x uint32)) {
	for c, x := range d.changes {
		fn(c, x)
	}
	clear(d.changes)
}

// readOldSums hashes pages [index, index+count) as RAM holds them before a
// write, when page changes are on.
func (d *Decoder) readOldSums(index uint64, count int, ram []byte) error {
	if !d.trackOld {
		return nil
	}
	d.oldSums = d.oldSums[:0]
	old := ram[index*PageBytes : (index+uint64(count))*PageBytes]
	if d.ramFd >= 0 {
		// Through the mapping would fault pages in (SetRAMFile).
		if len(d.oldBuf) < len(old) {
			d.oldBuf = make([]byte, MaxPagesPerFrame*PageBytes)
		}
		old = d.oldBuf[:len(old)]
		if err := preadFull(d.ramFd, old, int64(index)*PageBytes); err != nil {
			return err
		}
	}
	for i := range count {
		d.oldSums = append(d.oldSums, pageSum(old[i*PageBytes:(i+1)*PageBytes]))
	}
	return nil
}

// noteChanges records the change of pages [index, index+count) from the
// sums readOldSums took to newSum(i) of each.
func (d *Decoder) noteChanges(index uint64, count int, newSum func(i int) uint32) {
	if !d.trackOld {
		return
	}
	for i := range count {
		p := index + uint64(i)
		c, j := int(p/chunkPages), int(p%chunkPages)
		n := int(min(chunkPages, d.ramPages-uint64(c)*chunkPages))
		if x := chunkPageChange(d.oldSums[i], newSum(i), j, n); x != 0 {
			d.changes[c] ^= x
		}
	}
}

// bytesSum is noteChanges's newSum over pages laid out in b.
func bytesSum(b []byte) func(i int) uint32 {
	return func(i int) uint32 { return pageSum(b[i*PageBytes : (i+1)*PageBytes]) }
}

// SetTouched makes ApplyPages set in b (ramPages bits) every page it
// writes: in the bulk pass the destination rehashes only those chunks of
// its RAM digest, and in every round it checks that they belong to the
// stream.
func (d *Decoder) SetTouched(b *Bitmap) { d.touched = b }

// Next reads the next frame.
func (d *Decoder) Next() (*Frame, error) {
	if n, err := io.ReadFull(d.r, d.hdr[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		if err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("migrate: frame header cut after %d of %d bytes: %w", n, frameHeaderBytes, err)
		}
		return nil, err
	}
	h, err := parseHeader(d.hdr[:])
	if err != nil {
		return nil, err
	}
	if h.typ == FramePages {
		if err := checkPageHeader(&h, d.ramPages); err != nil {
			return nil, err
		}
	}
	if int(h.length) > cap(d.payload) {
		// Grow to the next power of two, at most the payload limit: a
		// forged length costs at most MaxFramePayloadBytes once.
		d.payload = make([]byte, min(max(1<<bits.Len32(h.length), 4096), MaxFramePayloadBytes))
	}
	p := d.payload[:h.length]
	if n, err := io.ReadFull(d.r, p); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("migrate: %s frame payload cut after %d of %d bytes: %w", h.typ, n, h.length, io.ErrUnexpectedEOF)
		}
		return nil, err
	}
	if got := crc32.Checksum(p, castagnoli); got != h.payloadCRC {
		return nil, corrupt("%s payload checksum %#08x, computed %#08x", h.typ, h.payloadCRC, got)
	}
	d.frame = Frame{Type: h.typ, Encoding: h.encoding, Flags: h.flags, Index: h.index, Count: h.count, Payload: p, payloadCRC: h.payloadCRC, hasCRC: true}
	return &d.frame, nil
}

// Close releases the zstd decoder, if one was made.
func (d *Decoder) Close() {
	if d.zdec != nil {
		d.zdec.Close()
		d.zdec = nil
	}
}

// ApplyPages writes the pages of a page frame into ram (the destination's
// guest RAM, ramPages long) and returns what it applied. It fails on a
// payload that does not decode to exactly the pages the header announced.
// Run frames are decoded straight into RAM, so on error some of the frame's
// pages may hold partial data: the destination's RAM is not live until
// commit, and a failed migration discards it.
func (d *Decoder) ApplyPages(f *Frame, ram []byte) (PageStats, error) {
	var st PageStats
	if f.Type != FramePages {
		return st, fmt.Errorf("migrate: ApplyPages on a %s frame", f.Type)
	}
	if uint64(len(ram)) != d.ramPages*PageBytes {
		return st, fmt.Errorf("migrate: ApplyPages into %d bytes of RAM, decoder expects %d pages", len(ram), d.ramPages)
	}
	// Next checked index and count against ramPages; recheck in case
	// the caller built the Frame itself.
	h := frameHeader{typ: f.Type, encoding: f.Encoding, index: f.Index, count: f.Count, length: uint32(len(f.Payload))}
	if len(f.Payload) > MaxFramePayloadBytes {
		return st, corrupt("payload of %d bytes", len(f.Payload))
	}
	if err := checkPageHeader(&h, d.ramPages); err != nil {
		return st, err
	}
	st.PayloadBytes = uint64(len(f.Payload))
	if f.Encoding == EncBatch {
		return d.applyBatch(f, ram, st)
	}
	if f.Encoding == EncSparse {
		return d.applySparse(f, ram, st)
	}
	count := int(f.Count)
	if f.Encoding == EncZero && d.skipZero {
		st.Pages = uint64(f.Count)
		st.add(f.Encoding, uint64(f.Count))
		if d.anyTouched(f.Index, count) {
			// Only a source that sends a page twice in a round
			// does this: the page keeps what was written, so read
			// it back rather than count it as zero.
			d.forgetChunks(f.Index, f.Index+uint64(count)-1)
		} else {
			d.noteRun(f.Index, count, func(crc uint32) uint32 { return crcZeroPages(crc, count) })
		}
		return st, nil
	}
	dst := ram[f.Index*PageBytes : (f.Index+uint64(f.Count))*PageBytes]
	if err := d.readOldSums(f.Index, count, ram); err != nil {
		return st, err
	}
	if d.ramFd >= 0 {
		wrote, err := d.writeFile(f.Encoding, f.Index, count, f.Payload)
		if err != nil {
			d.forgetChunks(f.Index, f.Index+uint64(count)-1)
			return st, err
		}
		d.noteChanges(f.Index, count, bytesSum(wrote))
		d.noteRun(f.Index, count, func(crc uint32) uint32 {
			if crc == 0 && f.Encoding == EncRaw && f.hasCRC {
				// Next checked the payload's checksum: it is
				// the pages' (a chunk's first frame starts from 0).
				return f.payloadCRC
			}
			return crc32.Update(crc, castagnoli, wrote)
		})
	} else {
		if err := d.decodeInto(f.Encoding, dst, f.Payload); err != nil {
			d.forgetChunks(f.Index, f.Index+uint64(count)-1)
			return st, err
		}
		d.noteChanges(f.Index, count, bytesSum(dst))
		d.noteRun(f.Index, count, func(crc uint32) uint32 {
			if crc == 0 && f.Encoding == EncRaw && f.hasCRC {
				return f.payloadCRC // as above
			}
			// What RAM holds now, read while it is in the cache.
			return crc32.Update(crc, castagnoli, dst)
		})
	}
	st.Pages = uint64(f.Count)
	st.add(f.Encoding, uint64(f.Count))
	if d.touched != nil && d.touched.Len() == int(d.ramPages) {
		d.touched.SetRange(int(f.Index), int(f.Index)+int(f.Count))
	}
	return st, nil
}

func (s *PageStats) add(enc Encoding, pages uint64) {
	switch enc {
	case EncZero:
		s.ZeroPages += pages
	case EncRaw:
		s.RawPages += pages
	case EncS2:
		s.S2Pages += pages
	case EncZstd:
		s.ZstdPages += pages
	case EncDelta:
		s.DeltaPages += pages
	}
}

// decodeInto decodes a zero, raw, s2 or zstd payload into dst, which it
// must fill exactly.
func (d *Decoder) decodeInto(enc Encoding, dst, payload []byte) error {
	switch enc {
	case EncZero:
		if len(payload) != 0 {
			return corrupt("zero pages with %d payload bytes", len(payload))
		}
		clear(dst)
	case EncRaw:
		if len(payload) != len(dst) {
			return corrupt("raw payload of %d bytes for %d", len(payload), len(dst))
		}
		copy(dst, payload)
	case EncS2:
		n, err := s2.DecodedLen(payload)
		if err != nil {
			return corrupt("%v", err) // s2's errors start with "s2: "
		}
		if n != len(dst) {
			return corrupt("s2 block of %d bytes for %d", n, len(dst))
		}
		out, err := s2.Decode(dst, payload)
		if err != nil {
			return corrupt("%v", err)
		}
		if len(out) != len(dst) || &out[0] != &dst[0] {
			return corrupt("s2 decoded %d bytes elsewhere", len(out))
		}
	case EncZstd:
		if d.zdec == nil {
			z, err := zstd.NewReader(nil,
				zstd.WithDecoderConcurrency(1),
				zstd.WithDecoderMaxMemory(MaxPagesPerFrame*PageBytes),
				zstd.WithDecoderMaxWindow(MaxPagesPerFrame*PageBytes),
				zstd.WithDecodeAllCapLimit(true))
			if err != nil {
				return fmt.Errorf("migrate: zstd decoder: %w", err)
			}
			d.zdec = z
		}
		// The cap limit makes DecodeAll stop at len(dst): it cannot
		// write past the pages it was given, nor allocate.
		out, err := d.zdec.DecodeAll(payload, dst[:0:len(dst)])
		if err != nil {
			return corrupt("zstd: %v", err)
		}
		if len(out) != len(dst) || (len(out) > 0 && &out[0] != &dst[0]) {
			return corrupt("zstd frame of %d bytes for %d", len(out), len(dst))
		}
	default:
		return corrupt("pages in encoding %s", enc)
	}
	return nil
}

// applyBatch decodes a batch frame's records. Each record's page is checked
// before anything is written to it.
func (d *Decoder) applyBatch(f *Frame, ram []byte, st PageStats) (PageStats, error) {
	p := f.Payload
	prev := uint64(0)
	for k := uint32(0); k < f.Count; k++ {
		gap, n := binary.Uvarint(p)
		if n <= 0 {
			return st, corrupt("batch record %d: bad gap", k)
		}
		p = p[n:]
		var page uint64
		if k == 0 {
			page = f.Index + gap
		} else {
			page = prev + 1 + gap
		}
		if gap >= d.ramPages || page >= d.ramPages || page < prev {
			return st, corrupt("batch record %d: page beyond RAM of %d pages", k, d.ramPages)
		}
		prev = page
		if len(p) == 0 {
			return st, corrupt("batch record %d: no kind", k)
		}
		enc := Encoding(p[0])
		p = p[1:]
		var data []byte
		switch enc {
		case EncZero:
		case EncRaw:
			if len(p) < PageBytes {
				return st, corrupt("batch record %d: raw page with %d bytes left", k, len(p))
			}
			data, p = p[:PageBytes], p[PageBytes:]
		case EncS2, EncZstd, EncDelta:
			l, n := binary.Uvarint(p)
			if n <= 0 || l > uint64(len(p)-n) {
				return st, corrupt("batch record %d: bad length", k)
			}
			data, p = p[n:n+int(l)], p[n+int(l):]
		default:
			return st, corrupt("batch record %d: encoding %s", k, enc)
		}
		dst := ram[page*PageBytes : (page+1)*PageBytes]
		d.forgetChunks(page, page)
		if err := d.readOldSums(page, 1, ram); err != nil {
			return st, err
		}
		if d.ramFd >= 0 {
			wrote, err := d.writeFile(enc, page, 1, data)
			if err != nil {
				return st, fmt.Errorf("%w (batch record %d, page %d)", err, k, page)
			}
			d.noteChanges(page, 1, bytesSum(wrote))
		} else {
			if enc == EncDelta {
				if err := checkDelta(data); err != nil {
					return st, fmt.Errorf("%w (batch record %d, page %d)", err, k, page)
				}
				applyDelta(dst, data)
			} else if err := d.decodeInto(enc, dst, data); err != nil {
				return st, fmt.Errorf("%w (batch record %d, page %d)", err, k, page)
			}
			d.noteChanges(page, 1, bytesSum(dst))
		}
		st.Pages++
		st.add(enc, 1)
		if d.touched != nil && d.touched.Len() == int(d.ramPages) {
			d.touched.Set(int(page))
		}
	}
	if len(p) != 0 {
		return st, corrupt("batch of %d records with %d bytes left over", f.Count, len(p))
	}
	return st, nil
}

// maxZeroFillPages is the longest run of zero pages inside a sparse frame
// that the destination writes as zeros while its RAM is fresh
// (SetSkipZero), to keep the frame's data pages in one pwritev. It is 0:
// every zero page of fresh RAM is left alone, at the price of one pwrite
// per data run. Writing short gaps as zeros saved system calls, but
// allocated the zero pages too, and allocating shmem pages is what costs
// most at the destination: on this VM 0.7 CPU-s per GiB for pages freed
// moments before and 2.5 to 3 CPU-s per GiB for memory the VM had not
// touched lately (host faults), against ~1.5 µs for each extra pwrite.
// Side by side (BENCHMARKS.md, fourth pass), 3 x 4 GiB half-zero over TCP
// took 36.7 CPU-s with gaps of up to 4 pages filled and 24.2 without.
//
// A variable only so that BenchmarkMigrateBulk can compare settings.
var maxZeroFillPages = 0

// applySparse writes a sparse frame's pages (see sparsePrefixBytes): data
// pages from the payload, zero pages cleared (or left alone on fresh RAM).
// Everything is checked before anything is written.
func (d *Decoder) applySparse(f *Frame, ram []byte, st PageStats) (PageStats, error) {
	count := int(f.Count)
	nb := (count + 7) / 8
	if len(f.Payload) < nb+1 {
		return st, corrupt("sparse frame of %d pages with %d payload bytes", count, len(f.Payload))
	}
	bm := f.Payload[:nb]
	if count%8 != 0 && bm[nb-1]>>(count%8) != 0 {
		return st, corrupt("sparse frame of %d pages with bits set past its end", count)
	}
	dataPages := 0
	for _, b := range bm {
		dataPages += bits.OnesCount8(b)
	}
	inner := Encoding(f.Payload[nb])
	body := f.Payload[nb+1:]
	var data []byte
	switch inner {
	case EncRaw:
		if len(body) != dataPages*PageBytes {
			return st, corrupt("sparse frame of %d data pages with %d data bytes", dataPages, len(body))
		}
		data = body
	case EncS2, EncZstd:
		if dataPages == 0 {
			return st, corrupt("sparse frame without data pages in %s", inner)
		}
		if d.scratch == nil {
			d.scratch = make([]byte, MaxPagesPerFrame*PageBytes)
		}
		data = d.scratch[:dataPages*PageBytes]
		if err := d.decodeInto(inner, data, body); err != nil {
			return st, err
		}
	default:
		return st, corrupt("sparse frame with data in %s", inner)
	}
	isData := func(i int) bool { return bm[i/8]&(1<<(i%8)) != 0 }
	if err := d.readOldSums(f.Index, count, ram); err != nil {
		return st, err
	}

	if d.ramFd >= 0 {
		// Consecutive pages go in one pwritev: data pages from data,
		// zero pages from zeroPage, except zero runs longer than
		// maxZeroFillPages on fresh RAM, which end the write.
		iov := d.iov[:0]
		start, k := 0, 0
		flush := func(end int) error {
			if len(iov) > 0 {
				if err := pwritevFull(d.ramFd, iov, int64(f.Index+uint64(start))*PageBytes); err != nil {
					return err
				}
				clear(iov)
				iov = iov[:0]
			}
			start = end
			return nil
		}
		for i := 0; i < count; {
			if isData(i) {
				iov = append(iov, data[k*PageBytes:(k+1)*PageBytes])
				k++
				i++
				continue
			}
			j := i + 1
			for j < count && !isData(j) {
				j++
			}
			if d.skipZero && (j-i > maxZeroFillPages || j == count || len(iov) == 0) {
				// Nothing to keep together across this run.
				if err := flush(j); err != nil {
					return st, err
				}
			} else {
				for range j - i {
					iov = append(iov, zeroPage[:])
				}
			}
			i = j
		}
		if err := flush(count); err != nil {
			return st, err
		}
		d.iov = iov
	} else {
		k := 0
		for i := range count {
			dst := ram[(f.Index+uint64(i))*PageBytes : (f.Index+uint64(i)+1)*PageBytes]
			if isData(i) {
				copy(dst, data[k*PageBytes:(k+1)*PageBytes])
				k++
			} else if !d.skipZero {
				clear(dst)
			}
		}
	}
	if d.trackOld {
		k := 0
		d.noteChanges(f.Index, count, func(i int) uint32 {
			if !isData(i) {
				return 0 // written as zeros: skipZero is off
			}
			k++
			return pageSum(data[(k-1)*PageBytes : k*PageBytes])
		})
	}
	overwrote := false
	for i := 0; i < count && d.skipZero && !overwrote; i++ {
		// A zero page skipped over a page written before: see
		// the zero frame in ApplyPages.
		overwrote = !isData(i) && d.anyTouched(f.Index+uint64(i), 1)
	}
	if overwrote {
		d.forgetChunks(f.Index, f.Index+uint64(count)-1)
	} else {
		d.noteRun(f.Index, count, func(crc uint32) uint32 {
			k := 0
			for i := range count {
				if isData(i) {
					crc = crc32.Update(crc, castagnoli, data[k*PageBytes:(k+1)*PageBytes])
					k++
				} else {
					// Written as zeros, or skipped on fresh RAM,
					// which reads as zero.
					crc = crcZeroPage(crc)
				}
			}
			return crc
		})
	}
	st.Pages = uint64(count)
	st.ZeroPages += uint64(count - dataPages)
	st.add(inner, uint64(dataPages))
	if d.touched != nil && d.touched.Len() == int(d.ramPages) {
		if d.skipZero {
			for i := range count {
				if isData(i) {
					d.touched.Set(int(f.Index) + i)
				}
			}
		} else {
			d.touched.SetRange(int(f.Index), int(f.Index)+count)
		}
	}
	return st, nil
}

// Payload accessors for control frames: each checks the type and the exact
// layout.

func (f *Frame) want(t FrameType) error {
	if f.Type != t {
		return fmt.Errorf("migrate: want a %s frame, got %s", t, f.Type)
	}
	return nil
}

// Hello returns a Hello frame's payload.
func (f *Frame) Hello() (Hello, error) {
	if err := f.want(FrameHello); err != nil {
		return Hello{}, err
	}
	return parseHello(f.Payload)
}

// RoundStart returns a RoundStart frame's payload.
func (f *Frame) RoundStart() (RoundStart, error) {
	if err := f.want(FrameRoundStart); err != nil {
		return RoundStart{}, err
	}
	if len(f.Payload) != 8 {
		return RoundStart{}, corrupt("round start of %d bytes", len(f.Payload))
	}
	return RoundStart{DirtyPages: binary.LittleEndian.Uint64(f.Payload)}, nil
}

// RoundStats returns a RoundEnd frame's payload.
func (f *Frame) RoundStats() (PageStats, error) {
	if err := f.want(FrameRoundEnd); err != nil {
		return PageStats{}, err
	}
	return parsePageStats(f.Payload)
}

// Digest returns a Digest frame's payload.
func (f *Frame) Digest() (Digest, error) {
	if err := f.want(FrameDigest); err != nil {
		return Digest{}, err
	}
	return parseDigest(f.Payload)
}

// ErrorInfo returns an Error frame's payload.
func (f *Frame) ErrorInfo() (ErrorInfo, error) {
	if err := f.want(FrameError); err != nil {
		return ErrorInfo{}, err
	}
	return parseErrorInfo(f.Payload)
}

// DeviceState reassembles the device state from its chunks, in order, up
// to MaxDeviceStateBytes.
type DeviceState struct {
	buf  []byte
	done bool
}

// ErrDeviceStateOrder is wrapped when chunks arrive out of order.
var ErrDeviceStateOrder = errors.New("migrate: device state chunk out of order")

// Add takes the next chunk and reports whether it was the last.
func (s *DeviceState) Add(f *Frame) (last bool, err error) {
	if err := f.want(FrameDeviceState); err != nil {
		return false, err
	}
	if s.done {
		return false, fmt.Errorf("%w: chunk after the last", ErrDeviceStateOrder)
	}
	if f.Index != uint64(len(s.buf)) {
		return false, fmt.Errorf("%w: chunk at offset %d, have %d bytes", ErrDeviceStateOrder, f.Index, len(s.buf))
	}
	if len(s.buf)+len(f.Payload) > MaxDeviceStateBytes {
		return false, corrupt("device state beyond %d bytes", MaxDeviceStateBytes)
	}
	s.buf = append(s.buf, f.Payload...)
	s.done = f.Flags&FlagLast != 0
	return s.done, nil
}

// Bytes returns the state once the last chunk is in, else nil.
func (s *DeviceState) Bytes() []byte {
	if !s.done {
		return nil
	}
	return s.buf
}
