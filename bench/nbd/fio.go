package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// workload is one fio job.
type workload struct {
	Name    string
	RW      string // read, write, randread, randwrite
	BS      string
	QD      int
	Delayed bool // run against servers with 1 ms of added backend latency
}

var workloads = []workload{
	{"seq-read-256k-qd16", "read", "256k", 16, false},
	{"seq-write-256k-qd16", "write", "256k", 16, false},
	{"rand-read-4k-qd32", "randread", "4k", 32, false},
	{"rand-write-4k-qd32", "randwrite", "4k", 32, false},
	{"rand-write-4k-qd32-1ms", "randwrite", "4k", 32, true},
	{"rand-write-4k-qd1-1ms", "randwrite", "4k", 1, true},
}

// result is what one fio run measured.
type result struct {
	IOPS           float64 `json:"iops"`
	BytesPerSecond float64 `json:"bytes_per_second"`
	PeakRSSBytes   int64   `json:"peak_rss_bytes"`
}

// fioJSON is the part of fio's --output-format=json we read.
type fioJSON struct {
	Jobs []struct {
		Error int `json:"error"`
		Read  struct {
			IOPS    float64 `json:"iops"`
			BWBytes float64 `json:"bw_bytes"`
		} `json:"read"`
		Write struct {
			IOPS    float64 `json:"iops"`
			BWBytes float64 `json:"bw_bytes"`
		} `json:"write"`
	} `json:"jobs"`
}

// parseFio reads fio's JSON (fio may print warnings before it).
func parseFio(out []byte) (result, error) {
	s := string(out)
	i := strings.Index(s, "{")
	if i < 0 {
		return result{}, fmt.Errorf("no JSON in fio output: %.200s", s)
	}
	var f fioJSON
	if err := json.Unmarshal([]byte(s[i:]), &f); err != nil {
		return result{}, fmt.Errorf("fio JSON: %w", err)
	}
	if len(f.Jobs) != 1 {
		return result{}, fmt.Errorf("fio JSON has %d jobs, want 1", len(f.Jobs))
	}
	j := f.Jobs[0]
	if j.Error != 0 {
		return result{}, fmt.Errorf("fio job failed with error %d", j.Error)
	}
	return result{IOPS: j.Read.IOPS + j.Write.IOPS, BytesPerSecond: j.Read.BWBytes + j.Write.BWBytes}, nil
}

// runFio runs one workload against uri.
func runFio(ctx context.Context, w workload, uri string, runtime time.Duration, sizeBytes int64) (result, error) {
	args := []string{
		"--name=" + w.Name, "--ioengine=nbd", "--uri=" + uri,
		"--rw=" + w.RW, "--bs=" + w.BS, fmt.Sprintf("--iodepth=%d", w.QD),
		fmt.Sprintf("--size=%d", sizeBytes), "--time_based", fmt.Sprintf("--runtime=%ds", int(runtime.Seconds())),
		"--ramp_time=1s", "--randrepeat=0", "--norandommap", "--output-format=json",
	}
	ctx, cancel := context.WithTimeout(ctx, runtime+60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "fio", args...).Output()
	if err != nil {
		return result{}, fmt.Errorf("fio %s: %w", w.Name, err)
	}
	return parseFio(out)
}
