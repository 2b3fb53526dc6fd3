package replbench

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"syscall"
)

// Goals of the issue.
const (
	GoalThroughputRatio   = 0.5 // 3 replicas / single node
	GoalResyncBytesPerSec = 500e6
	GoalResentRatio       = 1.25
)

// Report is everything a run measured.
type Report struct {
	Command        string  `json:"command"`
	Date           string  `json:"date"`
	Machine        string  `json:"machine"`
	Dir            string  `json:"dir"`
	Reps           int     `json:"reps"`
	RuntimeSeconds float64 `json:"runtime_seconds"`
	RampSeconds    float64 `json:"ramp_seconds"`
	SizeBytes      int64   `json:"size_bytes"`
	// ResyncBytes is 0 when the resync trials were skipped.
	ResyncBytes int64    `json:"resync_bytes"`
	Targets     []Target `json:"targets"`
	Workloads   []string `json:"workloads"`
	// Runs[workload][target] holds one result per repetition.
	Runs        map[string]map[string][]RunResult `json:"runs"`
	Resync      []ResyncTrial                     `json:"resync"`
	Interrupted bool                              `json:"interrupted,omitempty"`
}

// JSON is the report as indented JSON.
func (r *Report) JSON() ([]byte, error) { return json.MarshalIndent(r, "", "  ") }

// median of the values that are not NaN-like (runs that failed are left
// out); ok is false when none is left.
func median(vs []float64) (float64, bool) {
	if len(vs) == 0 {
		return 0, false
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2], true
	}
	return (s[n/2-1] + s[n/2]) / 2, true
}

// cell is the median over the successful runs of one figure.
func (r *Report) cell(w, t string, f func(RunResult) float64) (float64, bool) {
	var vs []float64
	for _, x := range r.Runs[w][t] {
		if x.Err == "" {
			vs = append(vs, f(x))
		}
	}
	return median(vs)
}

func workloadByName(name string) Workload {
	for _, w := range Workloads {
		if w.Name == name {
			return w
		}
	}
	return Workload{Name: name}
}

type row struct {
	label, unit string
	f           func(RunResult) float64
	ratio       bool // show 3 replicas / single node and the goal
	higher      bool // higher is better
}

func rowsOf(w Workload) []row {
	switch {
	case w.Fsync:
		return []row{
			{w.Name + " (write+flush)", "writes/s", func(r RunResult) float64 { return r.IOPS }, true, true},
			{w.Name + " write p50", "µs", func(r RunResult) float64 { return r.WriteP50Ns / 1e3 }, false, false},
			{w.Name + " write p99", "µs", func(r RunResult) float64 { return r.WriteP99Ns / 1e3 }, false, false},
			{w.Name + " flush p50", "µs", func(r RunResult) float64 { return r.FlushP50Ns / 1e3 }, false, false},
			{w.Name + " flush p99", "µs", func(r RunResult) float64 { return r.FlushP99Ns / 1e3 }, false, false},
		}
	case w.Sequential():
		return []row{{w.Name, "MB/s", func(r RunResult) float64 { return r.BytesPerSecond / 1e6 }, true, true}}
	default:
		return []row{{w.Name, "IOPS", func(r RunResult) float64 { return r.IOPS }, true, true}}
	}
}

