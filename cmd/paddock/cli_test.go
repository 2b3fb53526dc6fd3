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
// replicas compared; and that it left no node process behind.
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
