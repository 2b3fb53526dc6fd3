package blockrep

import (
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkResync measures how fast a returning replica catches up: three
// replicas, one away while the primary writes resyncMiB of 1 MiB blocks,
// then back; the clock runs from its return until it is a member again.
// Data on /dev/shm when it exists, so the disk is not what is measured:
//
//	go test ./blockrep -run XXX -bench Resync -benchtime 5x -cpuprofile /tmp/resync.out
func BenchmarkResync(b *testing.B) {
	const resyncMiB = 256
	const sizeBytes = 2 * resyncMiB << 20
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "paddock-resync-bench")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		b.Setenv("TMPDIR", dir)
	}
	c := newTestCluster(b, 3, sizeBytes)
	p, err := c.promote(1)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	var resent, total, cpu time.Duration
	var bytes int64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		addr := c.kill(3)
		// Write half the volume (alternate halves) while node 3 is away.
		base := int64(i%2) * resyncMiB << 20
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		for off := int64(0); off < resyncMiB<<20; off += 1 << 20 {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := p.WriteAt(buf, base+off, false); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
		cpu0 := processCPUTime()
		start := time.Now()
		b.StartTimer()
		c.start(3, addr)
		// Poll the primary's view: the resync proper runs from the
		// peer's first "syncing" to its return to the members (the
		// reconnect, up to reconnectInterval, comes before).
		var syncAt time.Time
		for deadline := time.Now().Add(time.Minute); ; {
			st := p.Status()
			done := len(st.Members) == 3
			for _, ps := range st.Peers {
				if ps.Node == 3 && ps.State == PeerSyncing && syncAt.IsZero() {
					syncAt = time.Now()
				}
				if ps.State != PeerMember || ps.OutOfSyncBytes != 0 {
					done = false
				}
			}
			if done {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("no resync within a minute: %+v", st)
			}
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		if syncAt.IsZero() {
			syncAt = start
		}
		resent += time.Since(syncAt)
		total += time.Since(start)
		cpu += processCPUTime() - cpu0
		bytes += resyncMiB << 20
	}
	b.ReportMetric(float64(bytes)/resent.Seconds()/1e6, "MB/s")
	b.ReportMetric(float64(bytes)/total.Seconds()/1e6, "MB/s-from-return")
	b.ReportMetric(cpu.Seconds()*1e6/float64(bytes>>20), "cpu-µs/MiB")
}

func processCPUTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
