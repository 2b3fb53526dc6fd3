package nbdbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Limits on waiting for server processes.
const (
	startTimeout = 10 * time.Second
	stopTimeout  = 5 * time.Second
	// clockTicksPerSecond is USER_HZ, 100 on every Linux architecture Go
	// runs on (the /proc stat fields are in these units).
	clockTicksPerSecond = 100
)

// proc is a running server process.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	waitErr error
}

// procs holds every server process started and not yet reaped, so that
// all of them are killed however the harness ends.
var procs struct {
	sync.Mutex
	live map[*proc]bool
}

// killAll kills every server process still running and waits for them.
func killAll() {
	procs.Lock()
	var ps []*proc
	for p := range procs.live {
		ps = append(ps, p)
	}
	procs.Unlock()
	for _, p := range ps {
		p.kill()
	}
}

// startServer runs argv with its stderr going to logPath and waits until
// the process itself listens on port. It returns an error (with the log's
// tail) if the process exits first or does not listen in time.
func startServer(ctx context.Context, name string, argv []string, port int, logPath string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a terminal's Ctrl-C reaches the harness, which
	// stops the servers itself. Pdeathsig: they die with the harness even
	// if it is killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	procs.Lock()
	if procs.live == nil {
		procs.live = map[*proc]bool{}
	}
	procs.live[p] = true
	procs.Unlock()
	go func() {
		p.waitErr = cmd.Wait()
		procs.Lock()
		delete(procs.live, p)
		procs.Unlock()
		close(p.done)
	}()
	deadline := time.Now().Add(startTimeout)
	for {
		if listening(cmd.Process.Pid, port) {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited before listening on port %d (%v): %s", name, port, p.waitErr, p.logTail(5))
		case <-ctx.Done():
			p.kill()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("%s did not listen on port %d within %v: %s", name, port, startTimeout, p.logTail(5))
		}
	}
}

// listening says whether process pid has a socket listening on
// 127.0.0.1:port. Asking the kernel rather than connecting means no
// connection reaches the server before fio's, and a stranger that took
// the port in the meantime is not mistaken for our server.
func listening(pid, port int) bool {
	inode := listenInode(port)
	if inode == "" {
		return false
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	want := "socket:[" + inode + "]"
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && l == want {
			return true
		}
	}
	return false
}

// listenInode is the inode of the socket listening on 127.0.0.1:port in
// /proc/net/tcp, "" if none.
func listenInode(port int) string {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return ""
	}
	defer f.Close()
	local := fmt.Sprintf("0100007F:%04X", port)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fs := strings.Fields(sc.Text())
		if len(fs) >= 10 && fs[1] == local && fs[3] == "0A" {
			return fs[9]
		}
	}
	return ""
}

// freePort asks the kernel for a free port on 127.0.0.1. Another process
// may take it before the server binds it; startServer then fails and the
// caller tries another.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// peakRSS is the process's VmHWM in bytes, 0 if it cannot be read.
func (p *proc) peakRSS() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	return parseVmHWM(string(b))
}

// parseVmHWM reads the VmHWM line of /proc/PID/status, in bytes.
func parseVmHWM(status string) int64 {
	for _, line := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			fs := strings.Fields(rest)
			if len(fs) >= 1 {
				kb, _ := strconv.ParseInt(fs[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// cpuSeconds is the process's user+system CPU time so far, -1 if it
// cannot be read.
func (p *proc) cpuSeconds() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime+stime from a /proc/PID/stat line, in seconds.
func parseStatCPU(stat string) float64 {
	// The command name (field 2) may hold spaces: fields are counted
	// after its closing parenthesis, where field 3 (state) comes first.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return -1
	}
	fs := strings.Fields(stat[i+1:])
	if len(fs) < 13 {
		return -1
	}
	utime, err1 := strconv.ParseInt(fs[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(fs[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return -1
	}
	return float64(utime+stime) / clockTicksPerSecond
}

// stop asks the server to exit (SIGTERM), kills it if it does not within
// stopTimeout, and says whether it had to.
func (p *proc) stop() (killed bool, err error) {
	select {
	case <-p.done:
		return false, fmt.Errorf("%s had exited during the run (%v): %s", p.name, p.waitErr, p.logTail(5))
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return false, nil
	case <-time.After(stopTimeout):
		p.kill()
		return true, nil
	}
}

// kill kills the process and waits for it to be reaped.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.done
}

// logTail is the last n lines of the server's output, on one line.
func (p *proc) logTail(n int) string {
	lines := p.logLines()
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return "(no output)"
	}
	return strings.Join(lines, " | ")
}

// logLines is the server's output, without the lines every server prints
// when all is well.
func (p *proc) logLines() []string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || benignLogLine(l) {
			continue
		}
		out = append(out, l)
	}
	return out
}

// benignLogLine recognises start-up banners.
func benignLogLine(l string) bool {
	return strings.HasPrefix(l, "paddock: serving ")
}

// lookProgram checks that a server's program exists: a path must be an
// executable file, a bare name must be in $PATH.
func lookProgram(prog string) error {
	if prog == "" {
		return errors.New("not built")
	}
	if strings.ContainsRune(prog, filepath.Separator) {
		st, err := os.Stat(prog)
		if err != nil {
			return err
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file", prog)
		}
		return nil
	}
	_, err := exec.LookPath(prog)
	return err
}
