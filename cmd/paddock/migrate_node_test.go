package main

// "paddock migrate G --to NODE" across real processes: the destination
// node starts the receiving guest process itself (node/guestrecv.go).

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/migrate"
	"github.com/paddock-io/paddock/node"
)

// lastJSONLine decodes the last line of out that starts with "{".
func lastJSONLine(t *testing.T, out string, v any) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") || strings.HasPrefix(lines[i], "[") {
			if err := json.Unmarshal([]byte(lines[i]), v); err != nil {
				t.Fatalf("%q: %v", lines[i], err)
			}
			return
		}
	}
	t.Fatalf("no JSON line in:\n%s", out)
}

// nodeGuests is "paddock guest list --json" on nd.
func nodeGuests(t *testing.T, nd *volNode) []node.GuestReceiver {
	t.Helper()
	var rs []node.GuestReceiver
	lastJSONLine(t, testbin.Run(t, 30*time.Second, testbin.Paddock(t), "guest", "list", "--data-dir", nd.dir, "--json"), &rs)
	return rs
}

// TestMigrateToNode: a guest with a volume, started beside n1, is migrated
// with "--to n2" and no receiver started by hand: n2 starts one, the guest
// runs on n2's side afterwards (consistent and writing, through the
// control socket n2 gave it), the volume's primary is n2, and n2 lists the
// guest as running. A first attempt that fails after n2 started the
// receiver leaves the guest at the source and the receiver waiting, and
// the second attempt uses it. Before that, "--to n9" (no such node) fails clearly
// and the guest keeps running at the source; after it, "--to n3" with n3
// down fails clearly and the guest keeps running on n2's side.
func TestMigrateToNode(t *testing.T) {
	requireUffdOrSkip(t)
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "n1,n2,n3", "--data-dir", nodes[0].dir)
	waitServed(t, nodes[2], "vm", 30*time.Second)
	src := startVolumeGuest(t, nodes[0], "g1", "vm")

	out, err := testbin.RunErr(time.Minute, bin, "migrate", "g1", "--control-sock", src.sock, "--to", "n9", "--transport", "tcp")
	if err == nil || !strings.Contains(out, `no node named "n9"`) || !strings.Contains(out, "keeps running here") {
		t.Fatalf("migrate --to n9: %v\n%s", err, out)
	}
	src.runsOn(t)
	for _, nd := range nodes {
		if rs := nodeGuests(t, nd); len(rs) != 0 {
			t.Fatalf("%s started guests for a migration to n9: %+v", nd.name, rs)
		}
	}

	// A migration that fails (its timeout passes at once) after n2
	// started the receiver: the guest stays at the source, the receiver
	// waits on, and the next attempt gets the same one.
	out, err = testbin.RunErr(3*time.Minute, bin, "migrate", "g1", "--control-sock", src.sock, "--to", "n2", "--transport", "tcp", "--timeout", "1ms")
	if err == nil || !strings.Contains(out, "node n2 started a receiver for g1") {
		t.Fatalf("migrate --to n2 --timeout 1ms: %v\n%s", err, out)
	}
	src.runsOn(t)
	var waiting node.GuestReceiver
	deadline := time.Now().Add(30 * time.Second)
	for waiting.State != "waiting" {
		if rs := nodeGuests(t, nodes[1]); len(rs) == 1 {
			waiting = rs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("n2's receiver does not wait again: %+v", nodeGuests(t, nodes[1]))
		}
		time.Sleep(100 * time.Millisecond)
	}

	out, err = testbin.RunErr(3*time.Minute, bin, "migrate", "g1", "--control-sock", src.sock, "--to", "n2", "--transport", "tcp", "--json")
	if err != nil {
		t.Fatalf("migrate --to n2: %v\n%s", err, out)
	}
	if want := fmt.Sprintf("node n2 has a receiver waiting for g1 at %s (pid %d", waiting.Addr, waiting.Pid); !strings.Contains(out, want) {
		t.Fatalf("the second attempt did not get the waiting receiver (%s):\n%s", want, out)
	}
	var st migrate.Stats
	lastJSONLine(t, out, &st)
	t.Logf("%s", strings.SplitN(out, "\n", 2)[0])
	t.Logf("downtime %.1f ms, of which hand-off %.1f ms; total %.0f ms", st.DowntimeMs, st.HandoffMs, st.TotalTimeMs)
	if st.Status != migrate.StatusCompleted || st.HandoffMs <= 0 {
		t.Fatalf("stats: %+v", st)
	}
	select {
	case <-waitExited(src.proc):
	case <-time.After(30 * time.Second):
		t.Fatal("the source guest process did not exit after the migration")
	}
	var dst *volumeGuestProc
	deadline = time.Now().Add(30 * time.Second)
	for dst == nil {
		for _, r := range nodeGuests(t, nodes[1]) {
			if r.Name == "g1" && r.State == "running" && r.Node == "n2" {
				dst = &volumeGuestProc{name: "g1", sock: r.ControlSock}
			}
		}
		if dst == nil && time.Now().After(deadline) {
			t.Fatalf("n2 lists no running g1: %+v", nodeGuests(t, nodes[1]))
		}
		time.Sleep(100 * time.Millisecond)
	}
	dst.runsOn(t)
	if gs := dst.status(t); len(gs.Volumes) != 1 || gs.Volumes[0] != "vm" || gs.NodeDir != nodes[1].dir {
		t.Fatalf("the guest on n2's side: %+v", gs)
	}
	vs := nodes[2].volumeStatus(t, "vm")
	if row, ok := primaryRow(vs); vs.Primary != "n2" || !ok || row.Node != "n2" {
		t.Fatalf("vm after the migration: primary %q, rows %+v", vs.Primary, vs.Replicas)
	}
	nbdWriteRead(t, nodes[1], nodes[2], "vm", 2<<20, 0x6b)

	// n3 down: refused before any RAM moves; the guest stays on n2's side.
	nodes[2].proc.Kill()
	nodes[0].waitStatus(t, "2 members, quorate", 30*time.Second, members(2))
	nodes[1].waitStatus(t, "2 members, quorate", 30*time.Second, members(2))
	out, err = testbin.RunErr(time.Minute, bin, "migrate", "g1", "--control-sock", dst.sock, "--to", "n3", "--transport", "tcp")
	if err == nil || !strings.Contains(out, "node n3 is down") || !strings.Contains(out, "keeps running here") {
		t.Fatalf("migrate --to n3 (down): %v\n%s", err, out)
	}
	dst.runsOn(t)

	// The guest process n2 started ends when n2 stops: by n2's orderly
	// stop (SIGTERM here), and else by the kernel's parent-death signal.
	pid := dst.status(t).Pid
	nodes[1].proc.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-waitExited(nodes[1].proc):
	case <-time.After(30 * time.Second):
		t.Fatal("n2 did not stop on SIGTERM")
	}
	deadline = time.Now().Add(30 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the guest process %d n2 started outlived n2", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// processAlive says whether pid runs (a zombie waiting to be reaped does
// not).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// TestReceiverIdleTimeout: a receiver no migration uses stops by itself
// after its --idle-timeout, and says why.
func TestReceiverIdleTimeout(t *testing.T) {
	dir := t.TempDir()
	p := testbin.Start(t, testbin.Paddock(t), "guest", "receive", "--name", "idle", "--ram", "4M", "--listen", freeMigrationPort(t),
		"--tls-dir", dir, "--insecure-self-signed", "--control-sock", dir+"/idle.sock", "--idle-timeout", "1s")
	p.WaitFor(t, "waiting for a migration", 30*time.Second)
	p.WaitFor(t, "no migration came within 1s: stopping", 30*time.Second)
	select {
	case <-waitExited(p):
	case <-time.After(30 * time.Second):
		t.Fatal("the idle receiver did not exit")
	}
	if code := p.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, p.Output())
	}
}

