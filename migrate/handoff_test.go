package migrate

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// TestMigrateHandoff: the hand-off runs once, while the guest is paused
// and the destination holds the verified RAM but has not resumed; its
// time is reported and counted in the downtime. A hand-off that fails
// cancels the migration: the guest runs on the source with the memory it
// had, and the destination discards what it received.
func TestMigrateHandoff(t *testing.T) {
	for _, fail := range []bool{false, true} {
		name := map[bool]string{false: "ok", true: "fails"}[fail]
		t.Run(name, func(t *testing.T) {
			src := newSynthForTest(t, SynthConfig{RAMBytes: 16 << 20, DirtyBytesPerSecond: 4 << 20, Seed: 11})
			m := newMigration(t, TransportTCP, src)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// The hand-off takes this long, so its share of the
			// downtime is measurable whatever the machine's speed.
			const handoffSleep = 50 * time.Millisecond
			var calls atomic.Int32
			var pausedSum [32]byte
			var wasRunning, dstResumed atomic.Bool
			opts := SourceOptions{Compression: CompressAuto, DowntimeLimit: 5 * time.Second,
				Handoff: func(ctx context.Context) error {
					calls.Add(1)
					wasRunning.Store(src.Running())
					m.mu.Lock()
					dstResumed.Store(m.dst != nil)
					m.mu.Unlock()
					pausedSum = sha256.Sum256(src.RAM())
					time.Sleep(handoffSleep)
					if fail {
						return errors.New("test: the destination node holds no replica")
					}
					return nil
				}}
			res := m.run(ctx, 2, opts, m.destOptions())
			if calls.Load() != 1 || wasRunning.Load() || dstResumed.Load() {
				t.Fatalf("hand-off called %d times, guest running during it %v, destination resumed before it %v",
					calls.Load(), wasRunning.Load(), dstResumed.Load())
			}
			st := res.stats
			if st.HandoffMs < float64(handoffSleep/time.Millisecond) || st.DowntimeMs != 0 && st.DowntimeMs < st.HandoffMs {
				t.Fatalf("hand-off %.1f ms, downtime %.1f ms", st.HandoffMs, st.DowntimeMs)
			}
			srcRun, dstRun := m.runningSides()
			if !fail {
				if res.err != nil || res.dstErr != nil || st.Status != StatusCompleted || srcRun || !dstRun {
					t.Fatalf("source %v, destination %v, status %s, running src %v dst %v", res.err, res.dstErr, st.Status, srcRun, dstRun)
				}
				if m.dstSum != pausedSum {
					t.Fatal("the destination resumed with RAM other than the source's during the hand-off")
				}
				return
			}
			if res.err == nil || st.Status == StatusCompleted || !srcRun || dstRun {
				t.Fatalf("failed hand-off: source err %v, status %s, running src %v dst %v", res.err, st.Status, srcRun, dstRun)
			}
			if !errors.Is(res.dstErr, ErrNotCommitted) {
				t.Fatalf("destination: %v, want ErrNotCommitted", res.dstErr)
			}
			// The memory of the pause is still the source's, and the
			// workload goes on consistent.
			if c := src.Check(); !c.OK() {
				t.Fatalf("source after a failed hand-off: %+v", c)
			}
			before := src.Writes()
			deadline := time.Now().Add(10 * time.Second)
			for src.Writes() == before && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if src.Writes() == before {
				t.Fatal("the guest does not run on the source after the failed hand-off")
			}
		})
	}
}
