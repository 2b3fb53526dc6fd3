// Package testbin helps tests that run the real paddock binary and real
// external programs (qemu-img, nbdinfo, fio, fence agents...).
package testbin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Paddock builds ./cmd/paddock once per test binary and returns its path.
func Paddock(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "paddock-test-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "paddock")
		root := moduleRoot()
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/paddock")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Require skips the test when an external program is missing, except under
// CI (CI=true), where .ci/run installs everything and a missing program is
// a failure, not a skip.
func Require(t testing.TB, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed (CI must install it: see .ci/run)", p)
			}
			t.Skipf("%s is not installed; install it to run this test (Debian: see .ci/run)", p)
		}
	}
}

// RequireRoot skips (or fails under CI) when not root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root, and CI runs as root")
		}
		t.Skip("this test needs root (network namespaces, nftables)")
	}
}

// RequireHugePages makes sure the kernel's hugetlb pool has n free 2 MiB
// pages, growing it (as root) for the test and shrinking it back when the
// test ends. Where it cannot, the test skips, or fails under CI.
//
// Tests that use huge pages hold a lock file for their whole run, one at
// a time across test processes (go test runs packages in parallel): else
// one test's cleanup could shrink the pool under another that counted
// on it.
func RequireHugePages(t testing.TB, n int) {
	t.Helper()
	const knob = "/proc/sys/vm/nr_hugepages"
	fail := t.Skipf
	if os.Getenv("CI") != "" {
		fail = t.Fatalf
	}
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "paddock-test-hugepages.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		fail("hugetlb pool lock: %v", err)
		return
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		fail("hugetlb pool lock: %v", err)
		return
	}
	// Registered first, so it runs last: after the pool is restored.
	t.Cleanup(func() { lock.Close() })
	free := hugePagesFree()
	if free >= n {
		return
	}
	b, err := os.ReadFile(knob)
	if err != nil {
		fail("no hugetlb pool: %v", err)
		return
	}
	old := strings.TrimSpace(string(b))
	total, _ := strconv.Atoi(old)
	want := total + n - free
	if err := os.WriteFile(knob, []byte(strconv.Itoa(want)), 0o644); err != nil {
		fail("cannot grow the hugetlb pool to %d pages (root?): %v", want, err)
		return
	}
	t.Cleanup(func() { os.WriteFile(knob, []byte(old), 0o644) })
	if got := hugePagesFree(); got < n {
		fail("the hugetlb pool has %d free pages after growing it to %d, want %d", got, want, n)
	}
}

// hugePagesFree returns the pool's pages a new mapping can still reserve:
// HugePages_Free less HugePages_Rsvd (0 if unknown).
func hugePagesFree() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var free, rsvd int
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			v, _ := strconv.Atoi(f[1])
			switch f[0] {
			case "HugePages_Free:":
				free = v
			case "HugePages_Rsvd:":
				rsvd = v
			}
		}
	}
	return max(0, free-rsvd)
}

// Proc is a running paddock (or other) process whose stderr is captured.
type Proc struct {
	Cmd    *exec.Cmd
	mu     sync.Mutex
	stderr strings.Builder
	lines  chan string
	done   chan struct{}
}

// Start runs bin with args; the process is killed when the test ends.
func Start(t testing.TB, bin string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	cmd.Stdout = pw
	p := &Proc{Cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.stderr.WriteString(line + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- line:
			default:
			}
		}
	}()
	go func() {
		cmd.Wait()
		pw.Close()
		// done only once every line is queued: WaitFor must not see
		// the exit before the last lines the process printed.
		<-scanned
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("output of %s:\n%s", filepath.Base(bin), p.Output())
		}
	})
	return p
}

// Output is everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// WaitFor waits for a line matching re and returns its submatches.
func (p *Proc) WaitFor(t testing.TB, re string, timeout time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(timeout)
	for {
		select {
		case line := <-p.lines:
			if m := rx.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-p.done:
			// Both cases may be ready at once: the lines still queued
			// came before the exit.
			for {
				select {
				case line := <-p.lines:
					if m := rx.FindStringSubmatch(line); m != nil {
						return m
					}
					continue
				default:
				}
				break
			}
			t.Fatalf("process exited before printing %q:\n%s", re, p.Output())
		case <-deadline:
			t.Fatalf("no line matching %q within %v:\n%s", re, timeout, p.Output())
		}
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	if p.Cmd.Process != nil {
		p.Cmd.Process.Kill()
	}
	<-p.done
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Run runs a program to completion with a timeout and returns its combined
// output; a non-zero exit fails the test.
func Run(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := RunErr(timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// RunErr is Run without failing the test.
func RunErr(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}
