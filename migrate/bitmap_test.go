package migrate

import (
	"math/rand/v2"
	"testing"
)

// The bitmap against a map of ints, over random operations.
func TestBitmapAgainstModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 63, 64, 65, 200, 1000} {
		b := NewBitmap(n)
		model := map[int]bool{}
		for step := 0; step < 2000; step++ {
			i := rng.IntN(n)
			switch rng.IntN(4) {
			case 0:
				b.Set(i)
				model[i] = true
			case 1:
				b.Clear(i)
				delete(model, i)
			case 2:
				j := i + rng.IntN(n-i+1)
				b.SetRange(i, j)
				for k := i; k < j; k++ {
					model[k] = true
				}
			case 3:
				if b.Test(i) != model[i] {
					t.Fatalf("n=%d bit %d: got %v", n, i, b.Test(i))
				}
			}
			if b.Count() != len(model) {
				t.Fatalf("n=%d count %d, model %d", n, b.Count(), len(model))
			}
		}
		// Runs cover exactly the model's bits.
		seen := 0
		for s, e := b.NextRun(0); s >= 0; s, e = b.NextRun(e) {
			if s >= e || (s > 0 && b.Test(s-1)) || (e < n && b.Test(e)) {
				t.Fatalf("n=%d bad run [%d,%d)", n, s, e)
			}
			for k := s; k < e; k++ {
				if !model[k] {
					t.Fatalf("n=%d run has unset bit %d", n, k)
				}
			}
			seen += e - s
		}
		if seen != len(model) {
			t.Fatalf("n=%d runs cover %d bits, model %d", n, seen, len(model))
		}
		// TakeSet drains in order, in batches.
		var got []uint64
		for from := 0; from < n; {
			got, from = b.TakeSet(got, from, 7)
		}
		if len(got) != len(model) || b.Count() != 0 {
			t.Fatalf("n=%d TakeSet took %d of %d, %d left", n, len(got), len(model), b.Count())
		}
		for k := 1; k < len(got); k++ {
			if got[k] <= got[k-1] {
				t.Fatalf("TakeSet out of order")
			}
		}
	}
}

func TestBitmapOrAndBounds(t *testing.T) {
	a, b := NewBitmap(130), NewBitmap(130)
	a.Set(1)
	b.Set(129)
	a.Or(b)
	if a.Count() != 2 || !a.Test(129) {
		t.Fatal("Or")
	}
	if a.NextSet(130) != -1 || a.NextSet(2) != 129 {
		t.Fatal("NextSet")
	}
	for _, f := range []func(){
		func() { a.Set(130) },
		func() { a.Test(-1) },
		func() { a.SetRange(5, 131) },
		func() { a.Or(NewBitmap(10)) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("out-of-range bitmap use did not panic")
				}
			}()
			f()
		}()
	}
}
