// Package nbdbench is paddock's NBD benchmark: the same fio workloads
// (fio's nbd engine, one connection per run) against paddock serve,
// qemu-nbd, nbdkit (file and memory) and go-nbd's server, all on the same
// tmpfs file recreated identically before every run, interleaved
// (round-robin over the servers, the order rotating every repetition),
// repeated, and reported as medians with paddock's ratio to the best peer.
//
// It is run as "paddock bench nbd" or "go run ./bench/nbd"; the results go
// to BENCHMARKS.md.
package nbdbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Config is one benchmark run.
type Config struct {
	// Runtime is fio's measured time per run; Ramp comes before it.
	Runtime, Ramp time.Duration
	// Reps is how many times every (workload, server) pair runs.
	Reps int
	// SizeBytes is the size of the exported file.
	SizeBytes int64
	// Servers and Workloads are comma-separated subsets ("": all).
	Servers, Workloads string
	// Dir holds the exported file and the servers' logs; it should be
	// tmpfs, so that the backend is memory for every server.
	Dir string
	// PaddockBin and GoNBDBin are the executables of paddock and of the
	// go-nbd wrapper; "" builds them from this module with "go build"
	// (which needs the go tool and a working directory inside the
	// module).
	PaddockBin, GoNBDBin string
	// Progress gets one line per run and whatever is missing.
	Progress io.Writer
	// Command is the command line recorded in the report.
	Command string
}

// Limits on the configuration: a run is meant to finish within hours.
const (
	maxReps        = 100
	maxRuntime     = 10 * time.Minute
	minSizeBytes   = 64 << 20
	maxSizeBytes   = 64 << 30
	startAttempts  = 3
	defaultDir     = "/dev/shm"
	modulePath     = "github.com/paddock-io/paddock"
	paddockPackage = modulePath + "/cmd/paddock"
	gonbdPackage   = modulePath + "/bench/gonbdserver"
)

// DefaultConfig is what the command-line front ends start from.
func DefaultConfig() Config {
	return Config{Runtime: 10 * time.Second, Ramp: time.Second, Reps: 3, SizeBytes: 1 << 30, Dir: defaultDir}
}

