package blockrep

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkRecoveringPromotion measures what a recovering candidate's
// fetch adds to a promotion (issue 4): three replicas; before each
// promotion of node 1, its record names recExtents extents (as after a
// crash with that many hot extents) and one 64 KiB region in each holds
// old data; the promotion compares digests and fetches those regions
// from node 2. The sub-benchmark "clean" (nothing recovering) is the
// baseline. Data on /dev/shm when it exists:
//
//	go test ./blockrep -run XXX -bench RecoveringPromotion -benchtime 5x
func BenchmarkRecoveringPromotion(b *testing.B) {
	const recExtents = 64 // 256 MiB
	const sizeBytes = 2 * recExtents * ExtentBytes
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "paddock-recovering-bench")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		b.Setenv("TMPDIR", dir)
	}
	for _, mode := range []string{"clean", "recovering"} {
		b.Run(mode, func(b *testing.B) {
			c := newTestCluster(b, 3, sizeBytes)
			p, err := c.promote(1)
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			for i := range buf {
				buf[i] = byte(i*7 + 1)
			}
			for x := int64(0); x < recExtents; x++ {
				if err := p.WriteAt(buf, x*ExtentBytes, false); err != nil {
					b.Fatal(err)
				}
			}
			p.Flush()
			var took time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				p.Close()
				if mode == "recovering" {
					f, err := os.OpenFile(filepath.Join(c.nodeDir(1), "data"), os.O_RDWR, 0)
					if err != nil {
						b.Fatal(err)
					}
					var es []int64
					for x := int64(0); x < recExtents; x++ {
						es = append(es, x)
						if _, err := f.WriteAt(make([]byte, 64<<10), x*ExtentBytes); err != nil {
							b.Fatal(err)
						}
					}
					f.Close()
					if err := c.replicaOf(1).Store().rec.add(es); err != nil {
						b.Fatal(err)
					}
				}
				start := time.Now()
				b.StartTimer()
				if p, err = c.promote(1); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				took += time.Since(start)
				if c.replicaOf(1).Store().Recovering() {
					b.Fatal("still recovering after the promotion")
				}
			}
			p.Close()
			b.ReportMetric(float64(took.Milliseconds())/float64(b.N), "ms/promotion")
		})
	}
}
