package nbdbench

import (
	"encoding/json"
	"strings"
	"testing"
)

// sampleReport has made-up figures chosen so every derived number is easy
// to check by hand.
func sampleReport() *Report {
	ws, _ := selectWorkloads("seq-read-256k-qd16,rand-read-4k-qd32,rand-write-4k-qd32-1ms,rand-write-4k-qd1-1ms")
	return &Report{
		Machine:        Machine{Cores: 2, Kernel: "6.1.0", Fio: "fio-3.33", Go: "go1.26"},
		Command:        "paddock bench nbd --reps=3",
		RuntimeSeconds: 10, RampSeconds: 1, Reps: 3, SizeBytes: 1 << 30,
		Servers:   []string{"paddock", "qemu-nbd", "go-nbd"},
		Workloads: ws,
		Missing:   map[string]string{"nbdkit-file": "nbdkit: not found"},
		Notes:     map[string]string{"qemu-nbd": "writeback cache"},
		Runs: map[string]map[string][]Result{
			"seq-read-256k-qd16": {
				// 2000, 1000 and 3000 MB/s: the median is 2000.
				"paddock":  {{BytesPerSecond: 2e9}, {BytesPerSecond: 1e9}, {BytesPerSecond: 3e9}},
				"qemu-nbd": {{BytesPerSecond: 1e9}, {BytesPerSecond: 1e9}, {BytesPerSecond: 1e9}},
				"go-nbd":   {{BytesPerSecond: 1.6e9}, {Err: "fio: boom"}, {BytesPerSecond: 1.6e9}},
			},
			"rand-read-4k-qd32": {
				"paddock":  {{IOPS: 100, PeakRSSBytes: 20 << 20, ServerCPUSeconds: 1, MeasuredSeconds: 10}, {IOPS: 300}, {IOPS: 200}},
				"qemu-nbd": {{IOPS: 400, PeakRSSBytes: 8 << 20}, {IOPS: 400}, {IOPS: 400}},
				"go-nbd":   {{IOPS: 100, PeakRSSBytes: 6 << 20}},
			},
			"rand-write-4k-qd32-1ms": {
				"paddock": {{IOPS: 24000, PeakRSSBytes: 30 << 20}},
				"go-nbd":  {{IOPS: 800, PeakRSSBytes: 5 << 20}},
			},
			"rand-write-4k-qd1-1ms": {
				"paddock": {{IOPS: 800, PeakRSSBytes: 90 << 20}}, // QD1: not in the QD32 peak
			},
		},
	}
}

func TestReportFigures(t *testing.T) {
	r := sampleReport()
	ws := r.Workloads
	if m, _ := r.Median(ws[0], "paddock"); m != 2000 {
		t.Errorf("median %v, want 2000", m)
	}
	if m, _ := r.Median(ws[0], "go-nbd"); m != 1600 {
		t.Errorf("median over the successful runs %v, want 1600", m)
	}
	if ratio, peer, _ := r.RatioToBestPeer(ws[0]); peer != "go-nbd" || ratio != 1.25 {
		t.Errorf("ratio %v to %s, want 1.25 to go-nbd", ratio, peer)
	}
	if ratio, peer, _ := r.RatioToBestPeer(ws[1]); peer != "qemu-nbd" || ratio != 0.5 {
		t.Errorf("ratio %v to %s, want 0.5 to qemu-nbd", ratio, peer)
	}
	if g, ok := r.queueDepthGrowth(); !ok || g != 30 {
		t.Errorf("growth %v", g)
	}
	if g, ok := r.ratioToGoNBD1ms(); !ok || g != 30 {
		t.Errorf("ratio to go-nbd %v", g)
	}
	peak := r.peakRSSQD32()
	if peak["paddock"] != 30<<20 || peak["qemu-nbd"] != 8<<20 || peak["go-nbd"] != 6<<20 {
		t.Errorf("peak RSS %v", peak)
	}
}

func TestReportMarkdown(t *testing.T) {
	md := sampleReport().Markdown()
	for _, want := range []string{
		"Command: `paddock bench nbd --reps=3`",
		"**Missing**: nbdkit-file: nbdkit: not found",
		"| workload | unit | paddock | qemu-nbd | go-nbd | paddock / best peer |",
		"| seq-read-256k-qd16 | MB/s | 2000 | 1000 | 1600 (1/3 failed) | 1.25x (go-nbd) |",
		"| rand-read-4k-qd32 | IOPS | 200 | 400 | 100 | 0.50x (qemu-nbd) |",
		"| rand-write-4k-qd32-1ms | IOPS | 24000 | n/a | 800 | 30.00x (go-nbd) |",
		"paddock does 800 IOPS at QD1 and 24000 IOPS at QD32: **30.0x**",
		"paddock / go-nbd = **30.0x**",
		"- seq-read-256k-qd16: paddock / best peer (go-nbd) = 1.250x, goal >= 1.2x: **met**",
		"- rand-read-4k-qd32: paddock / best peer (qemu-nbd) = 0.500x, goal >= 1.2x: **NOT met**",
		"- 1 ms backend, paddock / go-nbd = 30.00x, goal >= 20x: **met**",
		"| **max** | **30.0 MiB** | **8.0 MiB** | **6.0 MiB** |",
		"| rand-read-4k-qd32 | 1000.0 µs | n/a | n/a |", // 1 s / (100 IOPS * 10 s)
		"| seq-read-256k-qd16 | paddock | 2000, 1000, 3000 | 2000 | 100% |",
		"| seq-read-256k-qd16 | go-nbd | 1600, failed, 1600 | 1600 | 0% |",
		"- seq-read-256k-qd16 on go-nbd, repetition 2: fio: boom",
		"- qemu-nbd: writeback cache",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	// The QD1 row is shown but has no goal of its own.
	if strings.Contains(md, "- rand-write-4k-qd1-1ms: paddock / best peer") {
		t.Error("the QD1 row got a goal line")
	}
	if t.Failed() {
		t.Log(md)
	}
}

func TestReportJSON(t *testing.T) {
	b, err := sampleReport().JSON()
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Runs    map[string]map[string][]Result `json:"runs"`
		Summary struct {
			Medians          map[string]map[string]float64 `json:"medians"`
			RatioToBestPeer  map[string]float64            `json:"ratio_to_best_peer"`
			QueueDepthGrowth float64                       `json:"queue_depth_growth"`
			PeakRSSBytesQD32 map[string]int64              `json:"peak_rss_bytes_qd32"`
		} `json:"summary"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	s := got.Summary
	if s.Medians["rand-read-4k-qd32"]["qemu-nbd"] != 400 || s.RatioToBestPeer["seq-read-256k-qd16"] != 1.25 ||
		s.QueueDepthGrowth != 30 || s.PeakRSSBytesQD32["paddock"] != 30<<20 || len(got.Runs["seq-read-256k-qd16"]["go-nbd"]) != 3 {
		t.Fatalf("JSON summary wrong: %s", b)
	}
}

func TestReportWithoutPaddock(t *testing.T) {
	r := sampleReport()
	r.Servers = []string{"qemu-nbd", "go-nbd"}
	md := r.Markdown()
	if !strings.Contains(md, "| rand-read-4k-qd32 | IOPS | 400 | 100 | n/a |") || strings.Contains(md, "**met**") {
		t.Fatalf("without paddock there is no ratio and no goal verdict:\n%s", md)
	}
}
