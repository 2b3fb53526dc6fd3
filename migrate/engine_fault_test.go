package migrate

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// faultConn corrupts or truncates what the source writes on its first
// page stream once afterBytes have gone through.
type faultConn struct {
	Conn
	pages []Stream
}

type faultStream struct {
	Stream
	afterBytes int64
	mode       string // "flip" or "truncate"
	written    atomic.Int64
	once       sync.Once
}

func (s *faultStream) Write(p []byte) (int, error) {
	n := s.written.Add(int64(len(p)))
	if n-int64(len(p)) < s.afterBytes && n >= s.afterBytes {
		off := s.afterBytes - (n - int64(len(p)))
		switch s.mode {
		case "flip":
			q := append([]byte(nil), p...)
			q[off] ^= 0x40
			return s.Stream.Write(q)
		case "truncate":
			s.Stream.Write(p[:off])
			s.once.Do(func() { s.Stream.CloseWrite() })
			return len(p), nil // the sender does not notice
		}
	}
	if s.mode == "truncate" && n > s.afterBytes {
		return len(p), nil
	}
	return s.Stream.Write(p)
}

func (c *faultConn) Pages() []Stream { return c.pages }

func TestMigrateForgedOrTruncatedFrame(t *testing.T) {
	for _, tr := range transports {
		for _, mode := range []string{"flip", "truncate"} {
			// An offset inside the first frame header, and one deep in
			// the stream.
			for _, after := range []int64{5, 3 << 20} {
				t.Run(tr+"/"+mode, func(t *testing.T) {
					src := newSynthForTest(t, SynthConfig{RAMBytes: 8 << 20, DirtyBytesPerSecond: 1 << 20, Seed: 5})
					m := newMigration(t, tr, src)
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					var dstErr error
					var wg sync.WaitGroup
					wg.Add(1)
					go func() {
						defer wg.Done()
						_, dstErr = Receive(ctx, m.l, m.destOptions())
					}()
					conn, err := m.dial(ctx, 2)
					if err != nil {
						t.Fatal(err)
					}
					fs := &faultStream{Stream: conn.Pages()[0], afterBytes: after, mode: mode}
					fc := &faultConn{Conn: conn, pages: []Stream{fs, conn.Pages()[1]}}
					tracker, err := src.NewTracker()
					if err != nil {
						t.Fatal(err)
					}
					st, err := Migrate(ctx, src, tracker, fc, SourceOptions{Compression: CompressAuto,
						Redial: func(ctx context.Context) (Conn, error) { return m.dial(ctx, 1) }})
					src.CloseTracker(tracker)
					wg.Wait()
					t.Logf("source: %v; destination: %v", err, dstErr)
					if err == nil || st.Status != StatusFailed {
						t.Fatalf("migration with a %s frame at byte %d: %v, status %s", mode, after, err, st.Status)
					}
					if !errors.Is(dstErr, ErrNotCommitted) {
						t.Fatalf("destination: %v", dstErr)
					}
					if srcRun, dstRun := m.runningSides(); !srcRun || dstRun {
						t.Fatalf("running: source %v destination %v", srcRun, dstRun)
					}
					if c := src.Check(); !c.OK() {
						t.Fatalf("source: %+v", c)
					}
				})
			}
		}
	}
}

// TestMigrateFasterThanTheLink: a guest that dirties four times what the
// (rate-limited) link carries either converges by auto-converge or, without
// it, is cancelled at its timeout and keeps running on the source.
func TestMigrateFasterThanTheLink(t *testing.T) {
	cfg := SynthConfig{RAMBytes: 4 << 20, DirtyBytesPerSecond: 32 << 20, Seed: 11}
	const linkBytesPerSecond = 8 << 20
	t.Run("auto-converge", func(t *testing.T) {
		src := newSynthForTest(t, cfg)
		m := newMigration(t, TransportTCP, src)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		res := m.run(ctx, 2, SourceOptions{Compression: CompressNone, BandwidthBytesPerSecond: linkBytesPerSecond,
			DowntimeLimit: 300 * time.Millisecond}, m.destOptions())
		t.Logf("source: %v (%s, %d rounds, throttle %d%%)", res.err, res.stats.Status, res.stats.Rounds, res.stats.ThrottlePercent)
		if res.err == nil {
			if res.stats.ThrottlePercent == 0 {
				t.Fatalf("converged without throttling a guest dirtying 4x the link: %+v", res.stats)
			}
			if c := m.dst.Check(); !c.OK() {
				t.Fatalf("destination: %+v", c)
			}
			return
		}
		if res.stats.Status != StatusCancelled || !src.Running() || src.ThrottlePercent() != 0 {
			t.Fatalf("neither converged nor cancelled cleanly: %+v, running %v", res.stats, src.Running())
		}
	})
	t.Run("timeout", func(t *testing.T) {
		src := newSynthForTest(t, cfg)
		m := newMigration(t, TransportTCP, src)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res := m.run(ctx, 2, SourceOptions{Compression: CompressNone, BandwidthBytesPerSecond: linkBytesPerSecond,
			DowntimeLimit: time.Millisecond, NoAutoConverge: true, Timeout: 2 * time.Second}, m.destOptions())
		if res.err == nil || res.stats.Status != StatusCancelled {
			t.Fatalf("want a cancel at the timeout: %v, %+v", res.err, res.stats)
		}
		if !errors.Is(res.dstErr, ErrNotCommitted) {
			t.Fatalf("destination: %v", res.dstErr)
		}
		if srcRun, dstRun := m.runningSides(); !srcRun || dstRun {
			t.Fatalf("running: source %v destination %v", srcRun, dstRun)
		}
		if c := src.Check(); !c.OK() {
			t.Fatalf("source: %+v", c)
		}
	})
}

