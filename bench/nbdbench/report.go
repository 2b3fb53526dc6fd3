package nbdbench

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Goals of the issue, checked in the report.
const (
	goalRatioToBestPeer = 1.2
	goalRatioToGoNBD    = 20
)

// Report is the outcome of a benchmark run: the raw results and what is
// needed to render them.
type Report struct {
	Machine        Machine    `json:"machine"`
	Command        string     `json:"command"`
	RuntimeSeconds float64    `json:"runtime_seconds"`
	RampSeconds    float64    `json:"ramp_seconds"`
	Reps           int        `json:"reps"`
	SizeBytes      int64      `json:"size_bytes"`
	Servers        []string   `json:"servers"`
	Workloads      []Workload `json:"workloads"`
	// Missing are the selected servers that could not run, with why.
	Missing map[string]string `json:"missing,omitempty"`
	// Notes say how each server was run.
	Notes map[string]string `json:"notes,omitempty"`
	// Runs are workload -> server -> one result per repetition.
	Runs map[string]map[string][]Result `json:"runs"`
	// ServerLogs are the unexpected lines the servers printed.
	ServerLogs  []string  `json:"server_logs,omitempty"`
	Interrupted bool      `json:"interrupted,omitempty"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished"`
}

// Median is the median of the successful runs of w on server, in w's
// unit; ok is false when there is none.
func (r *Report) Median(w Workload, server string) (float64, bool) {
	if !slices.Contains(r.Servers, server) {
		return 0, false
	}
	var xs []float64
	for _, res := range r.Runs[w.Name][server] {
		if res.Err == "" {
			xs = append(xs, w.Value(res))
		}
	}
	if len(xs) == 0 {
		return 0, false
	}
	return median(xs), true
}

// BestPeer is the server other than paddock with the highest median on w.
func (r *Report) BestPeer(w Workload) (name string, value float64, ok bool) {
	for _, s := range r.Servers {
		if s == PaddockName {
			continue
		}
		if m, has := r.Median(w, s); has && m > value {
			name, value, ok = s, m, true
		}
	}
	return name, value, ok
}

// RatioToBestPeer is paddock's median over the best peer's.
func (r *Report) RatioToBestPeer(w Workload) (ratio float64, peer string, ok bool) {
	p, okP := r.Median(w, PaddockName)
	peer, best, okB := r.BestPeer(w)
	if !okP || !okB || best <= 0 {
		return 0, "", false
	}
	return p / best, peer, true
}

// workload finds a selected workload by name.
func (r *Report) workload(name string) (Workload, bool) {
	for _, w := range r.Workloads {
		if w.Name == name {
			return w, true
		}
	}
	return Workload{}, false
}

// summary is the derived figures, for --json.
type summary struct {
	// Medians are workload -> server -> median in the workload's unit.
	Medians map[string]map[string]float64 `json:"medians"`
	Units   map[string]string             `json:"units"`
	// RatioToBestPeer is paddock / best peer per workload.
	RatioToBestPeer map[string]float64 `json:"ratio_to_best_peer"`
	BestPeer        map[string]string  `json:"best_peer"`
	// QueueDepthGrowth is paddock's 1 ms QD32 IOPS over its QD1 IOPS.
	QueueDepthGrowth float64 `json:"queue_depth_growth,omitempty"`
	// RatioToGoNBD1ms is paddock / go-nbd on the 1 ms QD32 row.
	RatioToGoNBD1ms float64 `json:"ratio_to_go_nbd_1ms,omitempty"`
	// PeakRSSBytesQD32 is each server's highest VmHWM over the QD32 runs.
	PeakRSSBytesQD32 map[string]int64 `json:"peak_rss_bytes_qd32"`
}

func (r *Report) summary() summary {
	s := summary{
		Medians: map[string]map[string]float64{}, Units: map[string]string{},
		RatioToBestPeer: map[string]float64{}, BestPeer: map[string]string{},
		PeakRSSBytesQD32: r.peakRSSQD32(),
	}
	for _, w := range r.Workloads {
		s.Units[w.Name] = w.Unit()
		s.Medians[w.Name] = map[string]float64{}
		for _, srv := range r.Servers {
			if m, ok := r.Median(w, srv); ok {
				s.Medians[w.Name][srv] = m
			}
		}
		if ratio, peer, ok := r.RatioToBestPeer(w); ok {
			s.RatioToBestPeer[w.Name], s.BestPeer[w.Name] = ratio, peer
		}
	}
	s.QueueDepthGrowth, _ = r.queueDepthGrowth()
	s.RatioToGoNBD1ms, _ = r.ratioToGoNBD1ms()
	return s
}

// queueDepthGrowth is paddock's IOPS at QD32 over QD1 with the 1 ms backend.
func (r *Report) queueDepthGrowth() (float64, bool) {
	w32, ok32 := r.workload(delayedQD32)
	w1, ok1 := r.workload(delayedQD1)
	if !ok32 || !ok1 {
		return 0, false
	}
	a, okA := r.Median(w32, PaddockName)
	b, okB := r.Median(w1, PaddockName)
	if !okA || !okB || b <= 0 {
		return 0, false
	}
	return a / b, true
}

