// Command nbd is paddock's NBD benchmark: the same fio workloads against
// paddock serve, qemu-nbd, nbdkit (file and memory) and go-nbd's server,
// on the same tmpfs file, interleaved, repeated, reported as medians.
//
//	go run ./bench/nbd --runtime 10s --reps 3 --out bench-nbd.md
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	runtimeFlag := flag.Duration("runtime", 10*time.Second, "fio runtime per run")
	reps := flag.Int("reps", 3, "repetitions (the median is reported)")
	size := flag.Int64("size", 1<<30, "size of the exported file in bytes")
	only := flag.String("servers", "", "comma-separated subset of servers")
	onlyW := flag.String("workloads", "", "comma-separated subset of workloads")
	asJSON := flag.Bool("json", false, "print raw results as JSON")
	out := flag.String("out", "", "also write the markdown report to this file")
	dir := flag.String("dir", "/dev/shm", "where the exported file lives (tmpfs)")
	flag.Parse()
	if err := run(*runtimeFlag, *reps, *size, *only, *onlyW, *asJSON, *out, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench nbd:", err)
		os.Exit(1)
	}
}

// buildTools builds paddock and the go-nbd wrapper from this checkout.
func buildTools(tmp string) (paddock, gonbd string, err error) {
	paddock, gonbd = filepath.Join(tmp, "paddock"), filepath.Join(tmp, "gonbdserver")
	for bin, pkg := range map[string]string{paddock: "./cmd/paddock", gonbd: "./bench/gonbdserver"} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w (run from the repository root)", pkg, err)
		}
	}
	return paddock, gonbd, nil
}

func run(runtimeDur time.Duration, reps int, size int64, only, onlyW string, asJSON bool, out, dir string) error {
	if _, err := exec.LookPath("fio"); err != nil {
		return fmt.Errorf("fio is not installed (apt-get install fio)")
	}
	tmp, err := os.MkdirTemp(dir, "paddock-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	paddock, gonbd, err := buildTools(tmp)
	if err != nil {
		return err
	}
	file := filepath.Join(tmp, "disk.img")
	if err := fillRandom(file, size); err != nil {
		return err
	}
	var srvs []server
	for _, s := range servers(paddock, gonbd) {
		if only != "" && !contains(only, s.Name) {
			continue
		}
		if _, err := exec.LookPath(s.Need); err != nil {
			fmt.Fprintf(os.Stderr, "skipping %s: %s is not installed\n", s.Name, s.Need)
			continue
		}
		srvs = append(srvs, s)
	}
	var ws []workload
	for _, w := range workloads {
		if onlyW == "" || contains(onlyW, w.Name) {
			ws = append(ws, w)
		}
	}
	results := map[string]map[string][]result{} // workload -> server -> runs
	total := reps * len(ws) * len(srvs)
	n := 0
	for rep := 0; rep < reps; rep++ {
		for _, w := range ws {
			results[w.Name] = ensure(results[w.Name])
			// Interleave: every server once per workload per rep,
			// in an order that rotates, so drift hits all alike.
			for i := range srvs {
				s := srvs[(i+rep)%len(srvs)]
				if ctx.Err() != nil {
					return ctx.Err()
				}
				var delay time.Duration
				if w.Delayed {
					delay = time.Millisecond
				}
				port, err := freePort()
				if err != nil {
					return err
				}
				argv, export, ok := s.Args(file, port, size, delay)
				if !ok {
					continue
				}
				n++
				r, err := start(argv, port, export)
				if err != nil {
					return err
				}
				res, err := runFio(ctx, w, r.uri, runtimeDur, size)
				res.PeakRSSBytes = r.peakRSS()
				r.stop()
				if err != nil {
					return fmt.Errorf("%s on %s: %w", w.Name, s.Name, err)
				}
				fmt.Fprintf(os.Stderr, "[%d/%d] rep %d %-24s %-14s %9.0f IOPS %8.1f MB/s  peak RSS %d MiB\n",
					n, total, rep+1, w.Name, s.Name, res.IOPS, res.BytesPerSecond/1e6, res.PeakRSSBytes>>20)
				results[w.Name][s.Name] = append(results[w.Name][s.Name], res)
			}
		}
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	names := make([]string, len(srvs))
	for i, s := range srvs {
		names[i] = s.Name
	}
	report := formatReport(ws, names, results, machine(), "go run ./bench/nbd "+strings.Join(os.Args[1:], " "))
	fmt.Print(report)
	if out != "" {
		return os.WriteFile(out, []byte(report), 0o644)
	}
	return nil
}

func ensure(m map[string][]result) map[string][]result {
	if m == nil {
		return map[string][]result{}
	}
	return m
}

func contains(list, name string) bool {
	for _, x := range strings.Split(list, ",") {
		if strings.TrimSpace(x) == name {
			return true
		}
	}
	return false
}

// fillRandom writes size random bytes, so reads are of real data and no
// server can answer from holes.
func fillRandom(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	rand.Read(buf)
	for written := int64(0); written < size; {
		n := min(int64(len(buf)), size-written)
		if _, err := f.Write(buf[:n]); err != nil {
			return err
		}
		written += n
	}
	return nil
}

func machine() string {
	var parts []string
	parts = append(parts, fmt.Sprintf("%d cores", runtime.NumCPU()))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %d kB", &kb)
		parts = append(parts, fmt.Sprintf("%d GiB RAM", kb>>20))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		parts = append(parts, "Linux "+strings.TrimSpace(string(b)))
	}
	for _, v := range [][]string{{"fio", "--version"}, {"qemu-nbd", "--version"}, {"nbdkit", "--version"}} {
		if o, err := exec.Command(v[0], v[1:]...).Output(); err == nil {
			parts = append(parts, strings.TrimSpace(strings.SplitN(string(o), "\n", 2)[0]))
		}
	}
	parts = append(parts, runtime.Version())
	return strings.Join(parts, ", ")
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
