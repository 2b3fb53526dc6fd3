package nbdbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Result is what one fio run measured, plus what the harness saw of the
// server process during it.
type Result struct {
	IOPS           float64 `json:"iops"`
	BytesPerSecond float64 `json:"bytes_per_second"`
	// MeanLatencyNs and P99LatencyNs are fio's completion latency.
	MeanLatencyNs float64 `json:"mean_latency_ns"`
	P99LatencyNs  float64 `json:"p99_latency_ns"`
	// PeakRSSBytes is the server's VmHWM at the end of the run (each run
	// starts a fresh server process, so it covers that run only).
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// ServerCPUSeconds is the server's user+system CPU time over fio's
	// measured window (after the ramp), 0 if it could not be read.
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
	// MeasuredSeconds is the length of fio's measured window.
	MeasuredSeconds float64 `json:"measured_seconds"`
	// Err is set when the run failed; the other fields are then zero.
	Err string `json:"error,omitempty"`
}

// CPUMicrosPerIO is the server's CPU time per request, 0 if unknown.
func (r Result) CPUMicrosPerIO() float64 {
	ios := r.IOPS * r.MeasuredSeconds
	if ios <= 0 || r.ServerCPUSeconds <= 0 {
		return 0
	}
	return r.ServerCPUSeconds / ios * 1e6
}

// fioDirection is one direction of a job in fio's --output-format=json.
type fioDirection struct {
	IOPS      float64 `json:"iops"`
	BWBytes   float64 `json:"bw_bytes"`
	RuntimeMs float64 `json:"runtime"`
	TotalIOs  int64   `json:"total_ios"`
	ClatNs    struct {
		Mean        float64            `json:"mean"`
		N           int64              `json:"N"`
		Percentiles map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

// fioOutput is the part of fio's JSON the harness reads.
type fioOutput struct {
	Version string `json:"fio version"`
	Jobs    []struct {
		Name  string       `json:"jobname"`
		Error int          `json:"error"`
		Read  fioDirection `json:"read"`
		Write fioDirection `json:"write"`
	} `json:"jobs"`
}

// ParseFio reads fio's --output-format=json output. fio's nbd engine
// prints "fio: connected to NBD server" on stdout before the JSON, so
// anything before the first line that starts with "{" is skipped.
func ParseFio(out []byte) (Result, error) {
	start := -1
	if bytes.HasPrefix(out, []byte("{")) {
		start = 0
	} else if i := bytes.Index(out, []byte("\n{")); i >= 0 {
		start = i + 1
	}
	if start < 0 {
		return Result{}, fmt.Errorf("no JSON in fio output: %q", truncate(string(out), 200))
	}
	var f fioOutput
	if err := json.Unmarshal(out[start:], &f); err != nil {
		return Result{}, fmt.Errorf("fio JSON: %w", err)
	}
	if len(f.Jobs) != 1 {
		return Result{}, fmt.Errorf("fio JSON has %d jobs, want 1", len(f.Jobs))
	}
	j := f.Jobs[0]
	if j.Error != 0 {
		return Result{}, fmt.Errorf("fio job %q failed with error %d", j.Name, j.Error)
	}
	d := j.Read
	if j.Write.TotalIOs > d.TotalIOs {
		d = j.Write
	}
	if d.TotalIOs == 0 {
		return Result{}, errors.New("fio did no I/O")
	}
	return Result{
		IOPS:            d.IOPS,
		BytesPerSecond:  d.BWBytes,
		MeanLatencyNs:   d.ClatNs.Mean,
		P99LatencyNs:    d.ClatNs.Percentiles["99.000000"],
		MeasuredSeconds: d.RuntimeMs / 1000,
	}, nil
}

// fioArgs is fio's command line for one run of w against uri.
func fioArgs(w Workload, uri string, runtime, ramp time.Duration, sizeBytes int64) []string {
	return []string{
		"--name=" + w.Name,
		"--ioengine=nbd",
		"--uri=" + uri,
		"--rw=" + w.RW,
		fmt.Sprintf("--bs=%d", w.BlockBytes),
		fmt.Sprintf("--iodepth=%d", w.QueueDepth),
		fmt.Sprintf("--size=%d", sizeBytes),
		"--time_based",
		fmt.Sprintf("--runtime=%dms", runtime.Milliseconds()),
		fmt.Sprintf("--ramp_time=%dms", ramp.Milliseconds()),
		// Random offsets without a map of what was touched: the map
		// costs fio CPU and the run is time based anyway.
		"--norandommap",
		"--randrepeat=0",
		"--output-format=json",
	}
}

// runFio runs one fio job and parses its output. A run that takes much
// longer than it should is killed: that is a server hang, and is reported
// as such.
func runFio(ctx context.Context, w Workload, uri string, runtime, ramp time.Duration, sizeBytes int64) (Result, error) {
	limit := runtime + ramp + 60*time.Second
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "fio", fioArgs(w, uri, runtime, ramp, sizeBytes)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// fio runs each job in a child process that holds stdout open:
	// killing only the parent would leave Output waiting for the job to
	// end. fio gets a process group of its own, and it is the group that
	// is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if ctx.Err() == context.DeadlineExceeded {
		return Result{}, fmt.Errorf("fio did not finish within %v (server hung?); stderr: %s", limit, truncate(stderr.String(), 400))
	}
	if err != nil {
		return Result{}, fmt.Errorf("fio: %v; stderr: %s", err, truncate(strings.TrimSpace(stderr.String()), 400))
	}
	return ParseFio(out)
}

// fioVersion is fio's --version, "" when fio is missing.
func fioVersion() string {
	out, err := exec.Command("fio", "--version").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
