package blockrep

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// crashStore drops a store as a crash would: no flush, no clean mark.
func crashStore(s *Store) {
	s.al.close()
	s.closeFiles()
}

// fataler is what both testing.T and rapid.T offer.
type fataler interface {
	Helper()
	Fatal(args ...any)
}

func reopen(t fataler, dir string) *Store {
	t.Helper()
	s, err := OpenStore(dir, StoreOptions{ALExtents: 4})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wantRecovered(t *testing.T, s *Store, want []int64, wantWhole bool, when string) {
	t.Helper()
	es, whole := s.Recovered()
	if whole != wantWhole || !slices.Equal(es, want) {
		t.Fatalf("%s: recovered %v whole %v, want %v whole %v", when, es, whole, want, wantWhole)
	}
}

// The extents re-verified after a crash stay recorded through further
// crashes and clean restarts until they are resolved, and the resolution
// is durable. Before, they were kept in memory only and the log was
// marked clean at open: the second start forgot them.
func TestRecoveredRecordIsDurable(t *testing.T) {
	s, dir := newStore(t, 64<<20, StoreOptions{ALExtents: 4})
	for _, off := range []int64{1 << 20, 9 << 20} {
		if err := s.WriteAt(bytes.Repeat([]byte{1}, 4096), off, false); err != nil {
			t.Fatal(err)
		}
	}
	crashStore(s)
	s = reopen(t, dir)
	wantRecovered(t, s, []int64{0, 2}, false, "after a crash")
	crashStore(s) // a second crash before any resend: the log is clean now
	s = reopen(t, dir)
	wantRecovered(t, s, []int64{0, 2}, false, "after a second crash")
	// A write to another extent, then a crash: both kinds add up.
	if err := s.WriteAt(bytes.Repeat([]byte{2}, 4096), 20<<20, false); err != nil {
		t.Fatal(err)
	}
	crashStore(s)
	s = reopen(t, dir)
	wantRecovered(t, s, []int64{0, 2, 5}, false, "after a third crash")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, dir)
	wantRecovered(t, s, []int64{0, 2, 5}, false, "after a clean restart")
	if err := s.ResolveRecovered([]int64{2, 7}, false, 0); err != nil {
		t.Fatal(err)
	}
	wantRecovered(t, s, []int64{0, 5}, false, "after resolving extent 2")
	crashStore(s)
	s = reopen(t, dir)
	wantRecovered(t, s, []int64{0, 5}, false, "after a crash past the resolve")
	if err := s.ResolveRecovered([]int64{0, 5}, false, 0); err != nil {
		t.Fatal(err)
	}
	if s.Recovering() {
		t.Fatal("still recovering after every extent was resolved")
	}
	if _, err := os.Stat(filepath.Join(dir, recoveredFileName)); !os.IsNotExist(err) {
		t.Fatalf("an empty record left its file: %v", err)
	}
	s.Close()
}

// Past its bound the record says "the whole volume"; an unreadable one
// too (the safe side); resolving the whole volume clears it.
func TestRecoveredRecordBoundAndDamage(t *testing.T) {
	s, dir := newStore(t, 64<<20, StoreOptions{ALExtents: 4})
	many := make([]int64, maxRecoveredExtents+1)
	for i := range many {
		many[i] = int64(i)
	}
	if err := s.rec.add(many); err != nil {
		t.Fatal(err)
	}
	wantRecovered(t, s, nil, true, "past the bound")
	s.Close()
	s = reopen(t, dir)
	wantRecovered(t, s, nil, true, "past the bound, reopened")
	if err := s.ResolveRecovered([]int64{1}, false, 0); err == nil {
		t.Fatal("resolving one extent of a whole-volume record was taken")
	}
	wantRecovered(t, s, nil, true, "one extent resolved of a whole volume")
	if err := s.ResolveRecovered(nil, true, 0); err != nil {
		t.Fatal(err)
	}
	wantRecovered(t, s, nil, false, "whole volume resolved")
	s.Close()
	if err := os.WriteFile(filepath.Join(dir, recoveredFileName), []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, dir)
	defer s.Close()
	wantRecovered(t, s, nil, true, "unreadable record")
}

// TestRecoveredRecordModel: random writes, crashes, clean restarts and
// resolutions against a model of what a crash may have left old (the
// extents the log held hot at each crash, less those resolved since): the
// record names exactly those after every open, or the whole volume once
// they exceed its bound; it never forgets one.
func TestRecoveredRecordModel(t *testing.T) {
	if raceEnabled {
		if f := flag.Lookup("rapid.checks"); f != nil && f.Value.String() == "100" {
			f.Value.Set("15")
			defer f.Value.Set("100")
		}
	}
	rapid.Check(t, func(rt *rapid.T) {
		const size = 32 << 20
		const extents = size / ExtentBytes
		dir := filepath.Join(fastTempDir(t), "vol")
		s, err := CreateStore(dir, size, StoreOptions{ALExtents: 2})
		if err != nil {
			rt.Fatal(err)
		}
		suspect := map[int64]bool{}
		// written: a write since the last open. Without one the log
		// on disk still says clean (a clean stop keeps its hot
		// extents named, consistent), and a crash leaves nothing to
		// re-verify.
		written := false
		check := func(when string) {
			es, whole := s.Recovered()
			if whole {
				rt.Fatalf("%s: whole volume for %d suspect extents (bound %d)", when, len(suspect), maxRecoveredExtents)
			}
			var want []int64
			for e := range suspect {
				want = append(want, e)
			}
			slices.Sort(want)
			if !slices.Equal(es, want) {
				rt.Fatalf("%s: recovered %v, want %v", when, es, want)
			}
		}
		for i := 0; i < 30; i++ {
			switch rapid.IntRange(0, 4).Draw(rt, "op") {
			case 0, 1:
				off := rapid.Int64Range(0, size-4096).Draw(rt, "off")
				if err := s.WriteAt(make([]byte, 4096), off, false); err != nil {
					rt.Fatal(err)
				}
				written = true
			case 2:
				if written {
					for _, e := range s.HotExtents() {
						suspect[e] = true
					}
				}
				crashStore(s)
				s, written = reopen(rt, dir), false
				check("after a crash")
			case 3:
				if err := s.Close(); err != nil {
					rt.Fatal(err)
				}
				s, written = reopen(rt, dir), false
				check("after a clean restart")
			case 4:
				var res []int64
				for e := int64(0); e < extents; e++ {
					if rapid.Bool().Draw(rt, "resolve") {
						res = append(res, e)
						delete(suspect, e)
					}
				}
				if err := s.ResolveRecovered(res, false, 0); err != nil {
					rt.Fatal(err)
				}
				check("after a resolve")
			}
		}
		s.Close()
	})
}

// TestNormExtentsDropsImpossible: negative extents and extents past the
// largest volume (a forged promise, a damaged record) are dropped, so no
// offset computed from them overflows.
func TestNormExtentsDropsImpossible(t *testing.T) {
	got := normExtents([]int64{5, -1, 3, 5, maxVolumeBytes / ExtentBytes, 1 << 62, maxVolumeBytes/ExtentBytes - 1})
	want := []int64{3, 5, maxVolumeBytes/ExtentBytes - 1}
	if !slices.Equal(got, want) {
		t.Fatalf("normExtents: %v, want %v", got, want)
	}
}
