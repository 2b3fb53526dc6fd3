package migrate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/klauspost/compress/s2"
	"golang.org/x/sys/unix"
)

// sparseSource fills ram with a mix the sparse frame exists for: zero runs
// of 1 to 6 pages between data pages, the data random (incompressible) or
// text (compressible), so zero runs both shorter and longer than
// maxZeroFillPages occur.
func sparseSource(rng *rand.Rand, ram []byte, compressible bool) {
	pages := len(ram) / PageBytes
	for p := 0; p < pages; {
		page := ram[p*PageBytes : (p+1)*PageBytes]
		for i := range page {
			if compressible {
				page[i] = "paddock sparse "[(i+p)%15]
			} else {
				page[i] = byte(rng.Uint32())
			}
		}
		p += 1 + rng.IntN(6)
	}
}

// TestSparseFrameRoundTrip: pages whose zero and data pages alternate go
// as EncSparse frames and arrive intact, through the mapping and through
// the RAM file, on fresh RAM (zero pages skipped) and on RAM holding other
// contents (zero pages must be written).
func TestSparseFrameRoundTrip(t *testing.T) {
	const ramPages = 3*MaxPagesPerFrame + 37 // a short last frame
	const ramBytes = ramPages * PageBytes
	for _, comp := range []Compression{CompressNone, CompressS2, CompressAuto, CompressZstd} {
		for _, compressible := range []bool{false, true} {
			// file-fresh-fill: short zero gaps written as zeros (the
			// setting before maxZeroFillPages became 0).
			for _, mode := range []string{"mapping-fresh", "mapping-dirty", "file-fresh", "file-dirty", "file-fresh-fill"} {
				t.Run(fmt.Sprintf("%s/compressible=%v/%s", comp, compressible, mode), func(t *testing.T) {
					if mode == "file-fresh-fill" {
						old := maxZeroFillPages
						maxZeroFillPages = 4
						defer func() { maxZeroFillPages = old }()
					}
					rng := rand.New(rand.NewPCG(5, 6))
					src := make([]byte, ramBytes)
					sparseSource(rng, src, compressible)
					dst, err := NewMemory("test-sparse", ramBytes)
					if err != nil {
						t.Fatal(err)
					}
					defer dst.Close()
					fresh := mode == "mapping-fresh" || mode == "file-fresh" || mode == "file-fresh-fill"
					if !fresh {
						for i := range dst.Bytes() {
							dst.Bytes()[i] = 0xA5 // every zero page must be written
						}
					}
					var wire bytes.Buffer
					enc, err := NewEncoder(&wire, EncoderOptions{Compression: comp})
					if err != nil {
						t.Fatal(err)
					}
					if err := enc.WriteRun(0, src); err != nil {
						t.Fatal(err)
					}
					if err := enc.Flush(); err != nil {
						t.Fatal(err)
					}
					est := enc.Stats()
					dec := NewDecoder(&wire, ramPages)
					defer dec.Close()
					dec.SetSkipZero(fresh)
					if strings.HasPrefix(mode, "file-") {
						fd := ramFile(dst.Bytes())
						if fd < 0 {
							t.Fatal("no memfd under the Memory")
						}
						defer closeRAMFile(fd)
						dec.SetRAMFile(fd)
					}
					touched := NewBitmap(ramPages)
					dec.SetTouched(touched)
					var got PageStats
					frames, sparse, inner := 0, 0, map[Encoding]int{}
					for {
						f, err := dec.Next()
						if err != nil {
							break
						}
						frames++
						if f.Encoding == EncSparse {
							sparse++
							inner[Encoding(f.Payload[(f.Count+7)/8])]++
						}
						s, err := dec.ApplyPages(f, dst.Bytes())
						if err != nil {
							t.Fatal(err)
						}
						got.Pages += s.Pages
						got.ZeroPages += s.ZeroPages
					}
					if frames != 4 || sparse != 4 {
						t.Fatalf("%d frames, %d sparse; want 4 sparse frames", frames, sparse)
					}
					if compressible && comp != CompressNone && inner[EncRaw] != 0 {
						t.Fatalf("compressible data sent raw: %v", inner)
					}
					if !compressible && inner[EncRaw] != 4 {
						t.Fatalf("random data not sent raw: %v", inner)
					}
					if !bytes.Equal(dst.Bytes(), src) {
						for p := range ramPages {
							if !bytes.Equal(dst.Page(p), src[p*PageBytes:(p+1)*PageBytes]) {
								t.Fatalf("page %d differs", p)
							}
						}
					}
					if strings.HasPrefix(mode, "file-") {
						// Each frame is a whole chunk: the decoder
						// vouches for its checksum, which must be RAM's.
						for c := 0; c*chunkPages < ramPages; c++ {
							crc, ok := dec.ChunkSum(c)
							from, to := c*chunkPages, min((c+1)*chunkPages, ramPages)
							if want := crc32.Checksum(dst.Bytes()[from*PageBytes:to*PageBytes], castagnoli); !ok || crc != want {
								t.Fatalf("chunk %d: checksum %#x (%v), RAM %#x", c, crc, ok, want)
							}
						}
					}
					if got.Pages != ramPages || got.ZeroPages != est.ZeroPages || est.Pages != ramPages {
						t.Fatalf("decoder counted %d pages, %d zero; encoder %d, %d", got.Pages, got.ZeroPages, est.Pages, est.ZeroPages)
					}
					for p := range ramPages {
						isZero := bytes.Equal(src[p*PageBytes:(p+1)*PageBytes], zeroPage[:])
						if !isZero && !touched.Test(p) {
							t.Fatalf("data page %d not marked touched", p)
						}
						if isZero && !fresh && !touched.Test(p) {
							t.Fatalf("zero page %d written over old contents but not marked touched", p)
						}
					}
				})
			}
		}
	}
}

