package main

// Replicated volume tests across real processes: three paddock node
// daemons on 127.0.0.x, fio's nbd engine as the client, kill -9 and
// restart as the faults.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/node"
)

type volNode struct {
	testNode
	storage string
}

// freePortPair finds a port p on ip with p (NBD) and p+1 (replication)
// free for TCP, and p free for UDP too (it may also be a cluster port).
func freePortPair(t *testing.T, ip string) int {
	for i := 0; i < 50; i++ {
		p := freePort(t, ip)
		if l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, p+1)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port pair")
	return 0
}

// makeVolumeCluster is makeCluster with storage addresses.
func makeVolumeCluster(t *testing.T, n int) []*volNode {
	testbin.Require(t, "fio")
	bin := testbin.Paddock(t)
	root := t.TempDir()
	var nodes []*volNode
	for i := 1; i <= n; i++ {
		ip := fmt.Sprintf("127.0.0.%d", 20+i)
		nd := &volNode{testNode: testNode{name: fmt.Sprintf("n%d", i), dir: filepath.Join(root, fmt.Sprintf("n%d", i)),
			addr: fmt.Sprintf("%s:%d", ip, freePort(t, ip))}}
		nd.storage = fmt.Sprintf("%s:%d", ip, freePortPair(t, ip))
		nodes = append(nodes, nd)
	}
	testbin.Run(t, 30*time.Second, bin, "cluster", "create", "lab", "--data-dir", nodes[0].dir, "--node-name", nodes[0].name,
		"--cluster-addr", nodes[0].addr, "--storage-addr", nodes[0].storage)
	nodes[0].start(t)
	for i, nd := range nodes[1:] {
		tok := strings.Fields(testbin.Run(t, 30*time.Second, bin, "cluster", "add-token", "--data-dir", nodes[0].dir))[0]
		testbin.Run(t, 60*time.Second, bin, "cluster", "join", nodes[0].addr, "--token", tok, "--data-dir", nd.dir,
			"--node-name", nd.name, "--cluster-addr", nd.addr, "--storage-addr", nd.storage)
		nd.start(t)
		nodes[0].waitStatus(t, fmt.Sprintf("%d members, quorate", i+2), 20*time.Second, members(i+2))
	}
	for _, nd := range nodes {
		nd.waitStatus(t, fmt.Sprintf("%d members, quorate", n), 20*time.Second, members(n))
	}
	return nodes
}

func (n *volNode) uri(vol string) string { return "nbd://" + n.storage + "/" + vol }

func (n *volNode) volumeStatus(t *testing.T, vol string) node.VolumeStatus {
	out, err := testbin.RunErr(15*time.Second, testbin.Paddock(t), "volume", "status", vol, "--json", "--data-dir", n.dir)
	var st node.VolumeStatus
	if err == nil {
		json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &st)
	}
	return st
}

