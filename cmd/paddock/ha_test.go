package main

// Failover across real processes: the primary's node is killed with
// SIGKILL; the survivors fence it through fence_dummy (a real fence
// agent, its power in a file), move the primary role to an up-to-date
// replica, and fio through a surviving node finds every write it saw
// acknowledged.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/node"
)

func TestFailoverFencesAndPromotes(t *testing.T) {
	testbin.Require(t, "fence_dummy")
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	power := filepath.Join(t.TempDir(), "n1-power")
	os.WriteFile(power, []byte("on"), 0o600)
	testbin.Run(t, 60*time.Second, bin, "fence", "device", "add", "dummy-n1", "--agent", "fence_dummy",
		"--param", "type=file", "--param", "status_file="+power, "--param", "password=s3cret", "--data-dir", nodes[1].dir)
	testbin.Run(t, 60*time.Second, bin, "fence", "level", "add", "n1", "--level", "1", "--devices", "dummy-n1", "--data-dir", nodes[1].dir)
	out := testbin.Run(t, 30*time.Second, bin, "fence", "test", "dummy-n1", "--data-dir", nodes[2].dir)
	if !strings.Contains(out, "power on") {
		t.Fatalf("fence test: %s", out)
	}
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "32M", "--nodes", "n1,n2,n3", "--data-dir", nodes[0].dir)
	nodes[1].waitUpToDate(t, "vm", 30*time.Second)
	args := []string{"--name=acked", "--ioengine=nbd", "--rw=randwrite", "--bs=16k", "--iodepth=16", "--size=32M",
		"--verify=crc32c", "--verify_state_save=0", "--randseed=7", "--output-format=json"}
	out = testbin.Run(t, 3*time.Minute, "fio", append(args, "--uri="+nodes[2].uri("vm"), "--do_verify=0")...)
	if j := parseFio(t, out).Jobs[0]; j.Error != 0 || j.Write.IOBytes != 32<<20 {
		t.Fatalf("fio write: error %d, wrote %d", j.Error, j.Write.IOBytes)
	}
	killed := time.Now()
	nodes[0].proc.Kill()
	deadline := time.Now().Add(60 * time.Second)
	var st node.VolumeStatus
	for {
		st = nodes[2].volumeStatus(t, "vm")
		if st.Primary != "" && st.Primary != "n1" {
			up := false
			for _, r := range st.Replicas {
				up = up || (r.Role == "primary" && r.State == "UpToDate")
			}
			if up {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new primary within 60 s: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("new primary %s serving %.1f s after the kill", st.Primary, time.Since(killed).Seconds())
	// The old primary was powered off (verified): its epoch was released
	// at the voters, so the new one did not wait out a read lease.
	promotedRE := regexp.MustCompile(`msg=promoted .*volume_name=vm .*epoch=2 .*lease_wait=(\S+)`)
	var leaseWait string
	for _, n := range nodes[1:] {
		if m := promotedRE.FindStringSubmatch(n.proc.Output()); m != nil {
			leaseWait = m[1]
		}
	}
	if leaseWait != "0s" {
		t.Fatalf("the new primary's read-lease wait after a verified power fence: %q, want 0s (the fenced primary's epoch is released)", leaseWait)
	}
	if b, _ := os.ReadFile(power); strings.TrimSpace(string(b)) != "off" {
		t.Fatalf("fence_dummy's power file says %q, want off", b)
	}
	show := testbin.Run(t, 30*time.Second, bin, "fence", "show", "--data-dir", nodes[1].dir)
	if strings.Contains(show, "s3cret") {
		t.Fatal("fence show printed the device password")
	}
	out = testbin.Run(t, 3*time.Minute, "fio", append(args, "--uri="+nodes[1].uri("vm"), "--verify_only", "--verify_fatal=1")...)
	if j := parseFio(t, out).Jobs[0]; j.Error != 0 || j.Read.IOBytes != 32<<20 {
		t.Fatalf("fio verify after failover: error %d, verified %d\n%s", j.Error, j.Read.IOBytes, out)
	}
}

// waitPrimaryNot waits until the volume's primary is up and is not the
// given node.
func waitPrimaryNot(t *testing.T, n *volNode, vol, not string, timeout time.Duration) node.VolumeStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := n.volumeStatus(t, vol)
		if st.Primary != "" && st.Primary != not {
			for _, r := range st.Replicas {
				if r.Role == "primary" && r.Node == st.Primary && r.State == "UpToDate" {
					return st
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new primary other than %s within %v: %+v", not, timeout, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A stale primary: SIGSTOP the primary's node, let the others take over
// (no fence device: they wait out its lease) and write new data, then
// SIGCONT it. Reads through the old primary's node never return the old
// data: they fail or return the new.
func TestStalePrimaryAfterPause(t *testing.T) {
	testbin.Require(t, "qemu-io")
	nodes := makeVolumeCluster(t, 3)
	bin := testbin.Paddock(t)
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "n1,n2,n3", "--data-dir", nodes[0].dir)
	nodes[1].waitUpToDate(t, "vm", 30*time.Second)
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0xaa 0 1M", nodes[0].uri("vm"))
	paused := time.Now()
	nodes[0].proc.Cmd.Process.Signal(syscall.SIGSTOP)
	st := waitPrimaryNot(t, nodes[2], "vm", "n1", 60*time.Second)
	t.Logf("new primary %s %.1f s after the pause (lease wait, no fence device)", st.Primary, time.Since(paused).Seconds())
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0xbb 0 1M", nodes[2].uri("vm"))
	nodes[0].proc.Cmd.Process.Signal(syscall.SIGCONT)
	// Right after waking, and for a while: never the old 0xaa.
	for i := 0; i < 10; i++ {
		out, err := testbin.RunErr(30*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0xaa 0 64k", nodes[0].uri("vm"))
		if err == nil && !strings.Contains(out, "Pattern verification failed") {
			t.Fatalf("the woken old primary served the old data:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// And it ends up a secondary, caught up, serving the new data.
	st = nodes[0].waitUpToDate(t, "vm", 60*time.Second)
	for _, r := range st.Replicas {
		if r.Node == "n1" && r.Role != "secondary" {
			t.Fatalf("old primary is %s after waking", r.Role)
		}
	}
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0xbb 0 1M", nodes[0].uri("vm"))
}

// 2 nodes, a witness and a 2-replica volume: either replica may die and
// writes go on with the other and the witness's confirmation; the one
// that was away comes back and resyncs; when the primary's node dies the
// survivor (quorate with the witness's vote) takes over after the lease.
func TestTwoReplicasAndWitness(t *testing.T) {
	testbin.Require(t, "qemu-io")
	nodes := makeVolumeCluster(t, 2)
	bin := testbin.Paddock(t)
	w := newTestWitness(t, nodes[0].dir, fmt.Sprintf("127.0.0.10:%d", freePortPair(t, "127.0.0.10")))
	w.start(t)
	setWitness(t, &nodes[0].testNode, "--witness", w.addr)
	for _, n := range nodes {
		n.waitStatus(t, "2 members and the witness's vote", 20*time.Second, withWitness(2))
	}
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "n1,n2", "--data-dir", nodes[0].dir)
	nodes[0].waitUpToDate(t, "vm", 30*time.Second)
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0xaa 0 2M", nodes[0].uri("vm"))

	// The secondary dies: writes go on.
	nodes[1].proc.Kill()
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0xbb 1M 2M", "-c", "flush", nodes[0].uri("vm"))
	nodes[1].start(t)
	st := nodes[0].waitUpToDate(t, "vm", 60*time.Second)
	if !bytes.Equal(replicaData(t, nodes[0], st.Volume.ID), replicaData(t, nodes[1], st.Volume.ID)) {
		t.Fatal("the returning replica differs after its resync")
	}

	// The primary dies: n2 takes over with the witness.
	killed := time.Now()
	nodes[0].proc.Kill()
	st = waitPrimaryNot(t, nodes[1], "vm", "n1", 60*time.Second)
	t.Logf("n2 primary %.1f s after the kill of n1", time.Since(killed).Seconds())
	testbin.Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0xaa 0 1M", "-c", "read -P 0xbb 1M 2M",
		"-c", "write -P 0xcc 4M 1M", nodes[1].uri("vm"))
}
