package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
)

// TestFenceAgentTestCLI drives fence_dummy through the CLI: on, status on,
// off, status off; with a password that must not show in any output.
func TestFenceAgentTestCLI(t *testing.T) {
	testbin.Require(t, "fence_dummy")
	bin := testbin.Paddock(t)
	status := "status_file=" + filepath.Join(t.TempDir(), "power")
	const secret = "cli-secret-7Qx"
	run := func(args ...string) string {
		t.Helper()
		out := testbin.Run(t, time.Minute, bin, append([]string{"fence", "agent-test", "--agent", "fence_dummy", "--param", status, "--param", "password=" + secret}, args...)...)
		if strings.Contains(out, secret) {
			t.Fatalf("password in output:\n%s", out)
		}
		return out
	}
	run("--action", "on")
	if out := run(); !strings.Contains(out, "power:     on") {
		t.Fatalf("status after on:\n%s", out)
	}
	run("--action", "off")
	out := run("--json")
	var rep struct {
		Power    string `json:"power"`
		ExitCode int    `json:"exit_code"`
		OK       bool   `json:"ok"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Power != "off" || rep.ExitCode != 2 || !rep.OK {
		t.Fatalf("status --json after off: %+v %v\n%s", rep, err, out)
	}
}

func TestFenceAgentTestCLIFailure(t *testing.T) {
	bin := testbin.Paddock(t)
	script := filepath.Join(t.TempDir(), "fence_broken")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncat >/dev/null\necho 'Failed: unable to connect' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PDK_TEST_PW", "env-secret-5Zr")
	out, err := testbin.RunErr(time.Minute, bin, "fence", "agent-test", "--agent", script, "--param-env", "password=PDK_TEST_PW", "--action", "off")
	if err == nil || !strings.Contains(out, "exit status 1") || !strings.Contains(out, "unable to connect") {
		t.Fatalf("failing agent: %v\n%s", err, out)
	}
	if strings.Contains(out, "env-secret") {
		t.Fatalf("password in output:\n%s", out)
	}
	out, err = testbin.RunErr(time.Minute, bin, "fence", "agent-test", "--agent", script, "--param", "plug")
	if err == nil || !strings.Contains(out, "KEY=VALUE") {
		t.Fatalf("bad --param: %v\n%s", err, out)
	}
}

func TestFenceAgentMetadataCLI(t *testing.T) {
	testbin.Require(t, "fence_dummy")
	bin := testbin.Paddock(t)
	out := testbin.Run(t, time.Minute, bin, "fence", "agent-metadata", "--agent", "fence_dummy")
	for _, want := range []string{"fence_dummy", "status_file", "PARAMETER"} {
		if !strings.Contains(out, want) {
			t.Errorf("metadata lacks %q:\n%s", want, out)
		}
	}
	out = testbin.Run(t, time.Minute, bin, "fence", "agent-metadata", "--agent", "fence_dummy", "--json")
	var md struct {
		Parameters []struct{ Name string } `json:"parameters"`
	}
	if err := json.Unmarshal([]byte(out), &md); err != nil || len(md.Parameters) < 5 {
		t.Fatalf("metadata --json: %v\n%s", err, out)
	}
}