// ratioToGoNBD1ms is paddock over go-nbd on the 1 ms QD32 row.
func (r *Report) ratioToGoNBD1ms() (float64, bool) {
	w, ok := r.workload(delayedQD32)
	if !ok {
		return 0, false
	}
	p, okP := r.Median(w, PaddockName)
	g, okG := r.Median(w, GoNBDName)
	if !okP || !okG || g <= 0 {
		return 0, false
	}
	return p / g, true
}

// peakRSSQD32 is each server's highest VmHWM over its QD32 runs.
func (r *Report) peakRSSQD32() map[string]int64 {
	peak := map[string]int64{}
	for _, w := range r.Workloads {
		if w.QueueDepth != 32 {
			continue
		}
		for _, s := range r.Servers {
			for _, res := range r.Runs[w.Name][s] {
				if res.Err == "" {
					peak[s] = max(peak[s], res.PeakRSSBytes)
				}
			}
		}
	}
	return peak
}

// JSON is the report with its derived figures, indented.
func (r *Report) JSON() ([]byte, error) {
	return json.MarshalIndent(struct {
		*Report
		Summary summary `json:"summary"`
	}{r, r.summary()}, "", "  ")
}

// Markdown renders the report. Headings are level 3 and below, so that it
// sits under a level-2 section of BENCHMARKS.md.
func (r *Report) Markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }

	p("- Machine: %s\n", r.Machine)
	if r.Command != "" {
		p("- Command: `%s`\n", r.Command)
	}
	p("- Each run: one fio job (`--ioengine=nbd`, one connection), %s measured after a %s ramp, on a %s file in tmpfs rewritten with the same data before every run, against a freshly started server. %d repetitions, servers interleaved (round-robin, order rotated each repetition); figures are medians.\n",
		seconds(r.RuntimeSeconds), seconds(r.RampSeconds), humanBytes(r.SizeBytes), r.Reps)
	if !r.Started.IsZero() {
		p("- Run: %s to %s.\n", r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Finished.UTC().Format("15:04 UTC"))
	}
	if r.Interrupted {
		p("- **Interrupted**: the figures are from the runs done before the interruption.\n")
	}
	for _, s := range sortedKeys(r.Missing) {
		p("- **Missing**: %s: %s\n", s, r.Missing[s])
	}

	p("\n### Throughput (medians)\n\n")
	p("| workload | unit |")
	for _, s := range r.Servers {
		p(" %s |", s)
	}
	p(" paddock / best peer |\n|---|---|")
	for range r.Servers {
		p("---:|")
	}
	p("---|\n")
	for _, w := range r.Workloads {
		p("| %s | %s |", w.Name, w.Unit())
		for _, s := range r.Servers {
			p(" %s |", r.cell(w, s))
		}
		if ratio, peer, ok := r.RatioToBestPeer(w); ok {
			p(" %.2fx (%s) |\n", ratio, peer)
		} else {
			p(" n/a |\n")
		}
	}

	if g, ok := r.queueDepthGrowth(); ok {
		w1, _ := r.workload(delayedQD1)
		w32, _ := r.workload(delayedQD32)
		m1, _ := r.Median(w1, PaddockName)
		m32, _ := r.Median(w32, PaddockName)
		p("\nWith the 1 ms backend, paddock does %s IOPS at QD1 and %s IOPS at QD32: **%.1fx** from queue depth.", num(m1), num(m32), g)
		if ratio, ok := r.ratioToGoNBD1ms(); ok {
			gw, _ := r.Median(w32, GoNBDName)
			p(" go-nbd does %s IOPS at QD32: paddock / go-nbd = **%.1fx**.", num(gw), ratio)
		}
		p("\n")
	}

	p("\n### Goals\n\n")
	for _, w := range r.Workloads {
		if !w.Goal {
			continue
		}
		if ratio, peer, ok := r.RatioToBestPeer(w); ok {
			p("- %s: paddock / best peer (%s) = %.3fx, goal >= %.1fx: **%s**\n", w.Name, peer, ratio, goalRatioToBestPeer, verdict(ratio >= goalRatioToBestPeer))
		} else {
			p("- %s: paddock / best peer: not measured\n", w.Name)
		}
	}
	if g, ok := r.queueDepthGrowth(); ok {
		p("- 1 ms backend, IOPS grow with queue depth (QD32 / QD1 = %.2fx): **%s**\n", g, verdict(g > 1))
	}
	if ratio, ok := r.ratioToGoNBD1ms(); ok {
		p("- 1 ms backend, paddock / go-nbd = %.2fx, goal >= %dx: **%s**\n", ratio, goalRatioToGoNBD, verdict(ratio >= goalRatioToGoNBD))
	}

	peak := r.peakRSSQD32()
	if len(peak) > 0 {
		p("\n### Peak RSS during the QD32 runs\n\n")
		p("VmHWM of the server process (a fresh process per run), highest over the repetitions.\n\n")
		p("| workload |")
		for _, s := range r.Servers {
			p(" %s |", s)
		}
		p("\n|---|")
		for range r.Servers {
			p("---:|")
		}
		p("\n")
		for _, w := range r.Workloads {
			if w.QueueDepth != 32 {
				continue
			}
			p("| %s |", w.Name)
			for _, s := range r.Servers {
				var m int64
				for _, res := range r.Runs[w.Name][s] {
					if res.Err == "" {
						m = max(m, res.PeakRSSBytes)
					}
				}
				if m == 0 {
					p(" n/a |")
				} else {
					p(" %s |", mib(m))
				}
			}
			p("\n")
		}
		p("| **max** |")
		for _, s := range r.Servers {
			if v, ok := peak[s]; ok && v > 0 {
				p(" **%s** |", mib(v))
			} else {
				p(" n/a |")
			}
		}
		p("\n")
	}

	p("\n### Server CPU per request (medians)\n\n")
	p("User + system CPU time of the server process over fio's measured window, divided by the requests done: what each server spends per request on a machine where fio competes for the same cores.\n\n")
	p("| workload |")
	for _, s := range r.Servers {
		p(" %s |", s)
	}
	p("\n|---|")
	for range r.Servers {
		p("---:|")
	}
	p("\n")
	for _, w := range r.Workloads {
		p("| %s |", w.Name)
		for _, s := range r.Servers {
			var xs []float64
			for _, res := range r.Runs[w.Name][s] {
				if c := res.CPUMicrosPerIO(); res.Err == "" && c > 0 {
					xs = append(xs, c)
				}
			}
			if len(xs) == 0 {
				p(" n/a |")
			} else {
				p(" %.1f µs |", median(xs))
			}
		}
		p("\n")
	}

	p("\n### Every run\n\n")
	p("In the row's unit, in repetition order; spread is (max - min) / median.\n\n")
	p("| workload | server | runs | median | spread |\n|---|---|---|---:|---:|\n")
	for _, w := range r.Workloads {
		for _, s := range r.Servers {
			runs := r.Runs[w.Name][s]
			if len(runs) == 0 {
				continue
			}
			var parts []string
			var xs []float64
			for _, res := range runs {
				if res.Err != "" {
					parts = append(parts, "failed")
					continue
				}
				v := w.Value(res)
				xs = append(xs, v)
				parts = append(parts, num(v))
			}
			med, spread := "n/a", "n/a"
			if len(xs) > 0 {
				m := median(xs)
				med = num(m)
				if m > 0 {
					spread = fmt.Sprintf("%.0f%%", (slices.Max(xs)-slices.Min(xs))/m*100)
				}
			}
			p("| %s | %s | %s | %s | %s |\n", w.Name, s, strings.Join(parts, ", "), med, spread)
		}
	}

	if len(r.Notes) > 0 {
		p("\n### How each server is run\n\n")
		for _, s := range r.Servers {
			if n := r.Notes[s]; n != "" {
				p("- %s: %s\n", s, n)
			}
		}
	}

	var failed []string
	for _, w := range r.Workloads {
		for _, s := range r.Servers {
			for i, res := range r.Runs[w.Name][s] {
				if res.Err != "" {
					failed = append(failed, fmt.Sprintf("- %s on %s, repetition %d: %s", w.Name, s, i+1, res.Err))
				}
			}
		}
	}
	if len(failed) > 0 || len(r.ServerLogs) > 0 {
		p("\n### Failures and server output\n\n")
		for _, f := range failed {
			p("%s\n", f)
		}
		const maxLines = 40
		for i, l := range r.ServerLogs {
			if i == maxLines {
				p("- ... %d more lines\n", len(r.ServerLogs)-maxLines)
				break
			}
			p("- `%s`\n", strings.ReplaceAll(truncate(l, 300), "`", "'"))
		}
	}
	return b.String()
}

// cell is one table cell: the median, with the failures counted.
func (r *Report) cell(w Workload, server string) string {
	runs := r.Runs[w.Name][server]
	if len(runs) == 0 {
		return "n/a"
	}
	failed := 0
	for _, res := range runs {
		if res.Err != "" {
			failed++
		}
	}
	m, ok := r.Median(w, server)
	if !ok {
		return "failed"
	}
	if failed > 0 {
		return fmt.Sprintf("%s (%d/%d failed)", num(m), failed, len(runs))
	}
	return num(m)
}

// num prints a figure: whole numbers from 100 up, one decimal below.
func num(v float64) string {
	if math.Abs(v) >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT met"
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func seconds(s float64) string { return (time.Duration(s * float64(time.Second))).String() }

func humanBytes(b int64) string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", b>>30)
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", b>>20)
	}
	return fmt.Sprintf("%d bytes", b)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
