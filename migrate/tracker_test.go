//go:build linux

package migrate

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// trackerRig is a tracker with a way to write page i as the guest would.
type trackerRig struct {
	tr    Tracker
	write func(page int, b byte)
}

// testTrackerExact dirties a known random set of pages, fragmented enough to
// need several PAGEMAP_SCAN calls, and wants exactly that set back; then
// nothing; then a second set.
func testTrackerExact(t *testing.T, rig trackerRig) {
	tr := rig.tr
	if _, err := tr.Collect(NewBitmap(tr.Pages())); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Collect before Start: %v", err)
	}
	// Writes before Start are forgotten.
	rig.write(0, 1)
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for round := 0; round < 3; round++ {
		want := map[int]bool{}
		for len(want) < 3000 {
			p := rng.IntN(tr.Pages())
			want[p] = true
			rig.write(p, byte(round+2))
		}
		got := NewBitmap(tr.Pages())
		n, err := tr.Collect(got)
		if err != nil {
			t.Fatal(err)
		}
		if n != len(want) || got.Count() != len(want) {
			t.Fatalf("round %d: collected %d pages (bitmap %d), wrote %d", round, n, got.Count(), len(want))
		}
		for p := range want {
			if !got.Test(p) {
				t.Fatalf("round %d: page %d written, not reported", round, p)
			}
		}
		n, err = tr.Collect(got)
		if err != nil || n != 0 {
			t.Fatalf("round %d: second collect with no writes found %d pages, %v", round, n, err)
		}
	}
	if _, err := tr.Collect(NewBitmap(tr.Pages() + 1)); err == nil {
		t.Fatal("Collect into a bitmap of the wrong size")
	}
}

// testTrackerConcurrent checks the ordering contract with writers running
// during Collect: every page is written once, after the writer noted how
// many Collects had returned; every Collect that reports it must come later,
// and the union of all Collects must be exactly the written set. A page may
// be reported by two Collects for its one write (see Tracker).
func testTrackerConcurrent(t *testing.T, rig trackerRig) {
	tr := rig.tr
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	const writers = 2
	pages := tr.Pages()
	var collected atomic.Int64
	seenAt := make([]int64, pages) // Collects completed before the write
	for i := range seenAt {
		seenAt[i] = -1
	}
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			for k := 0; k < 4000; k++ {
				p := rng.IntN(pages/writers)*writers + w // disjoint pages per writer
				if seenAt[p] >= 0 {
					continue
				}
				seenAt[p] = collected.Load()
				rig.write(p, 0xAB)
			}
		}()
	}
	reportedIn := make([]int64, pages)
	for i := range reportedIn {
		reportedIn[i] = -1
	}
	twice := 0 // pages reported by a second Collect
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	collect := func() {
		b := NewBitmap(pages)
		if _, err := tr.Collect(b); err != nil {
			t.Error(err)
			return
		}
		k := collected.Add(1) // this Collect is number k (1-based)
		for p := b.NextSet(0); p >= 0; p = b.NextSet(p + 1) {
			if reportedIn[p] >= 0 {
				twice++
			} else {
				reportedIn[p] = k
			}
		}
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		collect()
	}
	collect() // after every write finished
	written := 0
	for p := 0; p < pages; p++ {
		switch {
		case seenAt[p] < 0 && reportedIn[p] >= 0:
			t.Fatalf("page %d reported, never written", p)
		case seenAt[p] >= 0 && reportedIn[p] < 0:
			t.Fatalf("page %d written after collect %d, never reported", p, seenAt[p])
		case seenAt[p] >= 0 && reportedIn[p] <= seenAt[p]:
			t.Fatalf("page %d written after collect %d, reported by collect %d", p, seenAt[p], reportedIn[p])
		}
		if seenAt[p] >= 0 {
			written++
		}
	}
	t.Logf("%d pages written during %d collects, %d reported twice", written, collected.Load(), twice)
}

