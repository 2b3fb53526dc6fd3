package migrate

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

const benchRAMBytes = 32 << 20

// benchRAM fills RAM with one of the contents the migration bench uses.
func benchRAM(kind string) []byte {
	ram := make([]byte, benchRAMBytes)
	rng := rand.New(rand.NewPCG(1, 2))
	fillRandom := func(b []byte) {
		for i := 0; i+8 <= len(b); i += 8 {
			v := rng.Uint64()
			b[i], b[i+1], b[i+2], b[i+3], b[i+4], b[i+5], b[i+6], b[i+7] =
				byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
		}
	}
	for p := 0; p < len(ram)/PageBytes; p++ {
		page := ram[p*PageBytes : (p+1)*PageBytes]
		switch kind {
		case "random":
			fillRandom(page)
		case "half-zero-pages": // every other page zero
			if p%2 == 0 {
				fillRandom(page)
			}
		case "half-zero-bytes": // each page half random, half zero
			fillRandom(page[:PageBytes/2])
		case "text":
			for i := range page {
				page[i] = "lorem ipsum dolor sit amet, consectetur "[(i*7+p)%40]
			}
		}
	}
	return ram
}

// BenchmarkEncodeRun is the bulk first pass: MB/s of guest RAM encoded
// (s2 and zstd included), written to io.Discard.
func BenchmarkEncodeRun(b *testing.B) {
	for _, kind := range []string{"random", "half-zero-pages", "half-zero-bytes", "text"} {
		ram := benchRAM(kind)
		for _, c := range []Compression{CompressNone, CompressS2, CompressZstd} {
			b.Run(kind+"/"+c.String(), func(b *testing.B) {
				enc, _ := NewEncoder(io.Discard, EncoderOptions{Compression: c})
				b.SetBytes(int64(len(ram)))
				for b.Loop() {
					if err := enc.WriteRun(0, ram); err != nil {
						b.Fatal(err)
					}
				}
				enc.Flush()
				st := enc.Stats()
				b.ReportMetric(float64(st.WireBytes)/float64(st.Pages*PageBytes), "wire/ram")
			})
		}
	}
}

// BenchmarkEncodePages is a later round: scattered dirty pages with small
// changes (a counter a page), every page in the delta cache.
func BenchmarkEncodePages(b *testing.B) {
	ram := benchRAM("random")
	const dirtyPages = 4096
	pages := make([]uint64, dirtyPages)
	for i := range pages {
		pages[i] = uint64(i * (benchRAMBytes / PageBytes / dirtyPages))
	}
	for _, c := range []struct {
		name string
		opts EncoderOptions
	}{
		{"raw", EncoderOptions{Compression: CompressNone}},
		{"s2", EncoderOptions{Compression: CompressS2}},
		{"auto-delta", EncoderOptions{Compression: CompressAuto, DeltaCacheBytes: DefaultDeltaCacheBytes}},
	} {
		b.Run(c.name, func(b *testing.B) {
			enc, _ := NewEncoder(io.Discard, c.opts)
			enc.WritePages(ram, pages) // warm the cache
			before := enc.Stats()
			b.SetBytes(dirtyPages * PageBytes)
			for b.Loop() {
				for _, p := range pages {
					ram[p*PageBytes+64]++
				}
				if err := enc.WritePages(ram, pages); err != nil {
					b.Fatal(err)
				}
			}
			st := enc.Stats().Sub(before)
			b.ReportMetric(float64(st.WireBytes)/float64(st.Pages*PageBytes), "wire/ram")
		})
	}
}

// BenchmarkDecode is the destination's side: MB/s of guest RAM applied.
func BenchmarkDecode(b *testing.B) {
	for _, c := range []struct {
		kind string
		comp Compression
	}{{"random", CompressNone}, {"random", CompressS2}, {"half-zero-bytes", CompressS2}, {"half-zero-bytes", CompressZstd}, {"text", CompressS2}} {
		b.Run(c.kind+"/"+c.comp.String(), func(b *testing.B) {
			ram := benchRAM(c.kind)
			var wire bytes.Buffer
			enc, _ := NewEncoder(&wire, EncoderOptions{Compression: c.comp})
			enc.WriteRun(0, ram)
			enc.Flush()
			stream := wire.Bytes()
			dst := make([]byte, len(ram))
			b.SetBytes(int64(len(ram)))
			for b.Loop() {
				dec := NewDecoder(bytes.NewReader(stream), uint64(len(ram)/PageBytes))
				for {
					f, err := dec.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if _, err := dec.ApplyPages(f, dst); err != nil {
						b.Fatal(err)
					}
				}
				dec.Close()
			}
		})
	}
}

// BenchmarkWriteRunFile: the source's bulk pass over one stream without
// the network: pread of each chunk from a memfd, the digest checksum, the
// frames (compression auto) written to io.Discard.
func BenchmarkWriteRunFile(b *testing.B) {
	for _, kind := range []string{"random", "half-zero-pages"} {
		b.Run(kind, func(b *testing.B) {
			mem, err := NewMemory("bench-runfile", benchRAMBytes)
			if err != nil {
				b.Fatal(err)
			}
			defer mem.Close()
			copy(mem.Bytes(), benchRAM(kind))
			fd := ramFile(mem.Bytes())
			defer closeRAMFile(fd)
			enc, _ := NewEncoder(io.Discard, EncoderOptions{Compression: CompressAuto})
			b.SetBytes(benchRAMBytes)
			cpuStart, moved := cpuTime(), 0
			for b.Loop() {
				for c := 0; c*chunkPages < mem.Pages(); c++ {
					if _, err := enc.WriteRunFile(fd, uint64(c*chunkPages), chunkPages, nil); err != nil {
						b.Fatal(err)
					}
				}
				moved += benchRAMBytes
			}
			b.ReportMetric((cpuTime()-cpuStart).Seconds()/(float64(moved)/1e9), "cpu-s/GB")
		})
	}
}