func fmtNum(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// Markdown is the report as the markdown of BENCHMARKS.md's section (no
// heading): setup, command, the median table, the resync table and the
// goals.
func (r *Report) Markdown() string {
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	p("Machine: %s.\n\n", r.Machine)
	p("Command: `%s` (%s)\n\n", r.Command, r.Date)
	p("Setup: 3 `paddock node` processes on 127.0.0.31-33, volumes of %s with 1, 2 and 3 replicas (primary on n1, where fio connects), and `paddock serve` of a %s file on 127.0.0.30 as the single-node baseline; data on %s. fio's nbd engine, one connection, %gs measured after %gs of ramp, every cell the median of %d repetitions, targets interleaved round-robin in every repetition. The sync-write rows are 4 KiB random writes at QD1 with `--fsync=1` (an NBD FLUSH after every write: fio's nbd engine cannot set FUA), latencies as fio reports them for the write and for the flush.\n\n",
		humanMiB(r.SizeBytes), humanMiB(r.SizeBytes), r.Dir, r.RuntimeSeconds, r.RampSeconds, r.Reps)
	if r.Interrupted {
		p("**Interrupted**: the table holds the runs done before the interruption.\n\n")
	}
	p("| workload | unit |")
	for _, t := range r.Targets {
		p(" %s |", t.Label)
	}
	p(" 3 replicas / single node |\n|---|---|")
	for range r.Targets {
		p("---:|")
	}
	p("---:|\n")
	var failed []string
	for _, wn := range r.Workloads {
		w := workloadByName(wn)
		for _, rw := range rowsOf(w) {
			p("| %s | %s |", rw.label, rw.unit)
			for _, t := range r.Targets {
				if v, ok := r.cell(wn, t.Name, rw.f); ok {
					p(" %s |", fmtNum(v))
				} else {
					p(" failed |")
				}
			}
			base, ok1 := r.cell(wn, "single", rw.f)
			three, ok3 := r.cell(wn, "r3", rw.f)
			if ok1 && ok3 && base > 0 {
				ratio := three / base
				mark := ""
				if rw.ratio {
					if ratio >= GoalThroughputRatio {
						mark = " (goal ≥ 0.5x: met)"
					} else {
						mark = " (goal ≥ 0.5x: **missed**)"
					}
				}
				p(" %.2fx%s |\n", ratio, mark)
			} else {
				p(" n/a |\n")
			}
		}
		for _, t := range r.Targets {
			for i, x := range r.Runs[wn][t.Name] {
				if x.Err != "" {
					failed = append(failed, fmt.Sprintf("%s on %s, repetition %d: %s", wn, t.Label, i+1, x.Err))
				}
			}
		}
	}
	p("\n")
	p("CPU (medians): the servers' CPU time per write in µs; in brackets the cores kept busy by the servers / by fio, and the servers' context switches per write (all threads). For the replicated volumes the servers are the three node processes: the secondaries' work counts.\n\n")
	p("| workload |")
	for _, t := range r.Targets {
		p(" %s |", t.Label)
	}
	p("\n|---|")
	for range r.Targets {
		p("---:|")
	}
	p("\n")
	for _, wn := range r.Workloads {
		p("| %s |", wn)
		for _, t := range r.Targets {
			us, ok := r.cell(wn, t.Name, RunResult.CPUMicrosPerWrite)
			sc, _ := r.cell(wn, t.Name, func(x RunResult) float64 { return x.ServerCores })
			fc, _ := r.cell(wn, t.Name, func(x RunResult) float64 { return x.FioCores })
			sw, _ := r.cell(wn, t.Name, RunResult.SwitchesPerWrite)
			if ok {
				p(" %s µs (%.2f / %.2f, %s sw) |", fmtNum(us), sc, fc, fmtNum(sw))
			} else {
				p(" failed |")
			}
		}
		p("\n")
	}
	p("\n")
	for _, f := range failed {
		p("- failed run: %s\n", f)
	}
	if len(failed) > 0 {
		p("\n")
	}
	if r.ResyncBytes > 0 {
		r.resyncMarkdown(&b)
	}
	return b.String()
}

func (r *Report) resyncMarkdown(b *strings.Builder) {
	p := func(f string, a ...any) { fmt.Fprintf(b, f, a...) }
	var ok []ResyncTrial
	for _, t := range r.Resync {
		if t.Err == "" {
			ok = append(ok, t)
		}
	}
	p("Resync: a 3-replica volume of %s, written whole once before the trials; in every repetition n3 is killed with `kill -9`, fio writes %s (1 MiB sequential writes, QD16) through the primary on n1 into one half of the volume (the halves in turn), n3 is restarted and `volume status` is polled every %v until every replica is UpToDate. Every extent of the volume is in n3's activity log, so each restart names the half n3 did not miss for a comparison too: a resend of it would show in the ratio. %d of %d trials succeeded.\n\n",
		humanMiB(2*r.ResyncBytes), humanMiB(r.ResyncBytes), resyncPollStep, len(ok), len(r.Resync))
	for i, t := range r.Resync {
		if t.Err != "" {
			p("- trial %d failed: %s\n", i+1, t.Err)
		} else {
			p("- trial %d: %s written at %s, %s missed, %s resent (%.2fx), %.2f s Syncing (%.0f MB/s)\n", i+1, humanMiB(t.WrittenBytes),
				humanMiB(t.OffsetBytes), humanMiB(t.MissedBytes), humanMiB(t.ResentBytes), t.ResentRatio(), t.SyncingSeconds, t.SyncingBytesPerSecond()/1e6)
		}
	}
	p("\n")
	if len(ok) == 0 {
		p("\n")
		return
	}
	p("| measurement | median | min | max | goal |\n|---|---:|---:|---:|---|\n")
	stat := func(label, unit string, f func(ResyncTrial) float64, goal string) {
		var vs []float64
		for _, t := range ok {
			vs = append(vs, f(t))
		}
		m, _ := median(vs)
		s := append([]float64(nil), vs...)
		sort.Float64s(s)
		p("| %s | %s %s | %s | %s | %s |\n", label, fmtNum(m), unit, fmtNum(s[0]), fmtNum(s[len(s)-1]), goal)
	}
	rate := func(f func(ResyncTrial) float64) string {
		var vs []float64
		for _, t := range ok {
			vs = append(vs, f(t))
		}
		m, _ := median(vs)
		if m >= GoalResyncBytesPerSec/1e6 {
			return "≥ 500 MB/s: met"
		}
		return "≥ 500 MB/s: **missed**"
	}
	syncRate := func(t ResyncTrial) float64 { return t.SyncingBytesPerSecond() / 1e6 }
	ratio := func(t ResyncTrial) float64 { return t.ResentRatio() }
	var rs []float64
	for _, t := range ok {
		rs = append(rs, ratio(t))
	}
	mr, _ := median(rs)
	ratioGoal := "≤ 1.25: met"
	if mr > GoalResentRatio {
		ratioGoal = "≤ 1.25: **missed**"
	}
	stat("resync rate (resent / time Syncing)", "MB/s", syncRate, rate(syncRate))
	stat("time Syncing (the primary's status: resync start to the replica's return to the generation)", "s", func(t ResyncTrial) float64 { return t.SyncingSeconds }, "")
	stat("restart of n3 to UpToDate", "s", func(t ResyncTrial) float64 { return t.RestartToUpToDateSeconds }, "")
	stat("bytes missed by n3", "MiB", func(t ResyncTrial) float64 { return float64(t.MissedBytes) / (1 << 20) }, "")
	stat("bytes resent to n3", "MiB", func(t ResyncTrial) float64 { return float64(t.ResentBytes) / (1 << 20) }, "")
	stat("resent / missed", "x", ratio, ratioGoal)
	p("\n")
}

// Section markers: UpdateSection replaces what lies between them and
// keeps the rest of the section (notes written by hand).
const (
	SectionHeading = "## Replicated volumes"
	beginMarker    = "<!-- paddock bench replication: begin (generated; text outside the markers is kept) -->"
	endMarker      = "<!-- paddock bench replication: end -->"
)

// UpdateSection puts generated into the "Replicated volumes" section of
// the markdown file at path: between the markers when the section has
// them, else after the section's heading (a missing section is added at
// the end). Nothing outside that section changes.
func UpdateSection(path, generated string) error {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	out, err := updateSection(string(b), generated)
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(out), 0o644)
}

