package quorumbench

import (
	"strings"
	"testing"
)

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	if Percentile(xs, 50) != 3 || Percentile(xs, 100) != 5 || Percentile(xs, 0) != 1 || Percentile(nil, 50) != 0 {
		t.Fatal("percentile")
	}
}

func TestMarkdown(t *testing.T) {
	r := &Result{TokenMs: 1000, KillMs: []float64{1000, 1100, 1050}, PartitionMs: []float64{900}, Load: true}
	out := r.Markdown("paddock bench quorum")
	for _, want := range []string{"| kill -9 to survivors' new membership (CPU loaded) | 3 | 1050 ms |", "| partition to minority inquorate (CPU loaded) | 1 | 900 ms |"} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %q:\n%s", want, out)
		}
	}
}
