package replbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Workload is one fio job run against every target.
type Workload struct {
	Name string
	// RW is fio's --rw.
	RW         string
	BlockBytes int
	QueueDepth int
	// Fsync makes every write durable before the next: fio's --fsync=1
	// sends an NBD FLUSH after each write (fio's nbd engine cannot set
	// FUA on a write), so a cycle is WRITE then FLUSH, at QD1.
	Fsync bool
}

// Sequential workloads report MB/s, the others IOPS.
func (w Workload) Sequential() bool { return w.RW == "write" || w.RW == "read" }

// Workloads are the rows of the benchmark, in report order.
var Workloads = []Workload{
	{Name: "seq-write-256k-qd16", RW: "write", BlockBytes: 256 << 10, QueueDepth: 16},
	{Name: "rand-write-4k-qd32", RW: "randwrite", BlockBytes: 4 << 10, QueueDepth: 32},
	{Name: "sync-write-4k-qd1", RW: "randwrite", BlockBytes: 4 << 10, QueueDepth: 1, Fsync: true},
}

// RunResult is what one fio run measured.
type RunResult struct {
	IOPS           float64 `json:"iops"`
	BytesPerSecond float64 `json:"bytes_per_second"`
	// WriteP50Ns and WriteP99Ns are fio's completion latency of the
	// writes; FlushP50Ns and FlushP99Ns the latency of the FLUSH after
	// each write (Fsync workloads only).
	WriteP50Ns float64 `json:"write_p50_ns"`
	WriteP99Ns float64 `json:"write_p99_ns"`
	FlushP50Ns float64 `json:"flush_p50_ns,omitempty"`
	FlushP99Ns float64 `json:"flush_p99_ns,omitempty"`
	// ServerCores is the CPU time of the target's server processes (the
	// three nodes, or paddock serve) over the whole fio run divided by
	// its wall time: how many cores the servers kept busy. FioCores is
	// the same for fio (its own report).
	ServerCores float64 `json:"server_cores"`
	FioCores    float64 `json:"fio_cores"`
	// ServerSwitches is the servers' context switches (voluntary and
	// not, every thread) over the whole fio run, per second.
	ServerSwitches float64 `json:"server_switches_per_second"`
	Err            string  `json:"error,omitempty"`
}

// SwitchesPerWrite is the servers' context switches per write, 0 if
// unknown.
func (r RunResult) SwitchesPerWrite() float64 {
	if r.IOPS <= 0 {
		return 0
	}
	return r.ServerSwitches / r.IOPS
}

// CPUMicrosPerWrite is the servers' CPU time per write, 0 if unknown.
func (r RunResult) CPUMicrosPerWrite() float64 {
	if r.IOPS <= 0 || r.ServerCores <= 0 {
		return 0
	}
	return r.ServerCores / r.IOPS * 1e6
}

type fioLat struct {
	N           int64              `json:"N"`
	Percentiles map[string]float64 `json:"percentile"`
}

type fioOutput struct {
	Jobs []struct {
		Name   string  `json:"jobname"`
		Error  int     `json:"error"`
		UsrCPU float64 `json:"usr_cpu"`
		SysCPU float64 `json:"sys_cpu"`
		Write  struct {
			IOPS     float64 `json:"iops"`
			BWBytes  float64 `json:"bw_bytes"`
			TotalIOs int64   `json:"total_ios"`
			ClatNs   fioLat  `json:"clat_ns"`
		} `json:"write"`
		Sync struct {
			TotalIOs int64  `json:"total_ios"`
			LatNs    fioLat `json:"lat_ns"`
		} `json:"sync"`
	} `json:"jobs"`
}

