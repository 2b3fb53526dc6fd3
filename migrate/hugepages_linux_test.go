//go:build linux

package migrate

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
)

func TestHugeMemory(t *testing.T) {
	testbin.RequireHugePages(t, 6)
	if _, err := NewHugeMemory("bad", 4096); err == nil || !strings.Contains(err.Error(), "multiple of") {
		t.Fatalf("a 4 KiB huge memory: %v", err)
	}
	m, err := NewHugeMemory("test-huge", 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !m.HugePages() {
		t.Fatal("NewHugeMemory's memory does not say it is on huge pages")
	}
	if ramFileForWrite(m.Bytes()) != -1 {
		t.Fatal("ramFileForWrite gave a descriptor for hugetlbfs, which takes no pwrite")
	}
	fd := ramFile(m.Bytes())
	if fd < 0 {
		t.Fatal("ramFile: no descriptor to read huge page RAM with")
	}
	defer closeRAMFile(fd)
	copy(m.Bytes()[HugePageBytes+5:], "hello")
	buf := make([]byte, 5)
	if err := preadFull(fd, buf, HugePageBytes+5); err != nil || string(buf) != "hello" {
		t.Fatalf("pread of huge page RAM: %q, %v", buf, err)
	}
	// Warming touches every free page of the pool (4 MiB are in use here).
	if n, err := WarmHugePool(); err != nil || n < 4*HugePageBytes {
		t.Fatalf("WarmHugePool: %d bytes, %v", n, err)
	}
	// A pool too small for the request is an error now, not a SIGBUS
	// when the guest first touches a page.
	if _, err := NewHugeMemory("too-big", 1<<40); err == nil || !strings.Contains(err.Error(), "nr_hugepages") {
		t.Fatalf("RAM beyond the pool: %v", err)
	}
}

// TestUffdTrackerHugePages: dirty tracking over huge pages reports whole
// huge pages, never fewer pages than were written.
func TestUffdTrackerHugePages(t *testing.T) {
	testbin.RequireHugePages(t, 8)
	m, err := NewHugeMemory("test-huge-track", 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tr := newUffdTracker(t, m.Bytes())
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	ram := m.Bytes()
	ram[3*HugePageBytes+100] = 1 // one byte in huge page 3
	ram[7*HugePageBytes-1] = 1   // the last byte of huge page 6
	dirty := NewBitmap(m.Pages())
	if _, err := tr.Collect(dirty); err != nil {
		t.Fatal(err)
	}
	perHuge := HugePageBytes / PageBytes
	for p := 0; p < m.Pages(); p++ {
		want := p/perHuge == 3 || p/perHuge == 6
		if dirty.Test(p) != want {
			t.Fatalf("page %d (huge page %d): dirty %v, want %v", p, p/perHuge, dirty.Test(p), want)
		}
	}
	dirty.Reset()
	if _, err := tr.Collect(dirty); err != nil {
		t.Fatal(err)
	}
	if n := dirty.Count(); n != 0 {
		t.Fatalf("%d pages dirty with no write since the last collect", n)
	}
}

// TestMigrateHugePages migrates a guest on huge pages with its writer
// running into huge page RAM at the destination (which writes through the
// mapping): the RAM arrives equal and the workload goes on.
func TestMigrateHugePages(t *testing.T) {
	testbin.RequireHugePages(t, 2*64/2)
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			src := newSynthForTest(t, SynthConfig{RAMBytes: 64 << 20, DirtyBytesPerSecond: 20 << 20, Pattern: "hotset",
				Content: "halfzero", Seed: 9, HugePages: true})
			m := newMigration(t, tr, src)
			m.hugePages = true
			dopts := m.destOptions()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			res := m.run(ctx, 4, SourceOptions{Compression: CompressAuto, DowntimeLimit: 300 * time.Millisecond}, dopts)
			if res.err != nil || res.dstErr != nil {
				t.Fatalf("source: %v; destination: %v", res.err, res.dstErr)
			}
			if sha256.Sum256(src.RAM()) != m.dstSum {
				t.Fatal("destination RAM differs from the source's at pause")
			}
			if !m.dstMem.HugePages() {
				t.Fatal("the destination's RAM is not on huge pages")
			}
			before := m.dst.Writes()
			deadline := time.Now().Add(10 * time.Second)
			for m.dst.Writes() == before && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if c := m.dst.Check(); !c.OK() || m.dst.Writes() == before {
				t.Fatalf("destination after the migration: check %+v, writes %d then %d", c, before, m.dst.Writes())
			}
		})
	}
}
