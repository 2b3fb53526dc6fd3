package migrate

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkMigrateBulk migrates an idle guest of random (incompressible)
// pages over TCP through the whole engine (tracker, rounds, digest,
// two-phase commit) into a fresh memfd each time, the guest moving back and
// forth. Each variant switches one of the engine's data-path choices, so
// that a change is measured against the state before it in the same run.
// MB/s are of guest RAM; cpu-s/GB is the process's CPU (both sides) per GB
// of RAM, steadier than time on a shared machine.
func BenchmarkMigrateBulk(b *testing.B) {
	const ramBytes = 256 << 20
	variants := []struct {
		name              string
		destFile, srcFile bool
		chunkSums         bool // the destination's digest from what it wrote
		zeroFillPages     int  // maxZeroFillPages
	}{
		{"mapped", false, false, false, 4},
		{"dest-file", true, false, false, 4},
		{"both-file", true, true, false, 4},
		{"chunk-sums", true, true, true, 4},
		{"chunk-sums-nofill", true, true, true, 0},
	}
	for _, content := range []string{"random", "halfzero"} {
		for _, v := range variants {
			b.Run(content+"/"+v.name, func(b *testing.B) {
				oldDest, oldSrc, oldSums, oldFill := destRAMByFile, sourceRAMByFile, destChunkSums, maxZeroFillPages
				destRAMByFile, sourceRAMByFile, destChunkSums, maxZeroFillPages = v.destFile, v.srcFile, v.chunkSums, v.zeroFillPages
				defer func() {
					destRAMByFile, sourceRAMByFile, destChunkSums, maxZeroFillPages = oldDest, oldSrc, oldSums, oldFill
				}()
				g, err := NewSynthGuest("bench-guest", SynthConfig{RAMBytes: ramBytes, Pattern: "uniform", Content: content, Seed: 3})
				if err != nil {
					b.Fatal(err)
				}
				defer func() { g.Close() }()
				g.Resume()
				p := newTestPKI(b)
				b.SetBytes(ramBytes)
				cpuStart, moved := cpuTime(), 0
				for b.Loop() {
					next := benchMigrateOnce(b, p, g, TransportTCP, 4)
					g.Close()
					g = next
					moved += ramBytes
				}
				b.ReportMetric((cpuTime()-cpuStart).Seconds()/(float64(moved)/1e9), "cpu-s/GB")
			})
		}
	}
}

// benchMigrateOnce moves g to a new destination and returns its guest.
func benchMigrateOnce(b *testing.B, p testPKI, g *SynthGuest, tr string, streams int) *SynthGuest {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Listen(tr, "127.0.0.1:0", p.dst)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	var (
		mem  *Memory
		next *SynthGuest
		derr error
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, derr = Receive(ctx, l, DestOptions{
			PrepareRAM: func(n int64) ([]byte, error) {
				m, err := NewMemory("bench-incoming", n)
				mem = m
				if err != nil {
					return nil, err
				}
				return m.Bytes(), nil
			},
			Discard: func() { mem.Close() },
			Resume: func(state []byte) error {
				g, err := RestoreSynthGuest(mem, state)
				if err != nil {
					return err
				}
				next = g
				return g.Resume()
			},
		})
	}()
	conn, err := Dial(ctx, tr, l.Addr().String(), "localhost", p.src, streams)
	if err != nil {
		b.Fatal(err)
	}
	tracker, err := g.NewTracker()
	if err != nil {
		b.Fatal(err)
	}
	_, err = Migrate(ctx, g, tracker, conn, SourceOptions{Compression: CompressAuto})
	g.CloseTracker(tracker)
	wg.Wait()
	if err != nil || derr != nil || next == nil {
		b.Fatal(fmt.Errorf("source: %v; destination: %v", err, derr))
	}
	return next
}