// testTrackerCopyConverges is the invariant migration needs: writers keep
// rewriting random bytes while the "engine" collects and copies the reported
// pages; once the writers stop, one more collect and copy makes the copy
// equal to RAM, byte for byte.
func testTrackerCopyConverges(t *testing.T, rig trackerRig, ram []byte) {
	tr := rig.tr
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	sent := make([]byte, len(ram))
	copy(sent, ram) // the first full pass, after arming
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 5))
			for k := 0; ; k++ {
				if k%64 == 0 {
					select {
					case <-stop:
						return
					default:
					}
				}
				p := rng.IntN(tr.Pages()/2)*2 + w
				rig.write(p, byte(rng.Uint32()))
			}
		}()
	}
	dirty := NewBitmap(tr.Pages())
	copyDirty := func() {
		if _, err := tr.Collect(dirty); err != nil {
			t.Fatal(err)
		}
		for s, e := dirty.NextRun(0); s >= 0; s, e = dirty.NextRun(e) {
			copy(sent[s*PageBytes:e*PageBytes], ram[s*PageBytes:e*PageBytes])
		}
		dirty.Reset()
	}
	for round := 0; round < 200; round++ {
		copyDirty()
	}
	close(stop)
	wg.Wait()
	copyDirty()
	for p := 0; p < tr.Pages(); p++ {
		if !bytes.Equal(sent[p*PageBytes:(p+1)*PageBytes], ram[p*PageBytes:(p+1)*PageBytes]) {
			t.Fatalf("page %d differs after the final round", p)
		}
	}
}

func newExplicitRig(t *testing.T, sizeBytes int64) (trackerRig, []byte) {
	tr, err := NewExplicitTracker(sizeBytes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	// Guest RAM outside the Go heap, as for the uffd tracker: the race
	// detector does not watch it, which is right for guest memory.
	ram := newMemory(t, sizeBytes).Bytes()
	return trackerRig{tr: tr, write: func(p int, b byte) {
		off := p*PageBytes + int(b)*13
		ram[off] = b
		tr.Mark(int64(off), 1)
	}}, ram
}

func TestExplicitTrackerExact(t *testing.T) {
	rig, _ := newExplicitRig(t, 64<<20)
	testTrackerExact(t, rig)
}

func TestExplicitTrackerConcurrent(t *testing.T) {
	rig, _ := newExplicitRig(t, 16<<20)
	testTrackerConcurrent(t, rig)
}

func TestExplicitTrackerCopyConverges(t *testing.T) {
	rig, ram := newExplicitRig(t, 8<<20)
	testTrackerCopyConverges(t, rig, ram)
}

func TestExplicitTrackerMarkRanges(t *testing.T) {
	tr, err := NewExplicitTracker(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	tr.Mark(PageBytes-1, 2)             // straddles pages 0 and 1
	tr.Mark(10*PageBytes, 70*PageBytes) // pages 10..79, across a word boundary
	tr.Mark(200*PageBytes, 0)           // empty: nothing
	tr.MarkPage(255)
	b := NewBitmap(tr.Pages())
	n, err := tr.Collect(b)
	if err != nil || n != 2+70+1 {
		t.Fatalf("collected %d, %v", n, err)
	}
	if !b.Test(0) || !b.Test(1) || b.Test(2) || b.Test(9) || !b.Test(10) || !b.Test(79) || b.Test(80) || !b.Test(255) {
		t.Fatal("wrong pages")
	}
	for _, f := range []func(){
		func() { tr.Mark(1<<20-1, 2) },
		func() { tr.Mark(-1, 1) },
		func() { tr.MarkPage(256) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("out-of-range Mark did not panic")
				}
			}()
			f()
		}()
	}
	tr.Close()
	if _, err := tr.Collect(b); !errors.Is(err, ErrClosed) {
		t.Fatalf("Collect after Close: %v", err)
	}
}

func TestUnsupportedErrorIs(t *testing.T) {
	var err error = &UnsupportedError{Feature: "PAGEMAP_SCAN"}
	if !errors.Is(err, errors.ErrUnsupported) {
		t.Fatal("UnsupportedError is not errors.ErrUnsupported")
	}
	var ue *UnsupportedError
	if !errors.As(err, &ue) || ue.Feature != "PAGEMAP_SCAN" {
		t.Fatal("errors.As")
	}
}
