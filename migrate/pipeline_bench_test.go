package migrate

import (
	"fmt"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkPipeline is the bulk pass end to end on loopback: RAM encoded
// on N page streams (pinned by StreamOf), carried by a transport, decoded
// into the destination's RAM. MB/s are of guest RAM moved.
func BenchmarkPipeline(b *testing.B) {
	for _, tr := range transports {
		for _, kind := range []string{"random", "half-zero-pages"} {
			for _, c := range []Compression{CompressNone, CompressS2} {
				b.Run(fmt.Sprintf("%s/%s/%s", tr, kind, c), func(b *testing.B) {
					benchPipeline(b, tr, benchRAM(kind), c, 4)
				})
			}
		}
	}
}

// BenchmarkPipelineTCP compares, in one run, the TCP transport's variants
// on incompressible RAM: TLS records batched into large writes or not, and
// the number of page streams (2 cores here). Compare cpu-s/GB, which the
// other work on a shared machine disturbs less than time.
func BenchmarkPipelineTCP(b *testing.B) {
	for _, batched := range []bool{false, true} {
		for _, streams := range []int{2, 4, 8} {
			b.Run(fmt.Sprintf("batched=%v/streams=%d", batched, streams), func(b *testing.B) {
				old := tcpBatching
				tcpBatching = batched
				defer func() { tcpBatching = old }()
				benchPipeline(b, TransportTCP, benchRAM("random"), CompressNone, streams)
			})
		}
	}
}

// cpuTime is the process's user plus system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchPipeline(b *testing.B, tr string, ram []byte, c Compression, streams int) {
	src, dst := connect(b, tr, streams)
	pages := uint64(len(ram) / PageBytes)
	out := make([]byte, len(ram))
	encs := make([]*Encoder, streams)
	for i := range encs {
		encs[i], _ = NewEncoder(src.Pages()[i], EncoderOptions{Compression: c})
	}
	// Receivers run for the whole benchmark; each RoundEnd is one pass.
	passes := make(chan int, streams*1024)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dec := NewDecoder(dst.Pages()[i], pages)
			defer dec.Close()
			for {
				f, err := dec.Next()
				if err == io.EOF {
					return
				}
				if err != nil {
					b.Error(err)
					return
				}
				switch f.Type {
				case FramePages:
					if _, err := dec.ApplyPages(f, out); err != nil {
						b.Error(err)
						return
					}
				case FrameRoundEnd:
					passes <- i
				}
			}
		}()
	}
	b.SetBytes(int64(len(ram)))
	cpuStart, moved := cpuTime(), 0
	defer func() {
		if moved > 0 {
			b.ReportMetric((cpuTime()-cpuStart).Seconds()/(float64(moved)/1e9), "cpu-s/GB")
		}
	}()
	for b.Loop() {
		moved += len(ram)
		var sw sync.WaitGroup
		for i, enc := range encs {
			sw.Add(1)
			go func() {
				defer sw.Done()
				for p := uint64(0); p < pages; p += StreamChunkPages {
					if StreamOf(p, streams) == i {
						if err := enc.WriteRun(p, ram[p*PageBytes:min(p+StreamChunkPages, pages)*PageBytes]); err != nil {
							b.Error(err)
							return
						}
					}
				}
				enc.WriteRoundEnd(0, PageStats{})
			}()
		}
		sw.Wait()
		for range streams { // delivered and applied
			<-passes
		}
	}
	for _, s := range src.Pages() {
		s.CloseWrite()
	}
	wg.Wait()
}
