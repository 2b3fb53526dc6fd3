package migrate

import (
	"encoding/binary"
	"testing"
	"time"
)

func TestSynthGuestCheckFindsDamage(t *testing.T) {
	g, err := NewSynthGuest("check", SynthConfig{RAMBytes: 64 * PageBytes, Pattern: "uniform", Content: "halfzero", Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if c := g.Check(); !c.OK() || c.LivePages != 32 || c.ZeroPages != 32 {
		t.Fatalf("fresh guest: %+v", c)
	}
	g.RAM()[3*PageBytes+100] ^= 1 // a body bit
	if c := g.Check(); c.OK() || c.FirstBad != 3 {
		t.Fatalf("flipped body: %+v", c)
	}
	g.RAM()[3*PageBytes+100] ^= 1
	g.RAM()[4*PageBytes] = 1 // a page that must stay zero
	if c := g.Check(); c.OK() || c.FirstBad != 4 {
		t.Fatalf("dirtied zero page: %+v", c)
	}
	g.RAM()[4*PageBytes] = 0
	// A rewritten page at a newer version is consistent by itself but
	// breaks the write count: a lost or duplicated write.
	v := binary.LittleEndian.Uint64(g.RAM()[5*PageBytes+8:])
	g.fillPage(g.RAM()[5*PageBytes:6*PageBytes], 5, v+1)
	if c := g.Check(); c.OK() || c.BadPages != 0 {
		t.Fatalf("write not counted: %+v", c)
	}
}

// FuzzSynthState: a migrated device state that is not one is refused,
// never a panic; an accepted one gives a guest that can be stopped.
func FuzzSynthState(f *testing.F) {
	const ramBytes = 8 * PageBytes
	g, err := NewSynthGuest("fuzz-seed", SynthConfig{RAMBytes: ramBytes, Pattern: "hotset", Content: "random", Seed: 2})
	if err != nil {
		f.Fatal(err)
	}
	state, _ := g.State()
	g.Close()
	f.Add(state)
	f.Add(state[:10])
	mem, err := NewMemory("fuzz", ramBytes)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := RestoreSynthGuest(mem, b)
		if err != nil {
			return
		}
		g.Check()
		g.Stop()
	})
}

// TestSynthGuestSequential: the sequential writer walks the live pages in
// order from where it started, wrapping around, and its cursor travels in
// the device state so a restored guest continues the walk.
func TestSynthGuestSequential(t *testing.T) {
	const pages = 64
	g, err := NewSynthGuest("seq", SynthConfig{RAMBytes: pages * PageBytes, DirtyBytesPerSecond: 400 * PageBytes, Pattern: "sequential", Content: "random", Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	start := g.rng % pages
	g.Resume()
	// More than one lap, so the wrap-around is covered.
	deadline := time.Now().Add(30 * time.Second)
	for g.Writes() < pages+pages/2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	g.Pause()
	w := g.Writes()
	if w < pages+pages/2 {
		t.Fatalf("only %d writes in 30 s", w)
	}
	for p := uint64(0); p < pages; p++ {
		d := (p + pages - start) % pages
		want := 1 + w/pages
		if d < w%pages {
			want++
		}
		if v := binary.LittleEndian.Uint64(g.RAM()[p*PageBytes+8:]); v != want {
			t.Fatalf("page %d (offset %d from the start %d) at version %d after %d writes, want %d", p, d, start, v, w, want)
		}
	}
	state, err := g.State()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := NewMemory("seq-restored", pages*PageBytes)
	if err != nil {
		t.Fatal(err)
	}
	copy(mem.Bytes(), g.RAM())
	r, err := RestoreSynthGuest(mem, state)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Config().Pattern != "sequential" || r.rng%pages != (start+w)%pages {
		t.Fatalf("restored pattern %q, cursor at page %d, want sequential at %d", r.Config().Pattern, r.rng%pages, (start+w)%pages)
	}
	if c := r.Check(); !c.OK() {
		t.Fatalf("restored: %+v", c)
	}
}
