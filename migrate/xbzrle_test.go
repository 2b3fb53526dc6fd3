package migrate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
)

func randomPage(rng *rand.Rand) []byte {
	p := make([]byte, PageBytes)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	return p
}

// mutate changes a page the ways guests do: a few words, a run, scattered
// bytes, everything, nothing.
func mutate(rng *rand.Rand, old []byte) []byte {
	cur := bytes.Clone(old)
	switch rng.IntN(6) {
	case 0: // a counter
		binary.LittleEndian.PutUint64(cur[rng.IntN(PageBytes/8)*8:], rng.Uint64())
	case 1: // a run
		s := rng.IntN(PageBytes)
		e := s + rng.IntN(PageBytes-s+1)
		for i := s; i < e; i++ {
			cur[i] = byte(rng.Uint32())
		}
	case 2: // scattered bytes
		for k := rng.IntN(200); k > 0; k-- {
			cur[rng.IntN(PageBytes)]++
		}
	case 3: // everything
		for i := range cur {
			cur[i] ^= 0xFF
		}
	case 4: // nothing: rewritten with the same bytes
	case 5: // the ends
		cur[0]++
		cur[PageBytes-1]++
	}
	return cur
}

func TestDeltaRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 3000; i++ {
		old := randomPage(rng)
		if i%3 == 0 {
			old = make([]byte, PageBytes)
		}
		cur := mutate(rng, old)
		d, ok := appendDelta(nil, old, cur, 2*PageBytes)
		if !ok {
			t.Fatal("delta over 2 pages")
		}
		if err := checkDelta(d); err != nil {
			t.Fatal(err)
		}
		got := bytes.Clone(old)
		applyDelta(got, d)
		if !bytes.Equal(got, cur) {
			t.Fatalf("case %d: delta of %d bytes does not reproduce the page", i, len(d))
		}
		if bytes.Equal(old, cur) && len(d) != 0 {
			t.Fatalf("unchanged page gave a delta of %d bytes", len(d))
		}
	}
}

func TestDeltaSizes(t *testing.T) {
	old := make([]byte, PageBytes)
	cur := bytes.Clone(old)
	binary.LittleEndian.PutUint64(cur[800:], 0x1122334455667788)
	d, _ := appendDelta(nil, old, cur, PageBytes)
	if len(d) != 2+1+8 { // skip 800 (2 bytes), run 8, 8 bytes
		t.Fatalf("one changed word: %d bytes", len(d))
	}
	// Changes 2 bytes apart are one run, not two.
	cur = bytes.Clone(old)
	cur[10], cur[12] = 1, 1
	d, _ = appendDelta(nil, old, cur, PageBytes)
	if len(d) != 1+1+3 {
		t.Fatalf("close changes: %d bytes %v", len(d), d)
	}
	// Limit: a page of all-new bytes does not fit in half a page.
	cur = randomPage(rand.New(rand.NewPCG(1, 1)))
	if d, ok := appendDelta([]byte{9}, old, cur, PageBytes/2); ok || len(d) != 1 {
		t.Fatalf("over-limit delta: ok %v, dst %d bytes", ok, len(d))
	}
}

func TestDeltaRejects(t *testing.T) {
	for name, d := range map[string][]byte{
		"bad varint":   {0xFF},
		"missing run":  {0x00},
		"empty run":    {0x00, 0x00},
		"past the end": {0x80, 0x20, 0x01, 0xAA}, // skip 4096, run 1
		"short data":   {0x00, 0x05, 1, 2},
		"run too long": {0x00, 0x81, 0x20},
		"huge skip":    {0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x01, 0},
		"second past":  {0x00, 0x01, 7, 0xFE, 0x1F, 0x02, 1, 2},
	} {
		if err := checkDelta(d); !errors.Is(err, ErrCorruptFrame) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzXBZRLE: any pair of pages round-trips, and any bytes as a delta are
// either refused or applied inside the page.
func FuzzXBZRLE(f *testing.F) {
	f.Add([]byte{}, []byte{1, 2, 3}, []byte{0x00, 0x01, 0x07})
	f.Add(bytes.Repeat([]byte{0xAB}, 4096), bytes.Repeat([]byte{0xAB, 0xCD}, 2048), []byte{0xFF, 0x1F, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, oldSeed, curSeed, delta []byte) {
		old := make([]byte, PageBytes)
		cur := make([]byte, PageBytes)
		copy(old, oldSeed)
		copy(cur, curSeed)
		// Tile short seeds so pages have structure, not just zeros.
		if len(curSeed) > 0 {
			for i := len(curSeed); i < PageBytes; i++ {
				cur[i] = cur[i-len(curSeed)] ^ old[i]
			}
		}
		d, ok := appendDelta(nil, old, cur, 2*PageBytes)
		if !ok {
			t.Fatal("delta over two pages")
		}
		if err := checkDelta(d); err != nil {
			t.Fatal(err)
		}
		got := bytes.Clone(old)
		applyDelta(got, d)
		if !bytes.Equal(got, cur) {
			t.Fatal("round trip differs")
		}
		if checkDelta(delta) == nil {
			page := bytes.Clone(old)
			applyDelta(page, delta)
		}
	})
}
