package migrate

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// migration is one source guest and one destination on loopback.
type migration struct {
	t        *testing.T
	tr       string
	src      *SynthGuest
	l        Listener
	mu       sync.Mutex
	dst      *SynthGuest
	dstMem   *Memory
	dstSum   [32]byte // RAM as received, before the destination resumed
	discards int
	// hugePages: the destination receives into NewHugeMemory.
	hugePages bool
}

func newSynthForTest(t *testing.T, cfg SynthConfig) *SynthGuest {
	t.Helper()
	if cfg.Pattern == "" {
		cfg.Pattern = "uniform"
	}
	if cfg.Content == "" {
		cfg.Content = "random"
	}
	g, err := NewSynthGuest("test-guest", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	if err := g.Resume(); err != nil {
		t.Fatal(err)
	}
	return g
}

func newMigration(t *testing.T, tr string, src *SynthGuest) *migration {
	p := newTestPKI(t)
	l, err := Listen(tr, "127.0.0.1:0", p.dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	m := &migration{t: t, tr: tr, src: src, l: l}
	t.Cleanup(func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.dst != nil {
			m.dst.Close()
		} else if m.dstMem != nil {
			m.dstMem.Close()
		}
	})
	return m
}

func (m *migration) dial(ctx context.Context, streams int) (Conn, error) {
	p := newTestPKI(m.t)
	return Dial(ctx, m.tr, m.l.Addr().String(), "localhost", p.src, streams)
}

func (m *migration) destOptions() DestOptions {
	return DestOptions{
		PrepareRAM: func(ramBytes int64) ([]byte, error) {
			newMem := NewMemory
			if m.hugePages {
				newMem = NewHugeMemory
			}
			mem, err := newMem("test-incoming", ramBytes)
			if err != nil {
				return nil, err
			}
			m.mu.Lock()
			m.dstMem = mem
			m.mu.Unlock()
			return mem.Bytes(), nil
		},
		Discard: func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.discards++
			m.dstMem.Close()
			m.dstMem = nil
		},
		Resume: func(state []byte) error {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.dstSum = sha256.Sum256(m.dstMem.Bytes())
			g, err := RestoreSynthGuest(m.dstMem, state)
			if err != nil {
				return err
			}
			m.dst = g
			return g.Resume()
		},
		InDoubtTimeout: 5 * time.Second,
	}
}

type result struct {
	stats   *Stats
	err     error
	dstErr  error
	dstStat *DestStats
}

// run migrates with opts (Redial set) and waits for both sides.
func (m *migration) run(ctx context.Context, streams int, opts SourceOptions, dopts DestOptions) result {
	var res result
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		res.dstStat, res.dstErr = Receive(ctx, m.l, dopts)
	}()
	conn, err := m.dial(ctx, streams)
	if err != nil {
		m.t.Fatal(err)
	}
	opts.Redial = func(ctx context.Context) (Conn, error) { return m.dial(ctx, 1) }
	tr, err := m.src.NewTracker()
	if err != nil {
		m.t.Fatal(err)
	}
	res.stats, res.err = Migrate(ctx, m.src, tr, conn, opts)
	m.src.CloseTracker(tr)
	wg.Wait()
	return res
}

// runningSides counts the sides whose guest runs.
func (m *migration) runningSides() (src, dst bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.src.Running(), m.dst != nil && m.dst.Running()
}

func TestMigrateSynthGuest(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			src := newSynthForTest(t, SynthConfig{RAMBytes: 64 << 20, DirtyBytesPerSecond: 20 << 20, Pattern: "hotset", Content: "halfzero", Seed: 7})
			m := newMigration(t, tr, src)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var progress int
			res := m.run(ctx, 4, SourceOptions{Compression: CompressAuto, DowntimeLimit: 300 * time.Millisecond,
				Progress: func(Progress) { progress++ }, ProgressInterval: 10 * time.Millisecond}, m.destOptions())
			if res.err != nil || res.dstErr != nil {
				t.Fatalf("source: %v; destination: %v", res.err, res.dstErr)
			}
			st := res.stats
			if st.Status != StatusCompleted || st.Rounds < 2 || st.TransferredBytes == 0 || st.DuplicatePages == 0 || progress == 0 {
				t.Fatalf("stats %+v, %d progress calls", st, progress)
			}
			srcRun, dstRun := m.runningSides()
			if srcRun || !dstRun {
				t.Fatalf("running: source %v destination %v", srcRun, dstRun)
			}
			// The source is paused for good: its RAM is the RAM at pause.
			if sha256.Sum256(src.RAM()) != m.dstSum {
				t.Fatal("destination RAM differs from the source's at pause")
			}
			before := m.dst.Writes()
			if c := m.dst.Check(); !c.OK() {
				t.Fatalf("destination check: %+v", c)
			}
			if c := src.Check(); !c.OK() {
				t.Fatalf("source check: %+v", c)
			}
			deadline := time.Now().Add(10 * time.Second)
			for m.dst.Writes() == before && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if m.dst.Writes() == before {
				t.Fatal("the workload does not continue on the destination")
			}
			if c := m.dst.Check(); !c.OK() {
				t.Fatalf("destination check after more writes: %+v", c)
			}
		})
	}
}