func updateSection(doc, generated string) (string, error) {
	block := beginMarker + "\n\n" + strings.TrimSpace(generated) + "\n\n" + endMarker + "\n"
	start := -1
	if strings.HasPrefix(doc, SectionHeading) {
		start = 0
	} else if i := strings.Index(doc, "\n"+SectionHeading); i >= 0 {
		start = i + 1
	}
	if start < 0 {
		if doc != "" && !strings.HasSuffix(doc, "\n") {
			doc += "\n"
		}
		if doc != "" {
			doc += "\n"
		}
		return doc + SectionHeading + " (issue 4)\n\n" + block, nil
	}
	// The section runs to the next heading of level 2 (or the end).
	end := len(doc)
	headEnd := strings.Index(doc[start:], "\n")
	if headEnd < 0 {
		return doc + "\n\n" + block, nil
	}
	headEnd += start + 1
	if i := strings.Index(doc[headEnd:], "\n## "); i >= 0 {
		end = headEnd + i + 1
	}
	sec := doc[headEnd:end]
	bi, ei := strings.Index(sec, beginMarker), strings.Index(sec, endMarker)
	switch {
	case bi >= 0 && ei > bi:
		sec = sec[:bi] + block + strings.TrimPrefix(sec[ei+len(endMarker):], "\n")
	case bi >= 0 || ei >= 0:
		return "", errors.New("the Replicated volumes section has only one of its markers")
	default:
		sec = "\n" + block + sec
	}
	return doc[:headEnd] + sec + doc[end:], nil
}

// DescribeMachine names the machine, the tools and the data directory's
// filesystem.
func DescribeMachine(dir string) string {
	parts := []string{fmt.Sprintf("%d cores", runtime.NumCPU())}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				parts[0] += " (" + strings.TrimSpace(v) + ")"
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		parts = append(parts, fmt.Sprintf("%.1f GiB RAM", float64(kb)/(1<<20)))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		parts = append(parts, "Linux "+strings.TrimSpace(string(b)))
	}
	if out, err := exec.Command("fio", "--version").Output(); err == nil {
		parts = append(parts, strings.TrimSpace(string(out)))
	}
	parts = append(parts, runtime.Version())
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) == nil {
		fs := "not tmpfs"
		if st.Type == 0x01021994 {
			fs = "tmpfs"
		}
		parts = append(parts, dir+" is "+fs)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if fs := strings.Fields(string(b)); len(fs) >= 3 {
			parts = append(parts, "load average at start "+strings.Join(fs[:3], " "))
		}
	}
	return strings.Join(parts, ", ")
}