func (c *Config) check() error {
	switch {
	case c.Reps < 1 || c.Reps > maxReps:
		return fmt.Errorf("--reps %d: want 1 to %d", c.Reps, maxReps)
	case c.Runtime < time.Second || c.Runtime > maxRuntime:
		return fmt.Errorf("--runtime %v: want 1s to %v", c.Runtime, maxRuntime)
	case c.Ramp < 0 || c.Ramp > maxRuntime:
		return fmt.Errorf("ramp %v: want 0 to %v", c.Ramp, maxRuntime)
	case c.SizeBytes < minSizeBytes || c.SizeBytes > maxSizeBytes || c.SizeBytes%(1<<20) != 0:
		return fmt.Errorf("--size %d: want a whole number of MiB from 64M to 64G", c.SizeBytes)
	}
	if c.Dir == "" {
		c.Dir = defaultDir
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	return nil
}

// Run runs the benchmark. Every server process it starts is gone and its
// temporary directory removed when it returns, also when ctx is cancelled
// (Ctrl-C): the report then holds the runs done so far.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	ws, err := selectWorkloads(cfg.Workloads)
	if err != nil {
		return nil, err
	}
	wantServers, err := subset(cfg.Servers, func(yield func(string)) {
		for _, n := range ServerNames {
			yield(n)
		}
	}, "server")
	if err != nil {
		return nil, err
	}
	fio := fioVersion()
	if fio == "" {
		return nil, errors.New("fio is not installed (apt-get install fio); it needs the nbd engine (Debian's fio has it)")
	}
	tmp, err := os.MkdirTemp(cfg.Dir, "paddock-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	defer killAll()
	out := cfg.Progress
	if !isTmpfs(cfg.Dir) {
		fmt.Fprintf(out, "warning: %s is not tmpfs: the servers' backends differ in caching, results are not comparable\n", cfg.Dir)
	}

	rep := &Report{
		Machine: describeMachine(fio), Command: cfg.Command,
		RuntimeSeconds: cfg.Runtime.Seconds(), RampSeconds: cfg.Ramp.Seconds(), Reps: cfg.Reps, SizeBytes: cfg.SizeBytes,
		Missing: map[string]string{}, Notes: map[string]string{}, Workloads: ws,
		Runs: map[string]map[string][]Result{}, Started: time.Now(),
	}
	for _, w := range ws {
		rep.Runs[w.Name] = map[string][]Result{}
	}

	// The executables: given, or built from this module.
	paddockBin, gonbdBin := cfg.PaddockBin, cfg.GoNBDBin
	var buildErr = map[string]error{}
	if paddockBin == "" && selected(wantServers, PaddockName) {
		paddockBin, buildErr[PaddockName] = goBuild(ctx, paddockPackage, filepath.Join(tmp, "paddock"))
	}
	if gonbdBin == "" && selected(wantServers, GoNBDName) {
		gonbdBin, buildErr[GoNBDName] = goBuild(ctx, gonbdPackage, filepath.Join(tmp, "gonbdserver"))
	}
	var srvs []Server
	for _, s := range Servers(paddockBin, gonbdBin) {
		if !selected(wantServers, s.Name) {
			continue
		}
		if err := buildErr[s.Name]; err != nil {
			rep.Missing[s.Name] = err.Error()
		} else if err := lookProgram(s.Program); err != nil {
			rep.Missing[s.Name] = fmt.Sprintf("%s: %v%s", s.Program, err, installHint(s.Program))
		}
		if why, ok := rep.Missing[s.Name]; ok {
			fmt.Fprintf(out, "MISSING %s: %s (left out of this run)\n", s.Name, why)
			continue
		}
		srvs = append(srvs, s)
		rep.Servers = append(rep.Servers, s.Name)
		rep.Notes[s.Name] = s.Note
	}
	if len(srvs) == 0 {
		return nil, errors.New("none of the selected servers can run")
	}
	nbdcopy := ""
	for _, s := range srvs {
		if s.Memory {
			if p, err := exec.LookPath("nbdcopy"); err == nil {
				nbdcopy = p
			} else {
				rep.Notes[s.Name] += " nbdcopy is missing (apt-get install libnbd-bin): it was NOT filled, its reads are of unallocated memory."
				fmt.Fprintf(out, "MISSING nbdcopy: %s is not filled before its runs\n", s.Name)
			}
		}
	}

	// The plan: every repetition runs every workload on every server,
	// the server order rotating by one each repetition so that slow drift
	// of the machine (other load, thermal) hits every server alike.
	type run struct {
		rep int
		w   Workload
		s   Server
	}
	var plan []run
	for r := 0; r < cfg.Reps; r++ {
		for _, w := range ws {
			for i := range srvs {
				s := srvs[(i+r)%len(srvs)]
				if _, ok := s.Args("", 0, 0, delayOf(w)); ok {
					plan = append(plan, run{r, w, s})
				}
			}
		}
	}
	seed := seedChunk()
	file := filepath.Join(tmp, "disk.img")
	for i, pr := range plan {
		if ctx.Err() != nil {
			rep.Interrupted = true
			break
		}
		t0 := time.Now()
		res, logs := runOne(ctx, cfg, tmp, file, seed, nbdcopy, pr.w, pr.s, fmt.Sprintf("%d-%s-%s", pr.rep, pr.w.Name, pr.s.Name))
		if ctx.Err() != nil {
			rep.Interrupted = true
			break
		}
		rep.Runs[pr.w.Name][pr.s.Name] = append(rep.Runs[pr.w.Name][pr.s.Name], res)
		for _, l := range logs {
			rep.ServerLogs = append(rep.ServerLogs, fmt.Sprintf("%s, %s, rep %d: %s", pr.s.Name, pr.w.Name, pr.rep+1, l))
		}
		prefix := fmt.Sprintf("[%d/%d] rep %d/%d %-22s %-13s", i+1, len(plan), pr.rep+1, cfg.Reps, pr.w.Name, pr.s.Name)
		if res.Err != "" {
			fmt.Fprintf(out, "%s FAILED: %s\n", prefix, res.Err)
		} else {
			fmt.Fprintf(out, "%s %9.0f IOPS %8.1f MB/s  p99 %7.0f µs  RSS %4d MiB  CPU %5.1f µs/IO  (%.0fs)\n", prefix,
				res.IOPS, res.BytesPerSecond/1e6, res.P99LatencyNs/1e3, res.PeakRSSBytes>>20, res.CPUMicrosPerIO(), time.Since(t0).Seconds())
		}
		for _, l := range logs {
			fmt.Fprintf(out, "    %s said: %s\n", pr.s.Name, l)
		}
	}
	rep.Finished = time.Now()
	return rep, nil
}

// delayOf is the backend latency of a workload.
func delayOf(w Workload) time.Duration {
	if w.Delayed {
		return BackendDelayMs * time.Millisecond
	}
	return 0
}

// runOne recreates the file, starts s, runs w with fio against it and
// stops s. Failures are returned in Result.Err, with the server's
// unexpected output in logs.
func runOne(ctx context.Context, cfg Config, tmp, file string, seed []byte, nbdcopy string, w Workload, s Server, tag string) (res Result, logs []string) {
	fail := func(err error) (Result, []string) { return Result{Err: err.Error()}, logs }
	if err := writeDiskFile(file, cfg.SizeBytes, seed); err != nil {
		return fail(fmt.Errorf("writing %s: %w", file, err))
	}
	var p *proc
	var port int
	var err error
	for attempt := 0; attempt < startAttempts; attempt++ {
		if port, err = freePort(); err != nil {
			return fail(err)
		}
		argv, _ := s.Args(file, port, cfg.SizeBytes, delayOf(w))
		p, err = startServer(ctx, s.Name, argv, port, filepath.Join(tmp, fmt.Sprintf("%s-%d.log", tag, attempt)))
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fail(err)
	}
	defer func() {
		killed, err := p.stop()
		logs = append(logs, p.logLines()...)
		if killed {
			logs = append(logs, fmt.Sprintf("(harness) did not exit within %v of SIGTERM: killed", stopTimeout))
		}
		if err != nil && res.Err == "" {
			res = Result{Err: err.Error()}
		}
	}()
	uri := fmt.Sprintf("nbd://127.0.0.1:%d/%s", port, s.Export)
	if s.Memory && nbdcopy != "" {
		cmd := exec.CommandContext(ctx, nbdcopy, "--", file, uri)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fail(fmt.Errorf("nbdcopy into %s: %v: %s", s.Name, err, truncate(string(out), 300)))
		}
	}
	// The server's CPU time over fio's measured window: sampled when the
	// ramp ends and when fio exits.
	cpuAtRamp := make(chan float64, 1)
	timer := time.AfterFunc(cfg.Ramp, func() { cpuAtRamp <- p.cpuSeconds() })
	res, err = runFio(ctx, w, uri, cfg.Runtime, cfg.Ramp, cfg.SizeBytes)
	cpuEnd := p.cpuSeconds()
	timer.Stop()
	if err != nil {
		return fail(err)
	}
	select {
	case c0 := <-cpuAtRamp:
		if c0 >= 0 && cpuEnd >= c0 {
			res.ServerCPUSeconds = cpuEnd - c0
		}
	default:
	}
	res.PeakRSSBytes = p.peakRSS()
	return res, logs
}

// goBuild builds pkg of this module into out.
func goBuild(ctx context.Context, pkg, out string) (string, error) {
	if _, err := exec.LookPath("go"); err != nil {
		return "", fmt.Errorf("cannot build %s: the go tool is not in $PATH (give the executable instead)", pkg)
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s (run from inside the paddock repository, or give the executable): %v: %s",
			pkg, err, truncate(strings.TrimSpace(string(b)), 300))
	}
	return out, nil
}

func selected(want map[string]bool, name string) bool { return want == nil || want[name] }

// installHint says which Debian package has a missing program.
func installHint(prog string) string {
	switch filepath.Base(prog) {
	case "qemu-nbd":
		return " (apt-get install qemu-utils)"
	case "nbdkit":
		return " (apt-get install nbdkit)"
	}
	return ""
}
