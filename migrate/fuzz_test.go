package migrate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

const fuzzRAMPages = 64

// seedStreams are valid streams that cover every frame type and encoding,
// the starting points the fuzzer mutates.
func seedStreams() map[string][]byte {
	rng := rand.New(rand.NewPCG(9, 9))
	ram := make([]byte, fuzzRAMPages*PageBytes)
	fillRAM(rng, ram)
	out := map[string][]byte{}
	stream := func(name string, opts EncoderOptions, write func(e *Encoder)) {
		var b bytes.Buffer
		e, _ := NewEncoder(&b, opts)
		write(e)
		e.Flush()
		out[name] = b.Bytes()
	}
	stream("control", EncoderOptions{}, func(e *Encoder) {
		e.WriteHello(Hello{RAMBytes: fuzzRAMPages * PageBytes, PageBytes: PageBytes, PageStreams: 2})
		e.WriteRoundStart(1, RoundStart{DirtyPages: 3})
		e.WriteRoundEnd(1, PageStats{Pages: 3})
		e.WriteDeviceState([]byte("registers"))
		e.WriteDigest(Digest{ChunkBytes: DigestChunkBytes, Chunks: 1})
		e.WriteCommit()
		e.WriteAck(1)
		e.WriteError(ErrorInfo{Code: 1, Message: "no"})
	})
	for _, c := range []Compression{CompressNone, CompressS2, CompressZstd} {
		stream("run-"+c.String(), EncoderOptions{Compression: c}, func(e *Encoder) {
			e.WriteRun(0, ram[:2*PageBytes])
		})
	}
	// Sparse frames: zero and data pages alternate (raw data), and the
	// same with compressible data (s2 and zstd inside the frame).
	sparse := make([]byte, 12*PageBytes)
	text := make([]byte, 12*PageBytes)
	for p := 1; p < 12; p += 2 {
		copy(sparse[p*PageBytes:(p+1)*PageBytes], ram[p*PageBytes:])
		copy(text[p*PageBytes:(p+1)*PageBytes], bytes.Repeat([]byte("fuzz "), PageBytes/5+1))
	}
	stream("sparse-raw", EncoderOptions{Compression: CompressAuto}, func(e *Encoder) { e.WriteRun(3, sparse) })
	for _, c := range []Compression{CompressS2, CompressZstd} {
		stream("sparse-"+c.String(), EncoderOptions{Compression: c}, func(e *Encoder) { e.WriteRun(3, text) })
	}
	stream("batch-auto", EncoderOptions{Compression: CompressAuto, DeltaCacheBytes: 1 << 20}, func(e *Encoder) {
		pages := []uint64{1, 5, 40}
		e.WritePages(ram, pages)
		for _, p := range pages {
			ram[p*PageBytes+17]++
		}
		e.WritePages(ram, pages) // deltas
	})
	return out
}

// FuzzDecodeFrame feeds anything to the decoder: it must return an error
// or frames, never panic, and never fail with an error of the wrong kind.
// The input's length picks the decoder's mode, so every seed runs in each
// (append bytes to change it): fresh RAM that skips zero frames, or RAM
// holding data with page changes recorded, in which case the digest kept
// from them must be RAM's after every frame applied without error.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range seedStreams() {
		// Each seed in every mode: a trailing byte or two is a frame
		// header cut short, after the seed's frames.
		f.Add(s)
		f.Add(append(bytes.Clone(s), 0))
		f.Add(append(bytes.Clone(s), 0, 0))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := NewDecoder(bytes.NewReader(data), fuzzRAMPages)
		defer dec.Close()
		ram := make([]byte, fuzzRAMPages*PageBytes)
		dec.SetTouched(NewBitmap(fuzzRAMPages))
		var kept *RAMDigest
		switch len(data) % 3 {
		case 1:
			dec.SetSkipZero(true)
		case 2:
			for i := range ram {
				ram[i] = byte(i*7 + i>>12)
			}
			kept, _ = NewRAMDigest(int64(len(ram)))
			kept.UpdateAll(ram, 1)
			dec.SetPageChanges(true)
		}
		var ds DeviceState
		for range 64 {
			fr, err := dec.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrCorruptFrame) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
			}
			switch fr.Type {
			case FramePages:
				if _, err := dec.ApplyPages(fr, ram); err != nil {
					if !errors.Is(err, ErrCorruptFrame) {
						t.Fatalf("apply: %v", err)
					}
					kept = nil // RAM may hold part of the frame, unrecorded
				}
				if kept != nil {
					dec.TakePageChanges(kept.ApplyChunkChange)
					fresh, _ := NewRAMDigest(int64(len(ram)))
					fresh.UpdateAll(ram, 1)
					if c := kept.FirstDifference(fresh); c >= 0 {
						t.Fatalf("chunk %d: the digest kept from page changes is not RAM's", c)
					}
				}
			case FrameHello:
				fr.Hello()
			case FrameRoundStart:
				fr.RoundStart()
			case FrameRoundEnd:
				fr.RoundStats()
			case FrameDigest:
				fr.Digest()
			case FrameError:
				fr.ErrorInfo()
			case FrameDeviceState:
				ds.Add(fr)
			}
		}
	})
}

// TestWriteFuzzCorpus writes the seeds into testdata/fuzz, the committed
// corpus: MIGRATE_WRITE_FUZZ_CORPUS=1 go test -run TestWriteFuzzCorpus.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("MIGRATE_WRITE_FUZZ_CORPUS") == "" {
		t.Skip("set MIGRATE_WRITE_FUZZ_CORPUS=1 to rewrite testdata/fuzz")
	}
	write := func(target, name string, args ...[]byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.WriteString("go test fuzz v1\n")
		for _, a := range args {
			fmt.Fprintf(&b, "[]byte(%q)\n", a)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, s := range seedStreams() {
		write("FuzzDecodeFrame", "seed-"+name, s)
	}
	rng := rand.New(rand.NewPCG(2, 3))
	for i := range 4 {
		old := randomPage(rng)
		if i%2 == 0 {
			old = make([]byte, PageBytes)
		}
		cur := mutate(rng, old)
		d, _ := appendDelta(nil, old, cur, 2*PageBytes)
		write("FuzzXBZRLE", fmt.Sprintf("seed-%d", i), old[:256], cur[:256], d)
	}
}
