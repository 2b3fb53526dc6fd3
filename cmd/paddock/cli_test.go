package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
)

// TestDemoOnce runs the README's first command as a user would (with --once
// so it ends) and checks it walked through every step: three node
// processes, a 3-replica volume, a secondary killed, resynced and the
// replicas compared, a guest using the volume migrated from n1's side to
// n2's with the volume's primary role; and that it left no node or guest
// process behind.
func TestDemoOnce(t *testing.T) {
	out := testbin.Run(t, 2*time.Minute, testbin.Paddock(t), "demo", "--once", "--size", "64M", "--listen", "127.0.0.1:0")
	for _, want := range []string{
		"quorate: 3 members",
		"volume  demo0: 64.0 MiB, 3 replicas",
		"qemu-system-x86_64 -m 1G -drive file=nbd://127.0.0.1:",
		"/demo0,format=raw,cache=none",
		"nbdinfo nbd://127.0.0.1:",
		"1. wrote 16.0 MiB through the primary n1",
		"2. kill -9 n3",
		"3. wrote 16.0 MiB more",
		"4. restarted n3",
		"5. n3 is UpToDate again",
		"6. read the 24.0 MiB back through n2",
		"7. compared the three replicas' data files (64.0 MiB each): byte-identical",
		"8. started guest demo-guest on n1's side",
		"9. paddock migrate demo-guest --to 127.0.0.2:",
		"demo-guest: completed over tcp",
		"demo-guest: volume hand-off to n2 in ",
		"demo0 n1->n2 epoch ",
		"10. demo0's primary followed the guest: now n2",
		"guest check on n2's side: consistent",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	for _, tool := range []string{"qemu-io", "nbdinfo"} {
		if _, err := exec.LookPath(tool); err == nil && !strings.Contains(out, "ok  "+tool) {
			t.Errorf("%s is installed but the demo did not run it successfully:\n%s", tool, out)
		}
	}
	// The nodes were children of the demo: none may be left.
	var dir string
	for _, l := range strings.Split(out, "\n") {
		if _, d, ok := strings.Cut(l, " data "); ok && strings.Contains(l, "node n1") {
			dir = filepath.Dir(strings.TrimSpace(d))
		}
	}
	if dir == "" {
		t.Fatalf("demo output names no data directory:\n%s", out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the demo's data directory %s is still there (%v)", dir, err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), dir) {
			t.Errorf("a process of the demo is still running: %s", strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

func TestAttachWithoutModule(t *testing.T) {
	if _, err := os.Stat("/dev/nbd0"); err == nil {
		t.Skip("this host has /dev/nbd0; the test is for hosts without the module")
	}
	out, err := testbin.RunErr(10*time.Second, testbin.Paddock(t), "attach", "nbd://127.0.0.1:1/x", "/dev/nbd0")
	if err == nil || !strings.Contains(out, "nbd module is not loaded") {
		t.Fatalf("attach without /dev/nbd0: %v\n%s", err, out)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "512": 512, "4k": 4096, "1M": 1 << 20, "10G": 10 << 30, "1GiB": 1 << 30, "2T": 2 << 40} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"x", "-1", "1.5G", "1Q", "99999999999999T"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// TestGuestCLINames: the names of issue 6 — guest start (guest run),
// --ram (--mem), --pattern sequential, guest receive --listen (guest run
// --incoming --listen-migration) — work, and wrong combinations get a
// clear error.
func TestGuestCLINames(t *testing.T) {
	bin := testbin.Paddock(t)
	dir := t.TempDir()
	tlsArgs := []string{"--tls-dir", filepath.Join(dir, "tls"), "--insecure-self-signed", "--control-sock", filepath.Join(dir, "x.sock")}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"guest", "start", "--name", "a", "--mem", "8M", "--ram", "8M"}, "not both"},
		{[]string{"guest", "start", "--name", "a", "--ram", "8M", "--volume", "vm"}, "--volume needs --data-dir"},
		{[]string{"guest", "start", "--name", "a", "--ram", "8M", "--volume", "../vm"}, "volume name"},
		{[]string{"guest", "start", "--name", "a", "--ram", "8M", "--pattern", "zigzag"}, "uniform, hotset, sequential"},
		{[]string{"guest", "receive", "--name", "a", "--ram", "8M"}, "needs --listen"},
		{[]string{"guest", "receive", "--name", "a", "--ram", "8M", "--listen", "127.0.0.1:1", "--listen-migration", "127.0.0.1:1"}, "not both"},
		{[]string{"guest", "receive", "--name", "a", "--ram", "8M", "--listen", "127.0.0.1:1", "--volume", "vm"}, "unknown flag: --volume"},
	} {
		out, err := testbin.RunErr(30*time.Second, bin, append(c.args, tlsArgs...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%v: %v, want an error saying %q:\n%s", c.args, err, c.want, out)
		}
	}

	srcSock, dstSock := filepath.Join(dir, "src.sock"), filepath.Join(dir, "dst.sock")
	tlsArgs = tlsArgs[:3]
	src := testbin.Start(t, bin, append([]string{"guest", "start", "--name", "a", "--ram", "8M", "--dirty-rate", "2M",
		"--pattern", "sequential", "--control-sock", srcSock}, tlsArgs...)...)
	src.WaitFor(t, `running, 8.0 MiB RAM, .*sequential`, 30*time.Second)
	listen := freeMigrationPort(t)
	dst := testbin.Start(t, bin, append([]string{"guest", "receive", "--name", "a", "--ram", "8M", "--listen", listen,
		"--control-sock", dstSock}, tlsArgs...)...)
	dst.WaitFor(t, "waiting for a migration on "+listen, 30*time.Second)
	out := testbin.Run(t, time.Minute, bin, "migrate", "a", "--control-sock", srcSock, "--to", listen, "--transport", "tcp")
	if !strings.Contains(out, "a: completed over tcp") {
		t.Fatalf("migrate:\n%s", out)
	}
	dst.WaitFor(t, "resumed from a migration", 30*time.Second)
	testbin.Run(t, time.Minute, bin, "guest", "check", "a", "--control-sock", dstSock)
}
