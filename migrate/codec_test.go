package migrate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"testing"
)

// fillRAM gives RAM the mix a guest has: zero pages, random pages,
// compressible (text-like) pages, half-zero pages.
func fillRAM(rng *rand.Rand, ram []byte) {
	for p := 0; p < len(ram)/PageBytes; p++ {
		page := ram[p*PageBytes : (p+1)*PageBytes]
		switch rng.IntN(4) {
		case 0:
			clear(page)
		case 1:
			for i := range page {
				page[i] = byte(rng.Uint32())
			}
		case 2:
			for i := range page {
				page[i] = "the quick brown fox "[(i+p)%20]
			}
		case 3:
			clear(page)
			for i := 0; i < PageBytes/2; i++ {
				page[i] = byte(rng.Uint32())
			}
		}
	}
}

// migrateOnce sends src's RAM through an encoder and a decoder into dst:
// a bulk pass, then rounds of dirtied pages, checking equality each round.
func testRoundTrip(t *testing.T, opts EncoderOptions) PageStats {
	const pages = 2048 // 8 MiB
	rng := rand.New(rand.NewPCG(11, uint64(opts.Compression)))
	src := make([]byte, pages*PageBytes)
	dst := make([]byte, pages*PageBytes)
	fillRAM(rng, src)
	for i := range dst {
		dst[i] = 0x5A // the destination starts with garbage, not zeros
	}
	var wire bytes.Buffer
	enc, err := NewEncoder(&wire, opts)
	if err != nil {
		t.Fatal(err)
	}
	dec := NewDecoder(&wire, pages)
	defer dec.Close()
	var applied PageStats
	drain := func() {
		t.Helper()
		if err := enc.Flush(); err != nil {
			t.Fatal(err)
		}
		for {
			f, err := dec.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st, err := dec.ApplyPages(f, dst)
			if err != nil {
				t.Fatal(err)
			}
			applied.Add(st)
		}
	}
	// Bulk pass in runs of odd sizes, to cross frame boundaries.
	for p := 0; p < pages; {
		n := min(pages-p, 1+rng.IntN(700))
		if err := enc.WriteRun(uint64(p), src[p*PageBytes:(p+n)*PageBytes]); err != nil {
			t.Fatal(err)
		}
		p += n
	}
	drain()
	if !bytes.Equal(src, dst) {
		t.Fatal("RAM differs after the bulk pass")
	}
	// Rounds over a hot set, so the delta cache gets hits.
	hot := rng.Perm(pages)[:300]
	for round := 0; round < 5; round++ {
		dirty := NewBitmap(pages)
		for k := 0; k < 200; k++ {
			p := hot[rng.IntN(len(hot))]
			if k%10 == 0 {
				p = rng.IntN(pages)
			}
			page := src[p*PageBytes : (p+1)*PageBytes]
			if k%25 == 0 {
				clear(page)
			} else {
				copy(page, mutate(rng, page))
			}
			dirty.Set(p)
		}
		var list []uint64
		list, _ = dirty.TakeSet(list, 0, pages)
		if round == 4 {
			// The last round goes as a run, over cached pages: the
			// cache must follow, or later deltas would be wrong.
			if err := enc.WriteRun(0, src); err != nil {
				t.Fatal(err)
			}
		} else if err := enc.WritePages(src, list); err != nil {
			t.Fatal(err)
		}
		drain()
		if !bytes.Equal(src, dst) {
			t.Fatalf("RAM differs after round %d", round)
		}
	}
	// One more round after the run: deltas against what the run sent.
	for _, p := range hot[:50] {
		src[p*PageBytes+7]++
	}
	if err := enc.WritePages(src, sortedCopy(hot[:50])); err != nil {
		t.Fatal(err)
	}
	drain()
	if !bytes.Equal(src, dst) {
		t.Fatal("RAM differs after the round following a run")
	}
	sent := enc.Stats()
	if sent.Pages != applied.Pages || sent.DeltaPages != applied.DeltaPages || sent.ZeroPages != applied.ZeroPages ||
		sent.RawPages != applied.RawPages || sent.PayloadBytes != applied.PayloadBytes {
		t.Fatalf("sent %+v, applied %+v", sent, applied)
	}
	return sent
}

func sortedCopy(ps []int) []uint64 {
	b := NewBitmap(1 << 20)
	for _, p := range ps {
		b.Set(p)
	}
	out, _ := b.TakeSet(nil, 0, len(ps))
	return out
}

