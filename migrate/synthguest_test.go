package migrate

import (
	"encoding/binary"
	"testing"
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
