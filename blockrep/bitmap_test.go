package blockrep

import (
	"errors"
	"path/filepath"
	"testing"

	"pgregory.net/rapid"
)

func TestBitmapMarkNextClear(t *testing.T) {
	b, err := NewBitmap(10<<20+1, DefaultRegionBytes) // 161 regions, the last partial
	if err != nil {
		t.Fatal(err)
	}
	if b.Regions() != 161 {
		t.Fatalf("regions %d", b.Regions())
	}
	b.Mark(64<<10-1, 2) // straddles regions 0 and 1
	b.Mark(10<<20, 1)   // the last, partial region
	b.Mark(0, 0)        // nothing
	var got []int64
	for r := b.Next(0); r >= 0; r = b.Next(r + 1) {
		got = append(got, r)
	}
	if len(got) != 3 || got[0] != 0 || got[1] != 1 || got[2] != 160 {
		t.Fatalf("marked %v", got)
	}
	b.Clear(1)
	if b.IsSet(1) || !b.IsSet(0) || b.Count() != 2 {
		t.Fatal("clear")
	}
	b.SetAll()
	if b.Count() != 161 || b.Next(161) != -1 {
		t.Fatalf("SetAll marked %d", b.Count())
	}
	for _, bad := range [][2]int64{{0, 4096}, {1 << 20, 1000}, {1 << 20, 2048}} {
		if _, err := NewBitmap(bad[0], bad[1]); err == nil {
			t.Errorf("NewBitmap(%d, %d) accepted", bad[0], bad[1])
		}
	}
}

func TestBitmapPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peer2.bitmap")
	b, _ := NewBitmap(1<<30, DefaultRegionBytes)
	b.Mark(5<<20, 3<<20)
	if !b.Dirty() {
		t.Fatal("not dirty after marks")
	}
	if err := b.Save(path); err != nil {
		t.Fatal(err)
	}
	if b.Dirty() {
		t.Fatal("dirty after save")
	}
	c, err := LoadBitmap(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Count() != b.Count() || c.Next(0) != b.Next(0) {
		t.Fatal("loaded bitmap differs")
	}
	data, _ := b.MarshalBinary()
	for i := 0; i < len(data); i += 97 {
		bad := append([]byte(nil), data...)
		bad[i] ^= 1
		if _, err := UnmarshalBitmap(bad); !errors.Is(err, ErrCorruptBitmap) {
			t.Fatalf("flipped byte %d: %v", i, err)
		}
	}
	if _, err := UnmarshalBitmap(data[:10]); !errors.Is(err, ErrCorruptBitmap) {
		t.Fatal("truncated bitmap accepted")
	}
}

// TestBitmapModel compares the bitmap with a map over random operations.
func TestBitmapModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		regions := rapid.Int64Range(1, 300).Draw(t, "regions")
		b, _ := NewBitmap(regions*4096, 4096)
		model := map[int64]bool{}
		for i := 0; i < 50; i++ {
			switch rapid.IntRange(0, 2).Draw(t, "op") {
			case 0:
				off := rapid.Int64Range(0, regions*4096-1).Draw(t, "off")
				n := rapid.Int64Range(1, regions*4096-off).Draw(t, "len")
				b.Mark(off, n)
				for r := off / 4096; r <= (off+n-1)/4096; r++ {
					model[r] = true
				}
			case 1:
				r := rapid.Int64Range(0, regions-1).Draw(t, "clear")
				b.Clear(r)
				delete(model, r)
			case 2:
				data, _ := b.MarshalBinary()
				var err error
				if b, err = UnmarshalBitmap(data); err != nil {
					t.Fatal(err)
				}
			}
		}
		if b.Count() != int64(len(model)) {
			t.Fatalf("count %d, model %d", b.Count(), len(model))
		}
		for r := b.Next(0); r >= 0; r = b.Next(r + 1) {
			if !model[r] {
				t.Fatalf("region %d set, not in model", r)
			}
		}
	})
}

func FuzzUnmarshalBitmap(f *testing.F) {
	b, _ := NewBitmap(1<<20, 4096)
	b.Mark(0, 8192)
	data, _ := b.MarshalBinary()
	f.Add(data)
	f.Fuzz(func(t *testing.T, data []byte) {
		bm, err := UnmarshalBitmap(data)
		if err != nil {
			return
		}
		again, _ := bm.MarshalBinary()
		if string(again) != string(data) {
			t.Fatal("round trip differs")
		}
	})
}
