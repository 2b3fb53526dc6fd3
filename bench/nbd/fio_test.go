package main

import (
	"strings"
	"testing"
)

const fioSample = `fio: some warning
{
  "fio version" : "fio-3.33",
  "jobs" : [ { "jobname" : "x", "error" : 0,
      "read" : { "iops" : 1000.5, "bw_bytes" : 4098048 },
      "write" : { "iops" : 0.0, "bw_bytes" : 0 } } ]
}`

func TestParseFio(t *testing.T) {
	r, err := parseFio([]byte(fioSample))
	if err != nil || r.IOPS != 1000.5 || r.BytesPerSecond != 4098048 {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := parseFio([]byte(`{"jobs": [{"error": 5}]}`)); err == nil {
		t.Fatal("failed job accepted")
	}
	if _, err := parseFio([]byte("no json")); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestFormatReport(t *testing.T) {
	ws := []workload{{"rand-read-4k-qd32", "randread", "4k", 32, false}, {"seq-read-256k-qd16", "read", "256k", 16, false}}
	res := map[string]map[string][]result{
		"rand-read-4k-qd32": {
			"paddock":  {{IOPS: 100}, {IOPS: 300}, {IOPS: 200}},
			"qemu-nbd": {{IOPS: 100}, {IOPS: 100}, {IOPS: 100}},
		},
		"seq-read-256k-qd16": {
			"paddock":  {{BytesPerSecond: 2e9, PeakRSSBytes: 64 << 20}},
			"qemu-nbd": {{BytesPerSecond: 1e9}},
		},
	}
	out := formatReport(ws, []string{"paddock", "qemu-nbd"}, res, "m", "cmd")
	for _, want := range []string{"| rand-read-4k-qd32 | IOPS | 200 | 100 | 2.00x (qemu-nbd) |", "| seq-read-256k-qd16 | MB/s | 2000 | 1000 | 2.00x (qemu-nbd) |", "paddock 64 MiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
