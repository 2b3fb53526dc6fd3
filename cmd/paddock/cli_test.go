package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
)

// TestDemoOnce runs the README's first command as a user would (with --once
// so it ends) and checks it walked through every step.
func TestDemoOnce(t *testing.T) {
	testbin.Require(t, "qemu-io", "nbdinfo")
	out := testbin.Run(t, 2*time.Minute, testbin.Paddock(t), "demo", "--once", "--size", "64M", "--listen", "127.0.0.1:0")
	for _, want := range []string{
		"wrote 1 MiB with FUA and read it back",
		"ok  qemu-io",
		"ok  nbdinfo --map",
		"qemu-system-x86_64 -m 1G -drive file=nbd://127.0.0.1:",
		"nbdinfo nbd://127.0.0.1:",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
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
