package replbench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestUpdateSection(t *testing.T) {
	doc := "# Benchmarks\n\nintro\n\n## NBD server (issue 2)\n\nnbd table\n\n## Quorum\n\nquorum\n"
	// Missing: added at the end, nothing else touched.
	got, err := updateSection(doc, "table 1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, doc) || !strings.Contains(got, "\n## Replicated volumes (issue 4)\n\n"+beginMarker+"\n\ntable 1\n\n"+endMarker+"\n") {
		t.Fatalf("added section:\n%s", got)
	}
	// Notes beside the markers are kept; only the block changes.
	withNotes := strings.Replace(got, endMarker+"\n", endMarker+"\n\nNotes by hand.\n", 1) + "\n## Later\n\nlater\n"
	again, err := updateSection(withNotes, "table 2")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(again, "table 1") || !strings.Contains(again, "table 2") || !strings.Contains(again, "Notes by hand.") ||
		!strings.Contains(again, "## Later\n\nlater\n") || !strings.HasPrefix(again, doc) {
		t.Fatalf("updated section:\n%s", again)
	}
	// A section without markers gets the block after its heading.
	plain := "# B\n\n## Replicated volumes (issue 4)\n\nold text\n\n## Next\n"
	got, err = updateSection(plain, "t")
	if err != nil {
		t.Fatal(err)
	}
	if want := "# B\n\n## Replicated volumes (issue 4)\n\n" + beginMarker + "\n\nt\n\n" + endMarker + "\n\nold text\n\n## Next\n"; got != want {
		t.Fatalf("got:\n%q\nwant:\n%q", got, want)
	}
	if _, err := updateSection("## Replicated volumes\n"+beginMarker+"\n", "t"); err == nil {
		t.Fatal("a lone marker was accepted")
	}
}

func TestParseFioSync(t *testing.T) {
	out := `fio: connected to NBD server
{"fio version":"fio-3.33","jobs":[{"jobname":"s","error":0,
 "write":{"iops":1000.5,"bw_bytes":4098048,"total_ios":5000,"clat_ns":{"N":5000,"percentile":{"50.000000":31000,"99.000000":187000}}},
 "sync":{"total_ios":5000,"lat_ns":{"N":5000,"percentile":{"50.000000":38000,"99.000000":212000}}}}]}`
	r, err := ParseFio([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if r.IOPS != 1000.5 || r.WriteP50Ns != 31000 || r.WriteP99Ns != 187000 || r.FlushP50Ns != 38000 || r.FlushP99Ns != 212000 {
		t.Fatalf("%+v", r)
	}
	if _, err := ParseFio([]byte(`{"jobs":[{"jobname":"x","error":5}]}`)); err == nil {
		t.Fatal("a failed job parsed")
	}
}

func TestMarkdownMediansAndGoals(t *testing.T) {
	r := &Report{Command: "paddock bench replication", Reps: 3, SizeBytes: 1 << 20, ResyncBytes: 1 << 20, Targets: Targets,
		Workloads: []string{"seq-write-256k-qd16"}, Runs: map[string]map[string][]RunResult{"seq-write-256k-qd16": {
			"single": {{BytesPerSecond: 100e6}, {BytesPerSecond: 300e6}, {BytesPerSecond: 200e6}},
			"r1":     {{BytesPerSecond: 150e6}},
			"r2":     {{Err: "boom"}},
			"r3":     {{BytesPerSecond: 120e6}, {BytesPerSecond: 100e6}},
		}},
		Resync: []ResyncTrial{{MissedBytes: 100, ResentBytes: 120, SyncingSeconds: 1e-6}, {Err: "lost"}},
	}
	md := r.Markdown()
	for _, want := range []string{"| seq-write-256k-qd16 | MB/s | 200 | 150 | failed | 110 | 0.55x (goal ≥ 0.5x: met) |",
		"failed run: seq-write-256k-qd16 on 2 replicas, repetition 1: boom", "trial 2 failed: lost", "| resent / missed | 1.20 x"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestResyncTookFromLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.log")
	log := `time=2026-12-02T04:20:00.000Z level=INFO msg="replica caught up and rejoined the generation" node=n1 part=volumes volume_name=resync volume=4 replica=3 generation=1.3 resent_bytes=1 took=9s
time=2026-12-02T04:21:00.000Z level=INFO msg="replica caught up and rejoined the generation" node=n1 part=volumes volume_name=resync volume=4 replica=3 generation=1.5 resent_bytes=268435456 took=1.352s
time=2026-12-02T04:21:00.100Z level=INFO msg="replica caught up and rejoined the generation" node=n1 part=volumes volume_name=r3 volume=3 replica=3 generation=1.7 resent_bytes=0 took=3ms
`
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	d, ok := resyncTookFromLog(path, "resync", 0)
	if !ok || d != 1352*time.Millisecond {
		t.Fatalf("got %v %v, want 1.352s (the resync volume's last line, not r3's)", d, ok)
	}
	first := int64(strings.Index(log, "\n") + 1)
	if _, ok := resyncTookFromLog(path, "r2", first); ok {
		t.Fatal("found a line of a volume that has none")
	}
}