// TestSparseFrameRejects: forged sparse frames are refused with
// ErrCorruptFrame and write nothing.
func TestSparseFrameRejects(t *testing.T) {
	const ramPages = 64
	page := bytes.Repeat([]byte{7}, PageBytes)
	sparse := func(bitmap []byte, inner Encoding, data ...[]byte) []byte {
		return append(append(append([]byte{}, bitmap...), byte(inner)), bytes.Join(data, nil)...)
	}
	s2Of := func(n int) []byte { return s2.Encode(nil, bytes.Repeat([]byte("xy"), n/2)) }
	cases := []struct {
		name   string
		index  uint64
		count  uint32
		stream []byte
	}{
		{"no prefix", 0, 8, []byte{1}},
		{"bits past the end", 0, 3, sparse([]byte{0x09}, EncRaw, page, page)},
		{"raw short", 0, 8, sparse([]byte{0x03}, EncRaw, page)},
		{"raw long", 0, 8, sparse([]byte{0x01}, EncRaw, page, page)},
		{"inner zero", 0, 8, sparse([]byte{0x01}, EncZero)},
		{"inner sparse", 0, 8, sparse([]byte{0x01}, EncSparse, page)},
		{"inner batch", 0, 8, sparse([]byte{0x01}, EncBatch, page)},
		{"inner delta", 0, 8, sparse([]byte{0x01}, EncDelta, page)},
		{"compressed without data pages", 0, 8, sparse([]byte{0x00}, EncS2, s2Of(PageBytes))},
		{"s2 of the wrong size", 0, 8, sparse([]byte{0x03}, EncS2, s2Of(PageBytes))},
		{"s2 garbage", 0, 8, sparse([]byte{0x01}, EncS2, []byte{0x80, 0x20, 0xFF, 0xFF})},
		{"run beyond RAM", ramPages - 4, 8, sparse([]byte{0x01}, EncRaw, page)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dec := NewDecoder(bytes.NewReader(frameBytes(FramePages, EncSparse, 0, c.index, c.count, c.stream)), ramPages)
			defer dec.Close()
			ram := make([]byte, ramPages*PageBytes)
			f, err := dec.Next()
			if err == nil {
				_, err = dec.ApplyPages(f, ram)
			}
			if !errors.Is(err, ErrCorruptFrame) {
				t.Fatalf("got %v, want a corrupt frame", err)
			}
			if !bytes.Equal(ram, make([]byte, len(ram))) {
				t.Fatal("a refused frame wrote to RAM")
			}
		})
	}
}