func TestCodecRoundTrip(t *testing.T) {
	for _, c := range []struct {
		opts      EncoderOptions
		wantDelta bool
	}{
		{EncoderOptions{Compression: CompressNone}, false},
		{EncoderOptions{Compression: CompressS2}, false},
		{EncoderOptions{Compression: CompressZstd}, false},
		{EncoderOptions{Compression: CompressAuto, DeltaCacheBytes: DefaultDeltaCacheBytes}, true},
		{EncoderOptions{Compression: CompressNone, DeltaCacheBytes: DefaultDeltaCacheBytes}, true},
		// A cache far smaller than the hot set: eviction all the time,
		// and (LRU over a uniform hot set) almost no hits.
		{EncoderOptions{Compression: CompressAuto, DeltaCacheBytes: 16 * PageBytes}, false},
	} {
		t.Run(fmt.Sprintf("%s-cache%d", c.opts.Compression, c.opts.DeltaCacheBytes), func(t *testing.T) {
			st := testRoundTrip(t, c.opts)
			t.Logf("%+v", st)
			if st.ZeroPages == 0 {
				t.Error("no zero pages detected")
			}
			if c.wantDelta && st.DeltaPages == 0 {
				t.Errorf("delta pages %d", st.DeltaPages)
			}
			compressed := st.S2Pages + st.ZstdPages
			if (compressed > 0) != (c.opts.Compression != CompressNone) {
				t.Errorf("compressed pages %d", compressed)
			}
		})
	}
}

func TestControlFramesRoundTrip(t *testing.T) {
	var wire bytes.Buffer
	enc, _ := NewEncoder(&wire, EncoderOptions{})
	state := make([]byte, 2*MaxFramePayloadBytes+123)
	for i := range state {
		state[i] = byte(i * 7)
	}
	dig := Digest{ChunkBytes: DigestChunkBytes, Chunks: 3, Sum: [32]byte{1, 2, 3}}
	stats := PageStats{1, 2, 3, 4, 5, 6, 7, 8}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(enc.WriteHello(Hello{RAMBytes: 1 << 30, PageBytes: PageBytes, PageStreams: 8}))
	must(enc.WriteRoundStart(3, RoundStart{DirtyPages: 77}))
	must(enc.WriteRoundEnd(3, stats))
	must(enc.WriteDeviceState(state))
	must(enc.WriteDeviceState(nil))
	must(enc.WriteDigest(dig))
	must(enc.WriteCommit())
	must(enc.WriteAck(42))
	must(enc.WriteError(ErrorInfo{Code: 7, Message: "digest mismatch"}))

	dec := NewDecoder(&wire, 0)
	next := func(want FrameType) *Frame {
		t.Helper()
		f, err := dec.Next()
		if err != nil {
			t.Fatal(err)
		}
		if f.Type != want {
			t.Fatalf("got %s, want %s", f.Type, want)
		}
		return f
	}
	if h, err := next(FrameHello).Hello(); err != nil || h.RAMBytes != 1<<30 || h.PageStreams != 8 {
		t.Fatalf("hello %+v %v", h, err)
	}
	f := next(FrameRoundStart)
	if rs, err := f.RoundStart(); err != nil || rs.DirtyPages != 77 || f.Index != 3 {
		t.Fatalf("round start %+v %v", rs, err)
	}
	if s, err := next(FrameRoundEnd).RoundStats(); err != nil || s != stats {
		t.Fatalf("round end %+v %v", s, err)
	}
	var ds DeviceState
	for {
		last, err := ds.Add(next(FrameDeviceState))
		if err != nil {
			t.Fatal(err)
		}
		if last {
			break
		}
		if ds.Bytes() != nil {
			t.Fatal("Bytes before the last chunk")
		}
	}
	if !bytes.Equal(ds.Bytes(), state) {
		t.Fatal("device state differs")
	}
	var empty DeviceState
	if last, err := empty.Add(next(FrameDeviceState)); !last || err != nil || empty.Bytes() == nil && len(empty.Bytes()) != 0 {
		t.Fatalf("empty device state: %v %v", last, err)
	}
	if d, err := next(FrameDigest).Digest(); err != nil || d != dig {
		t.Fatalf("digest %+v %v", d, err)
	}
	next(FrameCommit)
	if f := next(FrameAck); f.Index != 42 {
		t.Fatal("ack index")
	}
	if e, err := next(FrameError).ErrorInfo(); err != nil || e.Code != 7 || e.Message != "digest mismatch" {
		t.Fatalf("error %+v %v", e, err)
	}
	if _, err := dec.Next(); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
	// Accessors refuse the wrong type.
	if _, err := f.Hello(); err == nil {
		t.Fatal("Hello of an ack frame")
	}
	if _, err := ds.Add(f); err == nil {
		t.Fatal("device state from an ack frame")
	}
}