// TestMigrateCutAnywhere cuts the connection at each named point of the
// source and the destination: the guest must run on exactly one side, and
// on the source with unchanged memory when the cut came before the commit.
func TestMigrateCutAnywhere(t *testing.T) {
	points := []struct {
		side, point string
		round       int
		committed   bool
	}{
		{"src", "hello", 0, false},
		{"src", "round", 0, false},
		{"src", "round", 1, false},
		{"src", "paused", -1, false},
		{"dst", "ready", -1, false}, // before the destination says ready
		// Ready received, commit not yet written: the source still
		// commits, and settles it over a redial.
		{"src", "ready", -1, true},
		{"src", "committed", -1, true},
		{"dst", "committed", -1, true},
	}
	for _, tr := range transports {
		for _, p := range points {
			t.Run(tr+"/"+p.side+"-"+p.point, func(t *testing.T) {
				src := newSynthForTest(t, SynthConfig{RAMBytes: 8 << 20, DirtyBytesPerSecond: 4 << 20, Seed: 3})
				m := newMigration(t, tr, src)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				var cutMu sync.Mutex
				var conns []Conn
				cut := func() {
					cutMu.Lock()
					defer cutMu.Unlock()
					for _, c := range conns {
						c.Abort("test cut")
					}
				}
				var fired atomic.Bool
				hook := func(side string) func(string, int) {
					return func(point string, round int) {
						if side == p.side && point == p.point && (p.round < 0 || round == p.round) {
							fired.Store(true)
							cut()
						}
					}
				}
				// Force several rounds: a tight downtime with a writer.
				opts := SourceOptions{Compression: CompressAuto, DowntimeLimit: time.Nanosecond, MaxRounds: 4, FaultHook: hook("src")}
				if p.point == "paused" || p.point == "ready" || p.point == "committed" {
					// Reach the switchover however slow the machine.
					opts.DowntimeLimit, opts.MaxRounds = 5*time.Second, 0
				}
				dopts := m.destOptions()
				dopts.FaultHook = hook("dst")
				// Capture the source connection to cut it.
				var res result
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					res.dstStat, res.dstErr = Receive(ctx, m.l, dopts)
				}()
				conn, err := m.dial(ctx, 2)
				if err != nil {
					t.Fatal(err)
				}
				cutMu.Lock()
				conns = append(conns, conn)
				cutMu.Unlock()
				opts.Redial = func(ctx context.Context) (Conn, error) { return m.dial(ctx, 1) }
				tracker, err := src.NewTracker()
				if err != nil {
					t.Fatal(err)
				}
				res.stats, res.err = Migrate(ctx, src, tracker, conn, opts)
				src.CloseTracker(tracker)
				wg.Wait()
				srcRun, dstRun := m.runningSides()
				t.Logf("source: %v (%s); destination: %v; running: src %v dst %v", res.err, res.stats.Status, res.dstErr, srcRun, dstRun)
				if srcRun == dstRun {
					t.Fatalf("guest running on source %v, destination %v: want exactly one", srcRun, dstRun)
				}
				if !fired.Load() {
					// A fast machine converged before the round to cut.
					if res.err != nil || !dstRun {
						t.Fatalf("no cut, yet: %v, destination running %v", res.err, dstRun)
					}
					t.Skipf("converged before %s round %d; nothing cut", p.point, p.round)
				}
				if p.committed && !dstRun {
					t.Fatal("cut after the commit: the guest must run on the destination")
				}
				if !p.committed {
					if !srcRun || res.err == nil {
						t.Fatalf("cut before the commit: source must run and report an error (running %v, err %v)", srcRun, res.err)
					}
					if c := src.Check(); !c.OK() {
						t.Fatalf("source memory after the failed migration: %+v", c)
					}
					if res.dstErr == nil || !errors.Is(res.dstErr, ErrNotCommitted) {
						t.Fatalf("destination: %v, want ErrNotCommitted", res.dstErr)
					}
				}
			})
		}
	}
}