// waitUpToDate waits until every replica is UpToDate with nothing to send.
func (n *volNode) waitUpToDate(t *testing.T, vol string, timeout time.Duration) node.VolumeStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := n.volumeStatus(t, vol)
		ok := len(st.Replicas) > 0
		for _, r := range st.Replicas {
			if r.State != "UpToDate" || r.OutOfSyncBytes != 0 {
				ok = false
			}
		}
		if ok {
			return st
		}
		if time.Now().After(deadline) {
			// The whole status (primary, per-node reports with their
			// promotion errors) says why, not just the empty rows.
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("volume %s not up to date within %v:\n%s", vol, timeout, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func replicaData(t *testing.T, n *volNode, id uint64) []byte {
	b, err := os.ReadFile(filepath.Join(n.dir, "volumes", fmt.Sprint(id), "data"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type fioResult struct {
	Jobs []struct {
		Error int `json:"error"`
		Write struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"write"`
		Read struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"read"`
	} `json:"jobs"`
}

func parseFio(t *testing.T, out string) fioResult {
	t.Helper()
	var res fioResult
	if i := strings.Index(out, "{"); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Jobs) != 1 {
		t.Fatalf("fio output: %v\n%s", err, out)
	}
	return res
}

// The first test: fio with crc32c verification writes through the
// primary while a secondary is killed with SIGKILL and restarted; no I/O
// error, verification passes, the replicas end byte-identical, and the
// bytes resent are at most 1.25x the bytes the secondary missed.
func TestVolumeSecondaryKilledUnderFio(t *testing.T) {
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "64M", "--nodes", "n1,n2,n3", "--data-dir", nodes[0].dir)
	st := nodes[1].waitUpToDate(t, "vm", 30*time.Second)
	fio := testbin.Start(t, "fio", "--name=rep", "--ioengine=nbd", "--uri="+nodes[0].uri("vm"),
		"--rw=randwrite", "--bs=64k", "--iodepth=16", "--size=64M", "--io_size=192M", "--rate=48m",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json")
	time.Sleep(1500 * time.Millisecond)
	nodes[2].proc.Kill()
	time.Sleep(1500 * time.Millisecond)
	nodes[2].start(t)
	deadline := time.Now().Add(3 * time.Minute)
	for !fio.Exited() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if !fio.Exited() {
		t.Fatalf("fio did not finish:\n%s", fio.Output())
	}
	res := parseFio(t, fio.Output())
	if j := res.Jobs[0]; j.Error != 0 || j.Write.IOBytes < 64<<20 || j.Read.IOBytes == 0 {
		t.Fatalf("fio: error %d, wrote %d, verified %d", j.Error, j.Write.IOBytes, j.Read.IOBytes)
	}
	// volume status --watch follows the resync and returns once every
	// replica is UpToDate.
	watched := testbin.Run(t, 90*time.Second, testbin.Paddock(t), "volume", "status", "vm", "--watch", "--interval", "100ms", "--data-dir", nodes[1].dir)
	if testing.Verbose() {
		t.Logf("volume status --watch:\n%s", watched)
	}
	last := watched[strings.LastIndex(watched, "volume vm:"):]
	if !strings.Contains(last, "RATE") || !strings.Contains(last, "ETA") || strings.Count(last, "UpToDate") != 3 {
		t.Fatalf("volume status --watch ended before every replica was UpToDate, or lacks RATE/ETA:\n%s", watched)
	}
	// The replica that resynced says so once it is up to date.
	if !strings.Contains(last, "last resync: ") {
		t.Fatalf("volume status does not show n3's last resync:\n%s", last)
	}
	st = nodes[1].waitUpToDate(t, "vm", 60*time.Second)
	var prim *node.ReplicaReport
	for i := range st.Reports {
		if st.Reports[i].Primary != nil {
			prim = &st.Reports[i]
		}
	}
	if prim == nil || prim.Node != "n1" {
		t.Fatalf("no primary on n1: %+v", st.Reports)
	}
	for _, ps := range prim.Primary.Peers {
		if ps.Node != 3 {
			continue
		}
		if ps.MissedBytes == 0 || ps.ResentBytes == 0 {
			t.Fatalf("n3 missed %d bytes, %d resent: the kill did not land mid-write", ps.MissedBytes, ps.ResentBytes)
		}
		if float64(ps.ResentBytes) > 1.25*float64(ps.MissedBytes) {
			t.Fatalf("resent %d bytes for %d missed: more than 1.25x", ps.ResentBytes, ps.MissedBytes)
		}
		t.Logf("n3 missed %d bytes of writes; %d bytes resent", ps.MissedBytes, ps.ResentBytes)
	}
	id := st.Volume.ID
	want := replicaData(t, nodes[0], id)
	for _, nd := range nodes[1:] {
		if !bytes.Equal(want, replicaData(t, nd, id)) {
			t.Fatalf("replica on %s differs from the primary's", nd.name)
		}
	}
}

// Kill -9 the primary after fio wrote through another node, promote a
// surviving replica by hand: every write fio saw acknowledged reads back
// (fio's verify-only pass) through the third node.
func TestVolumePrimaryKilledThenPromoted(t *testing.T) {
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "32M", "--nodes", "n1,n2,n3", "--data-dir", nodes[0].dir)
	nodes[1].waitUpToDate(t, "vm", 30*time.Second)
	args := []string{"--name=acked", "--ioengine=nbd", "--rw=randwrite", "--bs=16k", "--iodepth=16", "--size=32M",
		"--verify=crc32c", "--verify_state_save=0", "--randseed=42", "--output-format=json"}
	// Written through n2, which forwards to the primary on n1.
	out := testbin.Run(t, 3*time.Minute, "fio", append(args, "--uri="+nodes[1].uri("vm"), "--do_verify=0")...)
	if j := parseFio(t, out).Jobs[0]; j.Error != 0 || j.Write.IOBytes != 32<<20 {
		t.Fatalf("fio write: error %d, wrote %d", j.Error, j.Write.IOBytes)
	}
	nodes[0].proc.Kill()
	testbin.Run(t, 60*time.Second, bin, "volume", "promote", "vm", "--node", "n2", "--data-dir", nodes[1].dir)
	out = testbin.Run(t, 3*time.Minute, "fio", append(args, "--uri="+nodes[2].uri("vm"), "--verify_only", "--verify_fatal=1")...)
	if j := parseFio(t, out).Jobs[0]; j.Error != 0 || j.Read.IOBytes != 32<<20 {
		t.Fatalf("fio verify after failover: error %d, verified %d\n%s", j.Error, j.Read.IOBytes, out)
	}
	st := nodes[2].volumeStatus(t, "vm")
	if st.Primary != "n2" {
		t.Fatalf("primary is %q after promote", st.Primary)
	}
	// The old primary returns as a secondary and catches up.
	nodes[0].start(t)
	st = nodes[2].waitUpToDate(t, "vm", 60*time.Second)
	for _, r := range st.Replicas {
		if r.Node == "n1" && r.Role != "secondary" {
			t.Fatalf("old primary came back as %s", r.Role)
		}
	}
}

// Bad input: a volume name not in the configuration, a size that is not
// a multiple of 4 KiB, a write quorum below a majority, a replica on an
// unknown node — clear errors, nothing created.
func TestVolumeBadInput(t *testing.T) {
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"volume", "create", "a", "--size", "1000"}, "multiple of 4096"},
		{[]string{"volume", "create", "b", "--size", "1G", "--replicas", "3", "--write-quorum", "1"}, "majority"},
		{[]string{"volume", "create", "c", "--size", "1G", "--nodes", "n1,nope"}, "no node named"},
		{[]string{"volume", "create", "../x", "--size", "1G"}, "volume name"},
		{[]string{"volume", "create", "d", "--size", "1G", "--replicas", "4"}, "only 3 nodes"},
		{[]string{"volume", "status", "ghost"}, "no volume named"},
		{[]string{"volume", "promote", "ghost", "--node", "n1"}, "no volume named"},
	}
	for _, c := range cases {
		out, err := testbin.RunErr(60*time.Second, bin, append(c.args, "--data-dir", nodes[0].dir)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%v: want an error containing %q, got %v:\n%s", c.args, c.want, err, out)
		}
	}
	out := testbin.Run(t, 30*time.Second, bin, "volume", "list", "--json", "--data-dir", nodes[0].dir)
	if strings.TrimSpace(out) != "[]" {
		t.Fatalf("bad input created volumes: %s", out)
	}
	// An export name that is no volume: the NBD handshake refuses it.
	out, err := testbin.RunErr(30*time.Second, "qemu-io", "-f", "raw", "-c", "read 0 4k", nodes[0].uri("ghost"))
	if err == nil {
		t.Fatalf("qemu-io opened a volume that does not exist:\n%s", out)
	}
}