// TestMigrateDigestCatchesWrongPage: with DestOptions.VerifyRAM, a page
// that is wrong in the destination's RAM although every frame checked out
// fails the digest check at the switchover, also when it changed after its
// chunk was hashed (flipped by a hook in the last round, while its chunk
// went in round 0 only, as a stray write would leave it): the migration
// fails, the destination discards, and the guest runs on the source,
// unchanged. The destination's digest must then be of its RAM as it is at
// the pause, not of what arrived.
func TestMigrateDigestCatchesWrongPage(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			src := newSynthForTest(t, SynthConfig{RAMBytes: 8 << 20, Seed: 9}) // idle: page 0 is sent once
			m := newMigration(t, tr, src)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dopts := m.destOptions()
			dopts.VerifyRAM = true
			var roundEnds atomic.Int64
			dopts.FaultHook = func(point string, stream int) {
				// Page 0 is in chunk 0, which stream 0 carries and
				// hashes in round 0; from the second round end on
				// it is not sent again.
				if point == "stream-round-end" && stream == 0 && roundEnds.Add(1) == 2 {
					m.mu.Lock()
					m.dstMem.Page(0)[0] ^= 1
					m.mu.Unlock()
				}
			}
			res := m.run(ctx, 2, SourceOptions{Compression: CompressAuto}, dopts)
			t.Logf("source: %v; destination: %v", res.err, res.dstErr)
			if roundEnds.Load() < 2 {
				t.Fatalf("stream 0 ended %d rounds; the page was never flipped", roundEnds.Load())
			}
			if res.err == nil || res.stats.Status != StatusFailed {
				t.Fatalf("a wrong page in the destination's RAM: %v, status %s", res.err, res.stats.Status)
			}
			// The source may see the teardown before the error frame
			// (QUIC): the destination's own error says why.
			if !errors.Is(res.dstErr, ErrNotCommitted) || !strings.Contains(res.dstErr.Error(), "digest differs") {
				t.Fatalf("destination: %v", res.dstErr)
			}
			if srcRun, dstRun := m.runningSides(); !srcRun || dstRun {
				t.Fatalf("running: source %v destination %v", srcRun, dstRun)
			}
			if c := src.Check(); !c.OK() {
				t.Fatalf("source: %+v", c)
			}
		})
	}
}

// TestMigrateDigestCatchesUntrackedWrite: with SourceOptions.VerifyRAM, a
// page of the source changed without the tracker seeing it (written with
// pwrite on the memfd once the guest is paused, after its chunk was sent
// and hashed in round 0) makes the digests differ: the migration fails and
// the guest runs on the source.
func TestMigrateDigestCatchesUntrackedWrite(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			src := newSynthForTest(t, SynthConfig{RAMBytes: 8 << 20, Seed: 9}) // idle
			m := newMigration(t, tr, src)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			const page = 300 // chunk 1, away from the guest's own records
			fd := src.Memory().Fd()
			var orig [1]byte
			flip := func() {
				if _, err := unix.Pread(fd, orig[:], page*PageBytes); err != nil {
					t.Error(err)
					return
				}
				b := [1]byte{orig[0] ^ 0x80}
				if _, err := unix.Pwrite(fd, b[:], page*PageBytes); err != nil {
					t.Error(err)
				}
			}
			flipped := false
			opts := SourceOptions{Compression: CompressAuto, VerifyRAM: true, FaultHook: func(point string, round int) {
				if point == "paused" {
					flip()
					flipped = true
				}
			}}
			res := m.run(ctx, 2, opts, m.destOptions())
			t.Logf("source: %v; destination: %v", res.err, res.dstErr)
			if !flipped {
				t.Fatal("the guest was never paused")
			}
			if res.err == nil || res.stats.Status != StatusFailed {
				t.Fatalf("an untracked write at the source: %v, status %s", res.err, res.stats.Status)
			}
			if !errors.Is(res.dstErr, ErrNotCommitted) || !strings.Contains(res.dstErr.Error(), "digest differs") {
				t.Fatalf("destination: %v", res.dstErr)
			}
			if srcRun, dstRun := m.runningSides(); !srcRun || dstRun {
				t.Fatalf("running: source %v destination %v", srcRun, dstRun)
			}
			// Put the byte back: the guest's own check covers the rest.
			if _, err := unix.Pwrite(fd, orig[:], page*PageBytes); err != nil {
				t.Fatal(err)
			}
			if c := src.Check(); !c.OK() {
				t.Fatalf("source: %+v", c)
			}
		})
	}
}
