package fence

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fenceDummy returns the path of Debian's fence_dummy, or skips. .ci/run
// installs the fence-agents package, so under CI this never skips.
func fenceDummy(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/fence_dummy", "/sbin/fence_dummy", "/usr/local/sbin/fence_dummy"} {
		if isExecutable(p) == nil {
			return p
		}
	}
	t.Skip("fence_dummy not installed (apt-get install fence-agents)")
	return ""
}

// writeScript writes an executable /bin/sh script into a temp dir.
func writeScript(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// dummyDevice is a fence_dummy device whose power lives in a file.
func dummyDevice(t *testing.T, name string) Device {
	t.Helper()
	fenceDummy(t)
	return NewDevice(name, "fence_dummy", map[string]string{
		"type":        "file",
		"status_file": filepath.Join(t.TempDir(), "power"),
	})
}

func fastRunner() *AgentRunner {
	return &AgentRunner{StatusRetries: 3, StatusRetryDelayMs: 20, DefaultTimeoutMs: 20_000}
}

func TestDummyOffStatusOnStatus(t *testing.T) {
	r := fastRunner()
	dev := dummyDevice(t, "dummy1")
	ctx := context.Background()

	runs, err := r.PowerOn(ctx, dev)
	if err != nil {
		t.Fatalf("PowerOn: %v (runs %+v)", err, runs)
	}
	if p, _, err := r.Status(ctx, dev); err != nil || p != PowerOn {
		t.Fatalf("status after on: %q, %v; want on", p, err)
	}

	runs, err = r.PowerOff(ctx, dev)
	if err != nil {
		t.Fatalf("PowerOff: %v", err)
	}
	if len(runs) < 2 || runs[0].Action != ActionOff || runs[len(runs)-1].Action != ActionStatus || runs[len(runs)-1].Power != PowerOff {
		t.Fatalf("PowerOff runs: %+v; want off then a status saying off", runs)
	}
	p, res, err := r.Status(ctx, dev)
	if err != nil || p != PowerOff || res.ExitCode != exitOff {
		t.Fatalf("status after off: %q exit %d, %v; want off, exit 2", p, res.ExitCode, err)
	}

	if _, err := r.PowerOn(ctx, dev); err != nil {
		t.Fatalf("PowerOn again: %v", err)
	}
	if p, _, err := r.Status(ctx, dev); err != nil || p != PowerOn {
		t.Fatalf("status after on: %q, %v; want on", p, err)
	}
	if _, err := r.Run(ctx, dev, ActionMonitor); err != nil {
		t.Fatalf("monitor: %v", err)
	}
}

func TestDummyFailTypeFails(t *testing.T) {
	r := fastRunner()
	fenceDummy(t)
	// type=fail makes fence_dummy's power state "unknown" after off, so its
	// own verification fails and it exits 1.
	dev := NewDevice("broken", "fence_dummy", map[string]string{"type": "fail", "plug": "n1", "power_timeout": "1"})
	_, err := r.PowerOff(context.Background(), dev)
	if err == nil {
		t.Fatal("PowerOff through fence_dummy type=fail succeeded")
	}
	t.Logf("as expected: %v", err)
}

func TestOffNotVerifiedIsFailure(t *testing.T) {
	// An agent that says yes to off but whose status keeps saying on.
	script := writeScript(t, "liar", "cat >/dev/null\nexit 0\n")
	r := fastRunner()
	runs, err := r.PowerOff(context.Background(), Device{Name: "liar", Agent: script})
	if !errors.Is(err, ErrNotOff) {
		t.Fatalf("err %v; want ErrNotOff", err)
	}
	if want := 1 + r.StatusRetries; len(runs) != want {
		t.Fatalf("%d runs; want off + %d status", len(runs), r.StatusRetries)
	}
}

func TestStatusExitCodes(t *testing.T) {
	r := fastRunner()
	for _, tc := range []struct {
		code    int
		power   Power
		wantErr bool
	}{{0, PowerOn, false}, {2, PowerOff, false}, {1, PowerUnknown, true}, {3, PowerUnknown, true}, {127, PowerUnknown, true}} {
		script := writeScript(t, "st", fmt.Sprintf("cat >/dev/null\nexit %d\n", tc.code))
		p, res, err := r.Status(context.Background(), Device{Name: "d", Agent: script})
		if p != tc.power || (err != nil) != tc.wantErr || res.ExitCode != tc.code {
			t.Errorf("exit %d: power %q err %v code %d; want %q, err %v", tc.code, p, err, res.ExitCode, tc.power, tc.wantErr)
		}
	}
	// off and on: only 0 is success; 2 is not "off" there.
	script := writeScript(t, "off2", "cat >/dev/null\nexit 2\n")
	if _, err := r.Run(context.Background(), Device{Name: "d", Agent: script}, ActionOff); err == nil {
		t.Error("off exiting 2 counted as success")
	}
}

func TestAgentTimeoutKillsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	// The agent starts a child (as fence agents start ipmitool or ssh) and
	// both hang; the timeout must kill the whole process group.
	script := writeScript(t, "hang", "sleep 300 &\necho $! > "+pidFile+"\nwait\n")
	r := fastRunner()
	dev := Device{Name: "hang", Agent: script, TimeoutMs: 300}
	res, err := r.Run(context.Background(), dev, ActionOff)
	if !errors.Is(err, ErrTimeout) || !res.TimedOut || res.ExitCode != -1 {
		t.Fatalf("err %v timedOut %v exit %d; want ErrTimeout", err, res.TimedOut, res.ExitCode)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("agent's child %d still alive after the timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A timed-out status is not "off" and not "on".
	p, _, err := r.Status(context.Background(), dev)
	if err == nil || p != PowerUnknown {
		t.Fatalf("status timeout: %q %v; want an error", p, err)
	}
	// Nor is a timed-out off a fence.
	if _, err := r.PowerOff(context.Background(), dev); !errors.Is(err, ErrTimeout) {
		t.Fatalf("PowerOff timeout: %v", err)
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func TestCancelledContextIsFailure(t *testing.T) {
	script := writeScript(t, "hang", "exec sleep 300\n")
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	res, err := fastRunner().Run(ctx, Device{Name: "hang", Agent: script}, ActionOff)
	if err == nil || !errors.Is(err, context.Canceled) || res.TimedOut {
		t.Fatalf("err %v timedOut %v; want context.Canceled", err, res.TimedOut)
	}
}

func TestMissingAgent(t *testing.T) {
	_, err := fastRunner().Run(context.Background(), Device{Name: "x", Agent: "fence_does_not_exist_here"}, ActionStatus)
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("err %v; want not found", err)
	}
}

func TestOutputBounded(t *testing.T) {
	script := writeScript(t, "chatty", "cat >/dev/null\nhead -c 1000000 /dev/zero | tr '\\0' x\nexit 0\n")
	r := &AgentRunner{MaxOutputBytes: 1000}
	res, err := r.Run(context.Background(), Device{Name: "c", Agent: script}, ActionOn)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Output) > 1000 || !res.OutputTruncated {
		t.Fatalf("output %d bytes truncated %v; want <= 1000, truncated", len(res.Output), res.OutputTruncated)
	}
}

func TestStdinProtocol(t *testing.T) {
	out := filepath.Join(t.TempDir(), "stdin")
	script := writeScript(t, "echo", "cat > "+out+"\n")
	dev := NewDevice("d", script, map[string]string{"ip": "10.0.0.1", "username": "admin", "password": "pw=with=equals", "plug": "3"})
	if _, err := fastRunner().Run(context.Background(), dev, ActionReboot); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	want := "ip=10.0.0.1\npassword=pw=with=equals\nplug=3\nusername=admin\naction=reboot\n"
	if string(b) != want {
		t.Fatalf("stdin:\n%s\nwant:\n%s", b, want)
	}
}

func TestDeviceValidateRefusesInjection(t *testing.T) {
	for _, dev := range []Device{
		NewDevice("d", "fence_dummy", map[string]string{"plug": "1\naction=on"}),
		NewDevice("d", "fence_dummy", map[string]string{"password": "x\naction=on"}),
		NewDevice("d", "fence_dummy", map[string]string{"action": "on"}),
		NewDevice("d", "fence_dummy", map[string]string{"bad name": "1"}),
		NewDevice("d", "fence_dummy", map[string]string{"a=b": "1"}),
		NewDevice("d", "../fence_dummy", nil),
		NewDevice("d", "", nil),
		NewDevice("", "fence_dummy", nil),
	} {
		if err := dev.Validate(); err == nil {
			t.Errorf("%+v: valid; want an error", dev)
		} else if strings.Contains(err.Error(), "x\naction") {
			t.Errorf("error shows a secret value: %v", err)
		}
	}
}

// TestPasswordNeverLeaks passes a password to real agents (fence_dummy,
// which warns about the unknown option and prints it, and a script that
// echoes its stdin) and checks every place it could surface.
func TestPasswordNeverLeaks(t *testing.T) {
	const secret = "hunter2-Zq9"
	var logBuf bytes.Buffer
	r := fastRunner()
	r.Logger = slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))

	echo := writeScript(t, "echo", "cat >&2\necho 'Failed: unable to log in with password '"+secret+"\nexit 1\n")
	devs := []Device{NewDevice("echo", echo, map[string]string{"username": "root", "password": secret, "ip": "127.0.0.1"})}
	if isExecutable("/usr/sbin/fence_dummy") == nil {
		d := dummyDevice(t, "dummy")
		d.SetParam("password", secret)
		devs = append(devs, d)
	}
	var surfaces []string
	for _, dev := range devs {
		res, err := r.Run(context.Background(), dev, ActionStatus)
		if err != nil {
			surfaces = append(surfaces, err.Error())
		}
		runs, err := r.PowerOff(context.Background(), dev)
		if err != nil {
			surfaces = append(surfaces, err.Error())
		}
		for _, x := range append(runs, res) {
			j, _ := json.Marshal(x)
			surfaces = append(surfaces, x.Output, string(j), fmt.Sprintf("%v %+v %#v", x, x, x))
		}
		j, _ := json.Marshal(dev)
		surfaces = append(surfaces, string(j), fmt.Sprintf("%v|%+v|%#v|%s|%q|%x", dev, dev, dev, dev.Secrets["password"], dev.Secrets["password"], dev.Secrets["password"]))
		if !strings.Contains(res.Output+runs[0].Output, redacted) {
			t.Errorf("%s: output does not show the redaction marker; was the password echoed at all? %q", dev.Name, res.Output)
		}
	}
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("device", "dev", devs[0], "pw", devs[0].Secrets["password"])
	surfaces = append(surfaces, logBuf.String())
	for _, s := range surfaces {
		if strings.Contains(s, secret) || strings.Contains(s, secret[:5]) {
			t.Fatalf("password leaked into: %s", s)
		}
	}
}

func TestTruncationDoesNotLeakSecretPrefix(t *testing.T) {
	const secret = "abcdefghij"
	b := &boundedBuffer{limit: 8}
	b.Write([]byte("pw=abcdefghij and more"))
	out, trunc := b.result(map[string]Secret{"password": NewSecret(secret)})
	if !trunc || strings.Contains(out, "abcde") {
		t.Fatalf("output %q truncated %v", out, trunc)
	}
}

func TestDummyMetadata(t *testing.T) {
	fenceDummy(t)
	md, err := fastRunner().Metadata(context.Background(), "fence_dummy")
	if err != nil {
		t.Fatal(err)
	}
	if md.Name != "fence_dummy" {
		t.Errorf("name %q", md.Name)
	}
	p, ok := md.Parameter("status_file")
	if !ok || p.Default == "" || p.Type != "string" {
		t.Errorf("status_file: %+v %v", p, ok)
	}
	if p, ok := md.Parameter("action"); !ok || !p.Required {
		t.Errorf("action: %+v", p)
	}
	if len(md.Actions) == 0 || !strings.Contains(strings.Join(md.Actions, ","), "status") {
		t.Errorf("actions %v", md.Actions)
	}
}
