package nbdbench

import (
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

// testdata/fio-randwrite-qd32.json is real output of fio 3.33's nbd engine
// (4k randwrite QD32 against paddock serve), "connected" line included.
func TestParseFioRealOutput(t *testing.T) {
	out, err := os.ReadFile("testdata/fio-randwrite-qd32.json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "fio: connected to NBD server\n") {
		t.Fatal("test data lost its leading fio line")
	}
	r, err := ParseFio(out)
	if err != nil {
		t.Fatal(err)
	}
	want := Result{IOPS: 63711.096301, BytesPerSecond: 260960650, MeanLatencyNs: 492111.840840, P99LatencyNs: 1318912, MeasuredSeconds: 3.001}
	if r != want {
		t.Fatalf("got %+v\nwant %+v", r, want)
	}
}

func TestParseFioReadDirection(t *testing.T) {
	out := `{"fio version": "fio-3.33", "jobs": [{"jobname": "r", "error": 0,
		"read": {"iops": 1000.5, "bw_bytes": 262275072, "runtime": 10000, "total_ios": 10005,
			"clat_ns": {"mean": 15000.5, "N": 10005, "percentile": {"99.000000": 30000}}},
		"write": {"iops": 0, "bw_bytes": 0, "runtime": 0, "total_ios": 0}}]}`
	r, err := ParseFio([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if r.IOPS != 1000.5 || r.BytesPerSecond != 262275072 || r.P99LatencyNs != 30000 || r.MeasuredSeconds != 10 {
		t.Fatalf("%+v", r)
	}
}

func TestParseFioRejects(t *testing.T) {
	for name, out := range map[string]string{
		"no JSON":      "fio: engine nbd not loadable\n",
		"truncated":    "{\"jobs\": [",
		"failed job":   `{"jobs": [{"jobname": "x", "error": 5, "read": {"total_ios": 10}}]}`,
		"no jobs":      `{"jobs": []}`,
		"two jobs":     `{"jobs": [{"read": {"total_ios": 1}}, {"read": {"total_ios": 1}}]}`,
		"no I/O":       `{"jobs": [{"jobname": "x", "error": 0}]}`,
		"brace inline": "fio: odd {message}\n",
	} {
		if r, err := ParseFio([]byte(out)); err == nil {
			t.Errorf("%s: accepted as %+v", name, r)
		}
	}
}

func TestFioArgs(t *testing.T) {
	w := Workloads[2] // rand-read-4k-qd32
	got := strings.Join(fioArgs(w, "nbd://127.0.0.1:1234/bench", 10*time.Second, time.Second, 1<<30), " ")
	for _, want := range []string{"--ioengine=nbd", "--uri=nbd://127.0.0.1:1234/bench", "--rw=randread", "--bs=4096",
		"--iodepth=32", "--size=1073741824", "--time_based", "--runtime=10000ms", "--ramp_time=1000ms", "--output-format=json"} {
		if !strings.Contains(got, want) {
			t.Errorf("fio args lack %s: %s", want, got)
		}
	}
}

func TestCPUMicrosPerIO(t *testing.T) {
	r := Result{IOPS: 10000, MeasuredSeconds: 10, ServerCPUSeconds: 2}
	if got := r.CPUMicrosPerIO(); math.Abs(got-20) > 1e-9 {
		t.Fatalf("got %v µs, want 20", got)
	}
	if (Result{IOPS: 10}).CPUMicrosPerIO() != 0 {
		t.Fatal("unknown CPU time should give 0")
	}
}

func TestProcParsers(t *testing.T) {
	status := "Name:\tnbdkit\nVmPeak:\t  300000 kB\nVmHWM:\t    4812 kB\nVmRSS:\t    4000 kB\n"
	if got := parseVmHWM(status); got != 4812<<10 {
		t.Fatalf("VmHWM %d", got)
	}
	if parseVmHWM("Name: x\n") != 0 {
		t.Fatal("missing VmHWM should give 0")
	}
	// The command name may contain spaces and parentheses.
	stat := "1234 (odd) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 100"
	if got := parseStatCPU(stat); got != 3 {
		t.Fatalf("CPU seconds %v, want 3", got)
	}
	if parseStatCPU("garbage") != -1 {
		t.Fatal("garbage accepted")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1G": 1 << 30, "512M": 512 << 20, "1GiB": 1 << 30, "4096": 4096, " 2g ": 2 << 30} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1G", "1X", "G", "99999999999T"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestSelect(t *testing.T) {
	ws, err := selectWorkloads("rand-write-4k-qd1-1ms, seq-read-256k-qd16")
	if err != nil || len(ws) != 2 || ws[0].Name != "seq-read-256k-qd16" {
		t.Fatalf("%v %v", ws, err)
	}
	if _, err := selectWorkloads("seq-read"); err == nil || !strings.Contains(err.Error(), "known:") {
		t.Fatalf("unknown workload: %v", err)
	}
	if ws, err := selectWorkloads(""); err != nil || len(ws) != len(Workloads) {
		t.Fatalf("all: %d %v", len(ws), err)
	}
}

func TestServerArgs(t *testing.T) {
	for _, s := range Servers("/bin/paddock", "/bin/gonbdserver") {
		argv, ok := s.Args("/dev/shm/f", 4000, 1<<30, 0)
		if !ok || len(argv) == 0 {
			t.Fatalf("%s cannot run without delay", s.Name)
		}
		if !strings.Contains(strings.Join(argv, " "), "4000") {
			t.Errorf("%s does not get its port: %v", s.Name, argv)
		}
		argv, ok = s.Args("/dev/shm/f", 4000, 1<<30, time.Millisecond)
		delayable := s.Name == "paddock" || s.Name == "nbdkit-file" || s.Name == "go-nbd"
		if ok != delayable {
			t.Errorf("%s: delay accepted = %v", s.Name, ok)
		}
		if ok && !strings.Contains(strings.Join(argv, " "), "1ms") {
			t.Errorf("%s: no 1ms in %v", s.Name, argv)
		}
	}
}

func TestWriteDiskFileIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	seed := seedChunk()
	path := dir + "/d"
	const size = chunkBytes + 8192 // a partial last chunk
	if err := writeDiskFile(path, size, seed); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(path)
	os.WriteFile(path, []byte("changed"), 0o600)
	if err := writeDiskFile(path, size, seedChunk()); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if len(a) != size || string(a) != string(b) {
		t.Fatalf("contents differ between writes (%d, %d bytes)", len(a), len(b))
	}
	if string(a[:8]) == string(a[4096:4096+8]) {
		t.Fatal("blocks are not stamped with their offset")
	}
	if err := writeDiskFile(path, 1000, seed); err == nil {
		t.Fatal("size not a multiple of 4096 accepted")
	}
}
