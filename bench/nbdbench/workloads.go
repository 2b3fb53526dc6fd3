package nbdbench

import (
	"fmt"
	"strings"
)

// Workload is one fio job run against every server that can take it.
type Workload struct {
	Name string
	// RW is fio's --rw: read, write, randread or randwrite.
	RW string
	// BlockBytes is fio's --bs.
	BlockBytes int
	// QueueDepth is fio's --iodepth: requests in flight on the one NBD
	// connection fio's nbd engine opens per job.
	QueueDepth int
	// Delayed runs the servers with 1 ms added to every backend call
	// (only servers with such a knob take part).
	Delayed bool
	// Goal says whether the goal (paddock >= 1.2x the best peer)
	// applies to this row; the QD1 row is there to show growth only.
	Goal bool
}

// Sequential reports MB/s; random workloads report IOPS.
func (w Workload) Sequential() bool { return w.RW == "read" || w.RW == "write" }

// Unit is the unit of the row in the report.
func (w Workload) Unit() string {
	if w.Sequential() {
		return "MB/s"
	}
	return "IOPS"
}

// Value is the figure of a result that the report shows for w.
func (w Workload) Value(r Result) float64 {
	if w.Sequential() {
		return r.BytesPerSecond / 1e6
	}
	return r.IOPS
}

// BackendDelayMs is the latency added for delayed workloads.
const BackendDelayMs = 1

// Workloads are the rows of the benchmark, in report order.
var Workloads = []Workload{
	{Name: "seq-read-256k-qd16", RW: "read", BlockBytes: 256 << 10, QueueDepth: 16, Goal: true},
	{Name: "seq-write-256k-qd16", RW: "write", BlockBytes: 256 << 10, QueueDepth: 16, Goal: true},
	{Name: "rand-read-4k-qd32", RW: "randread", BlockBytes: 4 << 10, QueueDepth: 32, Goal: true},
	{Name: "rand-write-4k-qd32", RW: "randwrite", BlockBytes: 4 << 10, QueueDepth: 32, Goal: true},
	{Name: "rand-write-4k-qd32-1ms", RW: "randwrite", BlockBytes: 4 << 10, QueueDepth: 32, Delayed: true, Goal: true},
	{Name: "rand-write-4k-qd1-1ms", RW: "randwrite", BlockBytes: 4 << 10, QueueDepth: 1, Delayed: true},
}

// Names of the two 1 ms rows compared for queue-depth growth.
const (
	delayedQD32 = "rand-write-4k-qd32-1ms"
	delayedQD1  = "rand-write-4k-qd1-1ms"
)

// selectWorkloads returns the workloads named in list (comma-separated;
// empty: all), in report order, or an error naming the unknown ones.
func selectWorkloads(list string) ([]Workload, error) {
	want, err := subset(list, func(yield func(string)) {
		for _, w := range Workloads {
			yield(w.Name)
		}
	}, "workload")
	if err != nil {
		return nil, err
	}
	var ws []Workload
	for _, w := range Workloads {
		if want == nil || want[w.Name] {
			ws = append(ws, w)
		}
	}
	return ws, nil
}

// subset parses a comma-separated list of names, all of which must be
// known; nil means no list (everything).
func subset(list string, known func(func(string)), what string) (map[string]bool, error) {
	list = strings.TrimSpace(list)
	if list == "" {
		return nil, nil
	}
	ok := map[string]bool{}
	var all []string
	known(func(n string) { ok[n] = true; all = append(all, n) })
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if !ok[n] {
			return nil, fmt.Errorf("unknown %s %q (known: %s)", what, n, strings.Join(all, ", "))
		}
		want[n] = true
	}
	if len(want) == 0 {
		return nil, fmt.Errorf("empty %s list", what)
	}
	return want, nil
}