// frameBytes builds a frame with correct checksums around any fields, so
// that tests reach the checks behind the checksums.
func frameBytes(typ FrameType, enc Encoding, flags uint8, index uint64, count uint32, payload []byte) []byte {
	h := frameHeader{typ: typ, encoding: enc, flags: flags, index: index, count: count,
		length: uint32(len(payload)), payloadCRC: crc32.Checksum(payload, castagnoli)}
	b := make([]byte, frameHeaderBytes, frameHeaderBytes+len(payload))
	h.put(b)
	return append(b, payload...)
}

func TestDecoderRejects(t *testing.T) {
	const ramPages = 64
	good := frameBytes(FramePages, EncRaw, 0, 3, 1, make([]byte, PageBytes))
	flip := func(b []byte, i int) []byte { b = bytes.Clone(b); b[i] ^= 1; return b }
	rehash := func(b []byte) []byte { // fix the header checksum after an edit
		binary.LittleEndian.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoli))
		return b
	}
	s2Page := func(n int) []byte { // an s2 block decoding to n bytes
		var wire bytes.Buffer
		e, _ := NewEncoder(&wire, EncoderOptions{Compression: CompressS2})
		p := bytes.Repeat([]byte("abcd"), n/4)
		e.WriteRun(0, p[:PageBytes])
		e.Flush()
		f, _ := NewDecoder(&wire, ramPages).Next()
		return f.Payload
	}
	batch := func(records ...[]byte) []byte { return bytes.Join(records, nil) }
	rec := func(gap uint64, enc Encoding, data []byte, withLen bool) []byte {
		b := binary.AppendUvarint(nil, gap)
		b = append(b, byte(enc))
		if withLen {
			b = binary.AppendUvarint(b, uint64(len(data)))
		}
		return append(b, data...)
	}
	cases := []struct {
		name      string
		stream    []byte
		truncated bool // wants io.ErrUnexpectedEOF, else ErrCorruptFrame
		ramPages  uint64
	}{
		{"bad magic", flip(good, 0), false, ramPages},
		{"header checksum", flip(good, 9), false, ramPages},
		{"payload checksum", flip(good, 40), false, ramPages},
		{"version", rehash(flip(good, 4)), false, ramPages},
		{"unknown type", frameBytes(frameTypeEnd, 0, 0, 0, 0, nil), false, ramPages},
		{"type zero", frameBytes(0, 0, 0, 0, 0, nil), false, ramPages},
		{"flags on pages", frameBytes(FramePages, EncZero, FlagLast, 0, 1, nil), false, ramPages},
		{"unknown flag", frameBytes(FrameDeviceState, 0, 2, 0, 0, nil), false, ramPages},
		{"control with count", frameBytes(FrameCommit, 0, 0, 0, 1, nil), false, ramPages},
		{"control too long", frameBytes(FrameAck, 0, 0, 0, 0, make([]byte, maxControlPayloadBytes+1)), false, ramPages},
		{"payload over the limit", rehash(func() []byte {
			b := bytes.Clone(good[:frameHeaderBytes])
			binary.LittleEndian.PutUint32(b[20:], MaxFramePayloadBytes+1)
			return b
		}()), false, ramPages},
		{"pages before hello", good, false, 0},
		{"page beyond RAM", frameBytes(FramePages, EncZero, 0, ramPages, 1, nil), false, ramPages},
		{"run beyond RAM", frameBytes(FramePages, EncZero, 0, ramPages-1, 2, nil), false, ramPages},
		{"index overflow", frameBytes(FramePages, EncZero, 0, ^uint64(0), 2, nil), false, ramPages},
		{"zero pages", frameBytes(FramePages, EncZero, 0, 0, 0, nil), false, ramPages},
		{"too many pages", frameBytes(FramePages, EncZero, 0, 0, MaxPagesPerFrame+1, nil), false, 2 * MaxPagesPerFrame},
		{"zero with payload", frameBytes(FramePages, EncZero, 0, 0, 1, []byte{1}), false, ramPages},
		{"raw short", frameBytes(FramePages, EncRaw, 0, 0, 2, make([]byte, PageBytes)), false, ramPages},
		{"delta as frame", frameBytes(FramePages, EncDelta, 0, 0, 1, []byte{0, 1, 1}), false, ramPages},
		{"unknown encoding", frameBytes(FramePages, encEnd, 0, 0, 1, []byte{1}), false, ramPages},
		{"s2 garbage", frameBytes(FramePages, EncS2, 0, 0, 1, []byte{0x80, 0x20, 0xFF, 0xFF}), false, ramPages},
		{"s2 wrong length", frameBytes(FramePages, EncS2, 0, 0, 2, s2Page(PageBytes)), false, ramPages},
		{"zstd garbage", frameBytes(FramePages, EncZstd, 0, 0, 1, []byte{0x28, 0xB5, 0x2F, 0xFD, 0, 0}), false, ramPages},
		{"batch leftover", frameBytes(FramePages, EncBatch, 0, 0, 1, batch(rec(0, EncZero, nil, false), []byte{0})), false, ramPages},
		{"batch short", frameBytes(FramePages, EncBatch, 0, 0, 2, batch(rec(0, EncZero, nil, false))), false, ramPages},
		{"batch page beyond RAM", frameBytes(FramePages, EncBatch, 0, 0, 2, batch(rec(0, EncZero, nil, false), rec(ramPages, EncZero, nil, false))), false, ramPages},
		{"batch gap overflow", frameBytes(FramePages, EncBatch, 0, 5, 2, batch(rec(0, EncZero, nil, false), rec(^uint64(0), EncZero, nil, false))), false, ramPages},
		{"batch raw short", frameBytes(FramePages, EncBatch, 0, 0, 1, batch(rec(0, EncRaw, make([]byte, 100), false))), false, ramPages},
		{"batch length past end", frameBytes(FramePages, EncBatch, 0, 0, 1, batch(rec(0, EncS2, nil, false), []byte{0xFF, 0x01})), false, ramPages},
		{"batch bad delta", frameBytes(FramePages, EncBatch, 0, 0, 1, batch(rec(0, EncDelta, []byte{0xFF, 0x1F, 5, 1, 2, 3, 4, 5}, true))), false, ramPages},
		{"batch batch", frameBytes(FramePages, EncBatch, 0, 0, 1, batch(rec(0, EncBatch, nil, false))), false, ramPages},
		{"batch s2 wrong length", frameBytes(FramePages, EncBatch, 0, 0, 1, batch(rec(0, EncS2, []byte{0x05, 0x10, 1, 2, 3, 4, 5}, true))), false, ramPages},
		{"cut header", good[:20], true, ramPages},
		{"cut payload", good[:100], true, ramPages},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dec := NewDecoder(bytes.NewReader(c.stream), c.ramPages)
			defer dec.Close()
			ram := make([]byte, c.ramPages*PageBytes)
			f, err := dec.Next()
			if err == nil {
				_, err = dec.ApplyPages(f, ram)
			}
			want := ErrCorruptFrame
			if c.truncated {
				want = io.ErrUnexpectedEOF
			}
			if !errors.Is(err, want) {
				t.Fatalf("got %v, want %v", err, want)
			}
			t.Log(err)
		})
	}
}

