package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/paddock-io/paddock/bench/replbench"
)

// The demo's last step: a synthetic guest with the demo volume as its
// disk is started on n1's side and live-migrated to n2's, and the
// volume's primary role follows it.

// Limits of the demo's migration step.
const (
	demoGuestName     = "demo-guest"
	demoGuestRAM      = "64M"
	demoGuestRate     = "16M"
	demoGuestStartMax = 60 * time.Second
	demoMigrateMax    = 3 * time.Minute
)

// demoProc is a child process of the demo whose output lines are watched.
type demoProc struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
}

// startDemoProc starts exe with args; its output lines go to lines (the
// latest kept when nobody reads).
func startDemoProc(exe string, args ...string) (*demoProc, error) {
	cmd := exec.Command(exe, args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &demoProc{cmd: cmd, lines: make(chan string, 256), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	return p, nil
}

// waitLine waits for a line containing want.
func (p *demoProc) waitLine(ctx context.Context, want string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l := <-p.lines:
			if strings.Contains(l, want) {
				return l, nil
			}
		case <-p.done:
			// Lines printed before the exit may still be queued.
			for {
				select {
				case l := <-p.lines:
					if strings.Contains(l, want) {
						return l, nil
					}
				default:
					return "", fmt.Errorf("%s exited before saying %q", filepath.Base(p.cmd.Path), want)
				}
			}
		case <-t.C:
			return "", fmt.Errorf("%s did not say %q within %v", filepath.Base(p.cmd.Path), want, timeout)
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// stop kills the process and waits for it.
func (p *demoProc) stop() {
	p.cmd.Process.Kill()
	<-p.done
}

// freeDemoPort finds a port on ip free for both TCP and UDP (a receiving
// guest listens for QUIC and TCP on one number).
func freeDemoPort(ip string) (int, error) {
	const attempts = 20
	for range attempts {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort(ip, fmt.Sprint(port)))
		l.Close()
		if err == nil {
			u.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no port free for TCP and UDP on %s in %d attempts", ip, attempts)
}

// demoMigrate runs steps 8 to 10 and returns the guest process that runs
// on n2's side (the caller stops it when the demo ends).
func demoMigrate(ctx context.Context, exe string, cl *replbench.Cluster, first int, say func(string, ...any)) (*demoProc, error) {
	n1, n2 := cl.Nodes[0], cl.Nodes[1]
	srcSock := filepath.Join(cl.Root, "guest-n1.sock")
	dstSock := filepath.Join(cl.Root, "guest-n2.sock")
	src, err := startDemoProc(exe, "guest", "start", "--name", demoGuestName, "--ram", demoGuestRAM, "--dirty-rate", demoGuestRate,
		"--pattern", "hotset", "--volume", demoVolume, "--data-dir", n1.Dir, "--control-sock", srcSock)
	if err != nil {
		return nil, err
	}
	// The source exits by itself once migrated; on any failure it is
	// stopped here.
	defer src.stop()
	if _, err := src.waitLine(ctx, "running", demoGuestStartMax); err != nil {
		return nil, fmt.Errorf("starting the demo guest: %w", err)
	}
	say("  %d. started guest %s on n1's side (pid %d): %s of RAM rewritten at %s/s, its disk is %s",
		first, demoGuestName, src.cmd.Process.Pid, demoGuestRAM, demoGuestRate, demoVolume)
	ip, _, _ := net.SplitHostPort(n2.StorageAddr)
	port, err := freeDemoPort(ip)
	if err != nil {
		return nil, err
	}
	to := net.JoinHostPort(ip, fmt.Sprint(port))
	dst, err := startDemoProc(exe, "guest", "receive", "--name", demoGuestName, "--ram", demoGuestRAM, "--listen", to,
		"--data-dir", n2.Dir, "--control-sock", dstSock)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			dst.stop()
		}
	}()
	if _, err := dst.waitLine(ctx, "waiting for a migration", demoGuestStartMax); err != nil {
		return nil, fmt.Errorf("starting the receiving guest: %w", err)
	}
	say("  %d. paddock migrate %s --to %s   (a guest receive on n2's side waits there)", first+1, demoGuestName, to)
	// The real CLI: its progress bar on stderr, its summary on stdout.
	mctx, cancel := context.WithTimeout(ctx, demoMigrateMax)
	defer cancel()
	m := exec.CommandContext(mctx, exe, "migrate", demoGuestName, "--control-sock", srcSock, "--to", to, "--transport", "tcp")
	m.Stderr = os.Stderr
	out, err := m.Output()
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		say("     %s", l)
	}
	if err != nil {
		return nil, fmt.Errorf("migrating the demo guest: %w", err)
	}
	if _, err := dst.waitLine(ctx, "resumed from a migration", demoGuestStartMax); err != nil {
		return nil, err
	}
	var check guestResponse
	if err := guestCall(dstSock, guestRequest{Op: "check"}, time.Minute, func(r guestResponse) error { check = r; return nil }); err != nil {
		return nil, err
	}
	if check.Error != "" || check.Check == nil {
		return nil, fmt.Errorf("the migrated guest: %s", check.Error)
	}
	st, err := cl.Nodes[2].VolumeStatus(demoVolume)
	if err != nil {
		return nil, err
	}
	if st.Primary != n2.Name {
		return nil, fmt.Errorf("%s's primary is %s after the migration, not %s", demoVolume, st.Primary, n2.Name)
	}
	var epoch uint64
	for _, r := range st.Replicas {
		if r.Role == "primary" {
			epoch = r.Epoch
		}
	}
	say("  %d. %s's primary followed the guest: now %s (epoch %d; n1 can get no write acknowledged under its old epoch); guest check on n2's side: consistent, %d writes",
		first+2, demoVolume, st.Primary, epoch, check.Check.Writes)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ok = true
	return dst, nil
}
