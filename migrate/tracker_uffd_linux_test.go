//go:build linux

package migrate

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newMemory(t testing.TB, sizeBytes int64) *Memory {
	t.Helper()
	m, err := NewMemory(t.Name(), sizeBytes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func newUffdTracker(t testing.TB, views ...[]byte) *UffdTracker {
	t.Helper()
	tr, err := NewUffdTracker(views...)
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func newUffdRig(t *testing.T, sizeBytes int64) (trackerRig, []byte) {
	m := newMemory(t, sizeBytes)
	// Populate the first half, so the set mixes pages that existed
	// before arming and pages first allocated by the tracked write
	// (caught through WP_UNPOPULATED's markers).
	ram := m.Bytes()
	for off := 0; off < len(ram)/2; off += PageBytes {
		ram[off] = 1
	}
	tr := newUffdTracker(t, ram)
	return trackerRig{tr: tr, write: func(p int, b byte) { ram[p*PageBytes+int(b)*13] = b }}, ram
}

func TestCheckUffdTracker(t *testing.T) {
	if err := CheckUffdTracker(); err != nil {
		t.Fatalf("this machine (root, Linux 6.18) should track with uffd: %v", err)
	}
}

func TestUffdTrackerExact(t *testing.T) {
	rig, _ := newUffdRig(t, 64<<20)
	testTrackerExact(t, rig)
}

func TestUffdTrackerConcurrent(t *testing.T) {
	rig, _ := newUffdRig(t, 16<<20)
	testTrackerConcurrent(t, rig)
}

func TestUffdTrackerCopyConverges(t *testing.T) {
	rig, ram := newUffdRig(t, 8<<20)
	testTrackerCopyConverges(t, rig, ram)
}

// A write that rewrites a page with the bytes it already holds still
// counts: the tracker sees page table state, not contents.
// storeByte is a store the compiler cannot drop: it removes `x = x` (a
// store of the value just loaded from the same address).
//
//go:noinline
func storeByte(p *byte, v byte) { *p = v }

func TestUffdTrackerSameValueWrite(t *testing.T) {
	m := newMemory(t, 1<<20)
	tr := newUffdTracker(t, m.Bytes())
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	storeByte(&m.Page(5)[0], m.Page(5)[0])
	b := NewBitmap(tr.Pages())
	if n, err := tr.Collect(b); err != nil || n != 1 || !b.Test(5) {
		t.Fatalf("collected %d, %v", n, err)
	}
	// Reads never count.
	var sum byte
	for _, c := range m.Bytes() {
		sum += c
	}
	if n, err := tr.Collect(b); err != nil || n != 0 {
		t.Fatalf("reads reported as %d written pages (%v), sum %d", n, err, sum)
	}
}

// What a tracker on one mapping sees of writes that do not go through it.
// Found on Linux 6.18: writes through a second mapping of the same memfd,
// and pwrite on the memfd, are invisible (the write-protect bit lives in the
// tracked mapping's page table entries, not on the file page); read(2) into
// the tracked mapping is caught (the kernel's copy faults like a user
// write). So every mapping the guest writes through must be tracked; a
// tracker over both views reports each page once.
func TestUffdTrackerWritePaths(t *testing.T) {
	m := newMemory(t, 4<<20)
	view, err := m.Map()
	if err != nil {
		t.Fatal(err)
	}
	ram := m.Bytes()
	tr := newUffdTracker(t, ram)
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	b := NewBitmap(tr.Pages())

	view[7*PageBytes] = 9
	if n, err := tr.Collect(b); err != nil || n != 0 {
		t.Fatalf("write through an untracked second mapping: %d pages, %v", n, err)
	}
	if _, err := unix.Pwrite(m.Fd(), []byte{1}, 8*PageBytes); err != nil {
		t.Fatal(err)
	}
	if n, err := tr.Collect(b); err != nil || n != 0 {
		t.Fatalf("pwrite on the memfd: %d pages, %v", n, err)
	}
	if ram[7*PageBytes] != 9 || ram[8*PageBytes] != 1 {
		t.Fatal("the writes did reach the shared pages")
	}

	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.Write(p[1], []byte("kernel")); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Read(p[0], ram[9*PageBytes:9*PageBytes+6]); err != nil {
		t.Fatal(err)
	}
	b.Reset()
	if n, err := tr.Collect(b); err != nil || n != 1 || !b.Test(9) {
		t.Fatalf("read(2) into the tracked mapping: %d pages, %v", n, err)
	}
	tr.Close()

	both := newUffdTracker(t, ram, view)
	if err := both.Start(); err != nil {
		t.Fatal(err)
	}
	view[3*PageBytes] = 1
	ram[3*PageBytes+1] = 1
	view[4*PageBytes] = 1
	b.Reset()
	if n, err := both.Collect(b); err != nil || n != 2 || !b.Test(3) || !b.Test(4) {
		t.Fatalf("tracker over both views: %d pages, %v", n, err)
	}
}

func TestUffdTrackerErrors(t *testing.T) {
	m := newMemory(t, 1<<20)
	if _, err := NewUffdTracker(); err == nil {
		t.Fatal("no views accepted")
	}
	if _, err := NewUffdTracker(m.Bytes(), m.Bytes()[:PageBytes]); err == nil {
		t.Fatal("views of different lengths accepted")
	}
	if _, err := NewUffdTracker(m.Bytes()[1 : 1+PageBytes]); err == nil {
		t.Fatal("unaligned view accepted")
	}
	tr := newUffdTracker(t, m.Bytes())
	// One mapping belongs to one userfaultfd.
	if tr2, err := NewUffdTracker(m.Bytes()); err == nil {
		tr2.Close()
		t.Fatal("second tracker on the same mapping accepted")
	} else {
		t.Log(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Collect(NewBitmap(tr.Pages())); !errors.Is(err, ErrClosed) {
		t.Fatalf("Collect after Close: %v", err)
	}
	// After Close the mapping is free for a new tracker.
	tr3 := newUffdTracker(t, m.Bytes())
	if err := tr3.Start(); err != nil {
		t.Fatal(err)
	}
}

// Arm and scan of 1 GiB, every page populated (the worst case for the page
// table walk). Not run by go test without -bench: it needs 1 GiB of RAM.
func BenchmarkUffdArm1GiB(b *testing.B) {
	_, tr := bench1GiB(b)
	for b.Loop() {
		if err := tr.Start(); err != nil {
			b.Fatal(err)
		}
	}
}

// Collect on 1 GiB with pages dirtied between scans every strideP pages
// (0: none); the writes are outside the timer. The cost is dominated by
// re-protecting: about 30-40 µs per 2 MiB page table that holds a written
// page (the protection change and its TLB flush), against ~0.5 ms for a
// walk that finds nothing.
func BenchmarkUffdScan1GiB(b *testing.B) {
	for _, c := range []struct {
		name    string
		strideP int
	}{{"clean", 0}, {"all-dirty", 1}, {"1pct-scattered", 100}, {"one-per-2MiB", 512}, {"one-per-16MiB", 4096}} {
		b.Run(c.name, func(b *testing.B) {
			ram, tr := bench1GiB(b)
			dst := NewBitmap(tr.Pages())
			want := 0
			if c.strideP > 0 {
				want = (tr.Pages() + c.strideP - 1) / c.strideP
			}
			for b.Loop() {
				if c.strideP > 0 {
					b.StopTimer()
					for off := 0; off < len(ram); off += c.strideP * PageBytes {
						ram[off]++
					}
					b.StartTimer()
				}
				if n, err := tr.Collect(dst); err != nil || n != want {
					b.Fatal(n, err)
				}
			}
		})
	}
}

func bench1GiB(b *testing.B) ([]byte, *UffdTracker) {
	m := newMemory(b, 1<<30)
	ram := m.Bytes()
	for off := 0; off < len(ram); off += PageBytes {
		ram[off] = 1
	}
	tr := newUffdTracker(b, ram)
	start := time.Now()
	if err := tr.Start(); err != nil {
		b.Fatal(err)
	}
	b.Logf("first arm of 1 GiB: %v", time.Since(start))
	return ram, tr
}
