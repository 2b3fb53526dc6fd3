package boottime

import (
	"testing"
	"time"
)

// TestAdvances: the clock moves forward with real time (a suspend cannot
// be tested here; the kernel documents that CLOCK_BOOTTIME counts it).
func TestAdvances(t *testing.T) {
	a := Now()
	time.Sleep(20 * time.Millisecond)
	if d := Now() - a; d < 20*time.Millisecond {
		t.Fatalf("CLOCK_BOOTTIME advanced %v over a 20 ms sleep", d)
	}
	if Ms() <= 0 {
		t.Fatal("no time since boot")
	}
}