// ParseFio reads fio's --output-format=json of one write job. fio's nbd
// engine prints a line before the JSON; it is skipped.
func ParseFio(out []byte) (RunResult, error) {
	start := -1
	if bytes.HasPrefix(out, []byte("{")) {
		start = 0
	} else if i := bytes.Index(out, []byte("\n{")); i >= 0 {
		start = i + 1
	}
	if start < 0 {
		return RunResult{}, fmt.Errorf("no JSON in fio output: %q", truncate(string(out), 200))
	}
	var f fioOutput
	if err := json.Unmarshal(out[start:], &f); err != nil {
		return RunResult{}, fmt.Errorf("fio JSON: %w", err)
	}
	if len(f.Jobs) != 1 {
		return RunResult{}, fmt.Errorf("fio JSON has %d jobs, want 1", len(f.Jobs))
	}
	j := f.Jobs[0]
	if j.Error != 0 {
		return RunResult{}, fmt.Errorf("fio job %q failed with error %d", j.Name, j.Error)
	}
	if j.Write.TotalIOs == 0 {
		return RunResult{}, errors.New("fio wrote nothing")
	}
	r := RunResult{IOPS: j.Write.IOPS, BytesPerSecond: j.Write.BWBytes,
		WriteP50Ns: j.Write.ClatNs.Percentiles["50.000000"], WriteP99Ns: j.Write.ClatNs.Percentiles["99.000000"],
		FioCores: (j.UsrCPU + j.SysCPU) / 100}
	if j.Sync.TotalIOs > 0 {
		r.FlushP50Ns = j.Sync.LatNs.Percentiles["50.000000"]
		r.FlushP99Ns = j.Sync.LatNs.Percentiles["99.000000"]
	}
	return r, nil
}

// measuredArgs is fio's command line for a time-based run of w.
func measuredArgs(w Workload, uri string, runtime, ramp time.Duration, sizeBytes int64) []string {
	args := []string{
		"--name=" + w.Name, "--ioengine=nbd", "--uri=" + uri, "--rw=" + w.RW,
		fmt.Sprintf("--bs=%d", w.BlockBytes), fmt.Sprintf("--iodepth=%d", w.QueueDepth),
		fmt.Sprintf("--size=%d", sizeBytes), "--time_based",
		fmt.Sprintf("--runtime=%dms", runtime.Milliseconds()), fmt.Sprintf("--ramp_time=%dms", ramp.Milliseconds()),
		// Random offsets without fio's map of what was touched (it
		// costs fio CPU; the runs are time based anyway).
		"--norandommap", "--randrepeat=0", "--output-format=json",
	}
	if w.Fsync {
		args = append(args, "--fsync=1")
	}
	return args
}

// fillArgs writes sizeBytes sequentially in 1 MiB writes, QD16, then
// flushes: used to lay the data down before measuring, and as the writes
// a killed replica misses.
func fillArgs(uri string, sizeBytes int64) []string {
	return []string{"--name=fill", "--ioengine=nbd", "--uri=" + uri, "--rw=write", "--bs=1M", "--iodepth=16",
		fmt.Sprintf("--size=%d", sizeBytes), "--end_fsync=1", "--randrepeat=0", "--output-format=json"}
}

// runFio runs fio with args and parses its output. A run that takes far
// longer than limit is killed and reported as a hang.
func runFio(ctx context.Context, limit time.Duration, args []string) (RunResult, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "fio", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// fio's job runs in a child process that holds stdout open: the
	// whole process group is killed, not only fio.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if ctx.Err() == context.DeadlineExceeded {
		return RunResult{}, fmt.Errorf("fio did not finish within %v (server hung?); stderr: %s", limit, truncate(stderr.String(), 400))
	}
	if err != nil {
		return RunResult{}, fmt.Errorf("fio: %v; stderr: %s", err, truncate(strings.TrimSpace(stderr.String()), 400))
	}
	return ParseFio(out)
}

// cpuSeconds is the user+system CPU time of the processes, from
// /proc/PID/stat (clock ticks of 10 ms: USER_HZ is 100 on Linux).
func cpuSeconds(pids []int) float64 {
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The command may hold spaces: fields count from after ")".
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			s = s[i+1:]
		}
		fs := strings.Fields(s)
		if len(fs) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(fs[11], 10, 64)
		k, _ := strconv.ParseInt(fs[12], 10, 64)
		ticks += u + k
	}
	return float64(ticks) / 100
}

// contextSwitches sums the context switches of every thread of the
// processes (threads that exited are not counted; Go keeps its threads).
func contextSwitches(pids []int) float64 {
	var n int64
	for _, pid := range pids {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(l, ":"); ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
					x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					n += x
				}
			}
		}
	}
	return float64(n)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