// TestMigrateToNodeHugePages: a guest on huge pages migrates to a node,
// which starts its receiver on huge pages too (the request says so), and
// runs there.
func TestMigrateToNodeHugePages(t *testing.T) {
	requireUffdOrSkip(t)
	testbin.RequireHugePages(t, 2*32/2)
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	src := &volumeGuestProc{name: "gh", sock: filepath.Join(t.TempDir(), "gh.sock")}
	src.proc = testbin.Start(t, bin, "guest", "start", "--name", "gh", "--ram", "32M", "--dirty-rate", "4M", "--pattern", "sequential",
		"--hugepages", "--data-dir", nodes[0].dir, "--control-sock", src.sock)
	src.proc.WaitFor(t, "running", 60*time.Second)
	if st := src.status(t); !st.HugePages {
		t.Fatalf("guest start --hugepages: status %+v", st)
	}
	out, err := testbin.RunErr(3*time.Minute, bin, "migrate", "gh", "--control-sock", src.sock, "--to", "n2", "--transport", "tcp")
	if err != nil {
		t.Fatalf("migrate --to n2: %v\n%s", err, out)
	}
	var dst *volumeGuestProc
	deadline := time.Now().Add(30 * time.Second)
	for dst == nil {
		for _, r := range nodeGuests(t, nodes[1]) {
			if r.Name == "gh" && r.State == "running" {
				if !r.HugePages {
					t.Fatalf("n2 started a receiver without huge pages: %+v", r)
				}
				dst = &volumeGuestProc{name: "gh", sock: r.ControlSock}
			}
		}
		if dst == nil && time.Now().After(deadline) {
			t.Fatalf("n2 lists no running gh: %+v", nodeGuests(t, nodes[1]))
		}
		time.Sleep(100 * time.Millisecond)
	}
	dst.runsOn(t)
	if st := dst.status(t); !st.HugePages {
		t.Fatalf("the guest on n2 is not on huge pages: %+v", st)
	}
}