// A delta that fails its check changes no byte of the page.
func TestBadDeltaLeavesPageAlone(t *testing.T) {
	ram := bytes.Repeat([]byte{7}, 4*PageBytes)
	b := binary.AppendUvarint(nil, 0)
	b = append(b, byte(EncDelta))
	delta := []byte{0x00, 0x02, 1, 2, 0xFF, 0x1F, 0x05, 1, 2, 3, 4, 5} // second run past the end
	b = binary.AppendUvarint(b, uint64(len(delta)))
	b = append(b, delta...)
	dec := NewDecoder(bytes.NewReader(frameBytes(FramePages, EncBatch, 0, 2, 1, b)), 4)
	f, err := dec.Next()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dec.ApplyPages(f, ram); !errors.Is(err, ErrCorruptFrame) {
		t.Fatal(err)
	}
	if !bytes.Equal(ram, bytes.Repeat([]byte{7}, 4*PageBytes)) {
		t.Fatal("bad delta changed RAM")
	}
}

func TestEncoderRejectsBadInput(t *testing.T) {
	enc, _ := NewEncoder(io.Discard, EncoderOptions{})
	if err := enc.WriteRun(0, make([]byte, 100)); err == nil {
		t.Fatal("partial page run accepted")
	}
	if err := enc.WritePages(make([]byte, 2*PageBytes), []uint64{2}); err == nil {
		t.Fatal("page beyond RAM accepted")
	}
	if err := enc.WriteDeviceState(make([]byte, MaxDeviceStateBytes+1)); err == nil {
		t.Fatal("oversized device state accepted")
	}
	if _, err := NewEncoder(io.Discard, EncoderOptions{Compression: 9}); err == nil {
		t.Fatal("unknown compression accepted")
	}
	if c, err := ParseCompression("zstd"); err != nil || c != CompressZstd || c.String() != "zstd" {
		t.Fatal("ParseCompression")
	}
	if _, err := ParseCompression("lz4"); err == nil {
		t.Fatal("unknown compression name accepted")
	}
}

// Errors are sticky: a stream that failed stays failed.
func TestEncoderStickyError(t *testing.T) {
	enc, _ := NewEncoder(failWriter{}, EncoderOptions{})
	if err := enc.WriteCommit(); err == nil {
		t.Fatal("write to a failing stream succeeded")
	}
	if err := enc.WriteRun(0, make([]byte, PageBytes)); err == nil {
		t.Fatal("second write after failure succeeded")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("link down") }
