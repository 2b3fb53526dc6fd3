package blockrep

import (
	"testing"
	"time"
)

func TestResyncRate(t *testing.T) {
	var r resyncRate
	t0 := time.Unix(1000, 0)
	if got := r.observe(t0, 0); got != 0 {
		t.Fatalf("one sample: %d, want 0 (unknown)", got)
	}
	// 100 MB/s for two seconds, sampled every 500 ms.
	var got int64
	for i := 1; i <= 4; i++ {
		got = r.observe(t0.Add(time.Duration(i)*500*time.Millisecond), int64(i)*50e6)
	}
	if got != 100e6 {
		t.Fatalf("rate %d, want 100e6", got)
	}
	// Samples closer than the sampling interval are not recorded.
	if got = r.observe(t0.Add(2100*time.Millisecond), 999e6); got != 100e6 {
		t.Fatalf("rate after a close sample %d, want 100e6", got)
	}
	// After a long idle gap the old samples leave the window.
	if got = r.observe(t0.Add(time.Minute), 300e6); got != 0 {
		t.Fatalf("rate after an idle minute %d, want 0 (one sample in the window)", got)
	}
	if got = r.observe(t0.Add(time.Minute+time.Second), 400e6); got != 100e6 {
		t.Fatalf("rate after the gap %d, want 100e6", got)
	}
	// A new resync (the counter went back) starts over.
	if got = r.observe(t0.Add(time.Minute+2*time.Second), 10); got != 0 {
		t.Fatalf("rate of a new resync %d, want 0", got)
	}
}