func flipAt(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// Corruption: bytes flipped in replica files on disk. A read through the
// primary of its own corrupt block returns the right data; verify names
// exactly the corrupt blocks and exits 3; scrub repairs them; the
// replicas end identical.
func TestVolumeScrubRepairsCorruption(t *testing.T) {
	testbin.Require(t, "qemu-io")
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "n1,n2,n3", "--data-dir", nodes[0].dir)
	st := nodes[0].waitUpToDate(t, "vm", 30*time.Second)
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4M", "-c", "flush", nodes[1].uri("vm"))
	dataOf := func(n *volNode) string { return filepath.Join(n.dir, "volumes", fmt.Sprint(st.Volume.ID), "data") }
	flipAt(t, dataOf(nodes[0]), 3*4096+10) // block 3 on the primary
	flipAt(t, dataOf(nodes[2]), 9*4096)    // block 9 on n3
	flipAt(t, dataOf(nodes[2]), 700*4096+4095)
	// The primary's corrupt block reads right (repaired from a replica).
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 4M", nodes[2].uri("vm"))
	out, err := testbin.RunErr(60*time.Second, bin, "volume", "verify", "vm", "--json", "--data-dir", nodes[1].dir)
	if exitCode(err) != 3 {
		t.Fatalf("verify of a corrupt volume: exit %d, want 3\n%s", exitCode(err), out)
	}
	if !strings.Contains(out, `"bad_blocks": [
        9,
        700
      ]`) {
		t.Fatalf("verify did not name blocks 9 and 700 of n3:\n%s", out)
	}
	testbin.Run(t, 60*time.Second, bin, "volume", "scrub", "vm", "--data-dir", nodes[1].dir)
	// resolve --discard: n3's replica is overwritten from the primary.
	flipAt(t, dataOf(nodes[2]), 2<<20)
	testbin.Run(t, 60*time.Second, bin, "volume", "resolve", "vm", "--discard", "n3", "--data-dir", nodes[1].dir)
	nodes[1].waitUpToDate(t, "vm", 30*time.Second)
	testbin.Run(t, 60*time.Second, bin, "volume", "verify", "vm", "--data-dir", nodes[2].dir)
	want := replicaData(t, nodes[0], st.Volume.ID)
	for _, nd := range nodes[1:] {
		if !bytes.Equal(want, replicaData(t, nd, st.Volume.ID)) {
			t.Fatalf("replica on %s differs after scrub", nd.name)
		}
	}
}
