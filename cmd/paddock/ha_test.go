package main

// Failover across real processes: the primary's node is killed with
// SIGKILL; the survivors fence it through fence_dummy (a real fence
// agent, its power in a file), move the primary role to an up-to-date
// replica, and fio through a surviving node finds every write it saw
// acknowledged.

import (
	"os"
	"path/filepath"
	"strings"
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
