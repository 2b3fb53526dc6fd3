package main

import (
	"fmt"
	"strings"
)

// formatReport renders the markdown table: one row per workload, one
// column per server, paddock's ratio to the best other server.
func formatReport(ws []workload, servers []string, results map[string]map[string][]result, machine, command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Machine: %s\n\nCommand: `%s`\n\n", machine, command)
	fmt.Fprintf(&b, "| workload | unit |")
	for _, s := range servers {
		fmt.Fprintf(&b, " %s |", s)
	}
	fmt.Fprintf(&b, " paddock / best peer |\n|---|---|")
	for range servers {
		b.WriteString("---:|")
	}
	b.WriteString("---:|\n")
	for _, w := range ws {
		unit := "IOPS"
		val := func(r result) float64 { return r.IOPS }
		if w.BS == "256k" {
			unit = "MB/s"
			val = func(r result) float64 { return r.BytesPerSecond / 1e6 }
		}
		fmt.Fprintf(&b, "| %s | %s |", w.Name, unit)
		meds := map[string]float64{}
		for _, s := range servers {
			runs := results[w.Name][s]
			if len(runs) == 0 {
				b.WriteString(" n/a |")
				continue
			}
			xs := make([]float64, len(runs))
			for i, r := range runs {
				xs[i] = val(r)
			}
			meds[s] = median(xs)
			fmt.Fprintf(&b, " %.0f |", meds[s])
		}
		best, bestName := 0.0, ""
		for s, m := range meds {
			if s != "paddock" && m > best {
				best, bestName = m, s
			}
		}
		if p, ok := meds["paddock"]; ok && best > 0 {
			fmt.Fprintf(&b, " %.2fx (%s) |\n", p/best, bestName)
		} else {
			b.WriteString(" n/a |\n")
		}
	}
	// Peak RSS: the largest seen per server over all runs.
	b.WriteString("\nPeak RSS (VmHWM) over all runs:")
	for _, s := range servers {
		var peak int64
		for _, byServer := range results {
			for _, r := range byServer[s] {
				peak = max(peak, r.PeakRSSBytes)
			}
		}
		fmt.Fprintf(&b, " %s %d MiB;", s, peak>>20)
	}
	b.WriteString("\n")
	return b.String()
}