// TestSparseFrameMutations: sparse frames with random changes to their
// index, count and payload, checksums recomputed so that the decoder's
// deeper checks are reached, are applied through the RAM file (the
// pwritev path, which FuzzDecodeFrame does not take). Each must be
// applied or refused with ErrCorruptFrame, never panic, and never write
// past the RAM: the memfd keeps its size.
func TestSparseFrameMutations(t *testing.T) {
	const ramPages = 64
	const iterations = 5000
	rng := rand.New(rand.NewPCG(11, 12))
	src := make([]byte, 48*PageBytes) // inside the 64 pages of RAM from page 4
	sparseSource(rng, src, false)
	text := make([]byte, len(src))
	sparseSource(rng, text, true)
	var seeds [][]byte // whole frames
	for _, c := range []struct {
		comp Compression
		ram  []byte
	}{{CompressNone, src}, {CompressS2, text}, {CompressZstd, text}} {
		var wire bytes.Buffer
		e, _ := NewEncoder(&wire, EncoderOptions{Compression: c.comp})
		if err := e.WriteRun(4, c.ram); err != nil {
			t.Fatal(err)
		}
		e.Flush()
		dec := NewDecoder(&wire, ramPages)
		for {
			f, err := dec.Next()
			if err != nil {
				break
			}
			if f.Encoding != EncSparse {
				t.Fatalf("seed frame in %s, want sparse", f.Encoding)
			}
			seeds = append(seeds, frameBytes(f.Type, f.Encoding, 0, f.Index, f.Count, bytes.Clone(f.Payload)))
		}
		dec.Close()
	}
	if len(seeds) != 3 {
		t.Fatalf("%d seed frames, want 3", len(seeds))
	}
	dst, err := NewMemory("test-sparse-mut", ramPages*PageBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	fd := ramFile(dst.Bytes())
	if fd < 0 {
		t.Fatal("no memfd under the Memory")
	}
	defer closeRAMFile(fd)
	applied := 0
	for i := range iterations {
		fr := bytes.Clone(seeds[rng.IntN(len(seeds))])
		payload := fr[frameHeaderBytes:]
		switch rng.IntN(5) {
		case 0: // index
			binary.LittleEndian.PutUint64(fr[8:], uint64(rng.IntN(2*ramPages)))
		case 1: // count
			binary.LittleEndian.PutUint32(fr[16:], uint32(rng.IntN(MaxPagesPerFrame+2)))
		case 2: // truncate the payload
			payload = payload[:rng.IntN(len(payload)+1)]
		}
		for range rng.IntN(4) { // flip bytes
			if len(payload) > 0 {
				payload[rng.IntN(len(payload))] ^= byte(1 + rng.IntN(255))
			}
		}
		fr = append(fr[:frameHeaderBytes], payload...)
		binary.LittleEndian.PutUint32(fr[20:], uint32(len(payload)))
		binary.LittleEndian.PutUint32(fr[24:], crc32.Checksum(payload, castagnoli))
		binary.LittleEndian.PutUint32(fr[28:], crc32.Checksum(fr[:28], castagnoli))
		dec := NewDecoder(bytes.NewReader(fr), ramPages)
		dec.SetRAMFile(fd)
		dec.SetSkipZero(i%2 == 0)
		f, err := dec.Next()
		if err == nil {
			_, err = dec.ApplyPages(f, dst.Bytes())
		}
		dec.Close()
		if err == nil {
			applied++
		} else if !errors.Is(err, ErrCorruptFrame) {
			t.Fatalf("iteration %d: %v, not a corrupt frame", i, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != ramPages*PageBytes {
			t.Fatalf("iteration %d: RAM file of %d bytes, want %d", i, st.Size, ramPages*PageBytes)
		}
	}
	t.Logf("%d of %d mutated frames applied, the rest refused", applied, iterations)
}
