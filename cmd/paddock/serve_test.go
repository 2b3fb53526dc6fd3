package main

// Interop tests: a real `paddock serve` process driven by the real NBD
// clients (libnbd's nbdinfo and nbdcopy, qemu-img, qemu-io, fio's nbd
// engine). Under CI every client must be installed; elsewhere a missing one
// skips its test with a message.

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
)

const clientTimeout = 2 * time.Minute

// serve starts `paddock serve` on a free port and returns the URI.
func serve(t *testing.T, file string, args ...string) (string, *testbin.Proc) {
	t.Helper()
	bin := testbin.Paddock(t)
	argv := append([]string{"serve", "--file", file, "--listen", "127.0.0.1:0", "--name", "disk0"}, args...)
	p := testbin.Start(t, bin, argv...)
	m := p.WaitFor(t, `at (nbds?://\S+)`, 10*time.Second)
	return m[1], p
}

func tempImage(t *testing.T) string {
	// Not tmpfs: the durability test wants a real filesystem, and the
	// others do not care.
	return filepath.Join(t.TempDir(), "disk0.img")
}

func TestNbdinfoJSON(t *testing.T) {
	testbin.Require(t, "nbdinfo")
	uri, _ := serve(t, tempImage(t), "--size", "64M")
	out := testbin.Run(t, clientTimeout, "nbdinfo", "--json", uri)
	var info struct {
		Protocol   string `json:"protocol"`
		Structured bool   `json:"structured"`
		Exports    []map[string]any
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" || !info.Structured || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %s", out)
	}
	e := info.Exports[0]
	for _, k := range []string{"can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_cache", "can_df"} {
		if e[k] != true {
			t.Errorf("%s is %v, want true", k, e[k])
		}
	}
	if e["is_read_only"] != false || e["export-size"] != float64(64<<20) || e["block_size_maximum"] != float64(32<<20) {
		t.Errorf("export: %v", e)
	}
	if ctx, _ := e["contexts"].([]any); len(ctx) != 1 || ctx[0] != "base:allocation" {
		t.Errorf("contexts %v", e["contexts"])
	}
	// LIST shows the export too.
	if out := testbin.Run(t, clientTimeout, "nbdinfo", "--list", uri); !strings.Contains(out, `export="disk0"`) {
		t.Errorf("nbdinfo --list: %s", out)
	}
}

func TestReadOnlyServe(t *testing.T) {
	testbin.Require(t, "nbdinfo", "qemu-io")
	img := tempImage(t)
	os.WriteFile(img, bytes.Repeat([]byte{7}, 1<<20), 0o600)
	uri, _ := serve(t, img, "--read-only")
	out := testbin.Run(t, clientTimeout, "nbdinfo", "--json", uri)
	if !strings.Contains(out, `"is_read_only": true`) || strings.Contains(out, `"can_trim": true`) {
		t.Fatalf("read-only export: %s", out)
	}
	out, _ = testbin.RunErr(clientTimeout, "qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", uri)
	if !strings.Contains(strings.ToLower(out), "permission") && !strings.Contains(strings.ToLower(out), "read-only") && !strings.Contains(strings.ToLower(out), "read only") {
		t.Fatalf("write to a read-only export: %s", out)
	}
	data, _ := os.ReadFile(img)
	if !bytes.Equal(data, bytes.Repeat([]byte{7}, 1<<20)) {
		t.Fatal("read-only export changed")
	}
}

func TestQemuIO(t *testing.T) {
	testbin.Require(t, "qemu-io")
	uri, _ := serve(t, tempImage(t), "--size", "64M")
	out := testbin.Run(t, clientTimeout, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 1M",
		"-c", "read -P 0xab 0 1M",
		"-c", "write -f -P 0xcd 1M 64k", // FUA
		"-c", "read -P 0xcd 1M 64k",
		"-c", "write -z 2M 1M",
		"-c", "read -P 0 2M 1M",
		"-c", "write -P 0xee 3M 1M",
		"-c", "discard 3M 1M",
		"-c", "read -P 0 3M 1M",
		"-c", "flush",
		uri)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	if n := strings.Count(out, "read "); n != 4 {
		t.Fatalf("qemu-io ran %d reads:\n%s", n, out)
	}
}

func TestNbdinfoMap(t *testing.T) {
	testbin.Require(t, "nbdinfo", "qemu-io")
	uri, _ := serve(t, tempImage(t), "--size", "16M")
	testbin.Run(t, clientTimeout, "qemu-io", "-f", "raw", "-c", "write -P 1 4M 1M", uri)
	out := testbin.Run(t, clientTimeout, "nbdinfo", "--map", uri)
	fields := strings.Fields(out)
	want := []string{"0", "4194304", "3", "hole,zero", "4194304", "1048576", "0", "data", "5242880", "11534336", "3", "hole,zero"}
	if strings.Join(fields, " ") != strings.Join(want, " ") {
		t.Fatalf("nbdinfo --map:\n%s", out)
	}
}

func TestNbdcopyRoundTrip(t *testing.T) {
	testbin.Require(t, "nbdcopy", "cmp")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	back := filepath.Join(dir, "back.raw")
	data := make([]byte, 32<<20)
	rand.Read(data[:16<<20]) // half random, half zero (sparse on the way back)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	uri, _ := serve(t, tempImage(t), "--size", "32M")
	testbin.Run(t, clientTimeout, "nbdcopy", "--flush", src, uri)
	testbin.Run(t, clientTimeout, "nbdcopy", uri, back)
	testbin.Run(t, clientTimeout, "cmp", src, back)
}

func TestQemuImg(t *testing.T) {
	testbin.Require(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	data := make([]byte, 16<<20)
	rand.Read(data[4<<20 : 8<<20])
	os.WriteFile(src, data, 0o600)
	uri, _ := serve(t, tempImage(t), "--size", "16M")
	out := testbin.Run(t, clientTimeout, "qemu-img", "info", "-f", "raw", uri)
	if !strings.Contains(out, "virtual size: 16 MiB") {
		t.Fatalf("qemu-img info:\n%s", out)
	}
	testbin.Run(t, clientTimeout, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	out = testbin.Run(t, clientTimeout, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare:\n%s", out)
	}
	dst := filepath.Join(dir, "dst.qcow2")
	testbin.Run(t, clientTimeout, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", uri, dst)
	out = testbin.Run(t, clientTimeout, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", src, dst)
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare after convert back:\n%s", out)
	}
}

func TestFioVerify(t *testing.T) {
	testbin.Require(t, "fio")
	uri, _ := serve(t, tempImage(t), "--size", "64M")
	out := testbin.Run(t, 5*time.Minute, "fio", "--name=verify", "--ioengine=nbd", "--uri="+uri,
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=32M", "--verify=crc32c",
		"--do_verify=1", "--fsync=16", "--verify_state_save=0", "--output-format=json")
	j := parseFio(t, out).Jobs[0]
	if j.Error != 0 || j.Write.IOBytes != 32<<20 || j.Read.IOBytes != 32<<20 {
		t.Fatalf("fio: error %d, wrote %d, verified %d", j.Error, j.Write.IOBytes, j.Read.IOBytes)
	}
}

func TestTLS(t *testing.T) {
	testbin.Require(t, "nbdinfo", "qemu-io", "openssl")
	dir := t.TempDir()
	// libnbd and QEMU both read a directory holding ca-cert.pem; a
	// self-signed certificate is its own CA.
	cert, key := filepath.Join(dir, "ca-cert.pem"), filepath.Join(dir, "key.pem")
	testbin.Run(t, clientTimeout, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
		"-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
	uri, p := serve(t, tempImage(t), "--size", "1M", "--tls-cert", cert, "--tls-key", key, "--tls-require")
	if !strings.HasPrefix(uri, "nbds://127.0.0.1:") {
		t.Fatalf("TLS-only export advertised as %s", uri)
	}
	hostPort := strings.TrimSuffix(strings.TrimPrefix(uri, "nbds://"), "/disk0")
	port := hostPort[strings.LastIndex(hostPort, ":")+1:]
	out := testbin.Run(t, clientTimeout, "nbdinfo", "nbds://localhost:"+port+"/disk0?tls-certificates="+dir)
	if !strings.Contains(out, "with TLS") {
		t.Fatalf("nbdinfo over TLS:\n%s", out)
	}
	out = testbin.Run(t, clientTimeout, "qemu-io", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+dir,
		"--image-opts", "driver=nbd,host=localhost,port="+port+",export=disk0,tls-creds=tls0",
		"-c", "write -P 0x42 0 64k", "-c", "read -P 0x42 0 64k")
	if strings.Contains(out, "failed") || strings.Count(out, "64 KiB") != 2 {
		t.Fatalf("qemu-io over TLS:\n%s", out)
	}
	if out, err := testbin.RunErr(clientTimeout, "nbdinfo", "nbd://"+hostPort+"/disk0"); err == nil {
		t.Fatalf("plain client was served by a TLS-only server:\n%s", out)
	}
	if p.Exited() {
		t.Fatal("server died")
	}
}

// TestDurabilityAfterKill writes with FUA and with a FLUSH, kills the
// server with SIGKILL, and reads the file directly. (SIGKILL loses no page
// cache, so this proves the data reached the file; what fdatasync adds
// against power loss needs a power cut, which no test here can make.)
func TestDurabilityAfterKill(t *testing.T) {
	testbin.Require(t, "qemu-io")
	img := tempImage(t)
	uri, p := serve(t, img, "--size", "8M")
	testbin.Run(t, clientTimeout, "qemu-io", "-f", "raw", "-c", "write -f -P 0x11 0 1M", uri)
	testbin.Run(t, clientTimeout, "qemu-io", "-f", "raw", "-c", "write -P 0x22 1M 1M", "-c", "flush", uri)
	p.Kill()
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data[:1<<20], bytes.Repeat([]byte{0x11}, 1<<20)) || !bytes.Equal(data[1<<20:2<<20], bytes.Repeat([]byte{0x22}, 1<<20)) {
		t.Fatal("acknowledged data missing after kill -9")
	}
	// And a new server on the same file serves it.
	uri, _ = serve(t, img)
	out := testbin.Run(t, clientTimeout, "qemu-io", "-f", "raw", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 1M", uri)
	if strings.Contains(out, "failed") {
		t.Fatalf("after restart:\n%s", out)
	}
}

func TestServeBadArguments(t *testing.T) {
	bin := testbin.Paddock(t)
	dir := t.TempDir()
	cases := [][]string{
		{"serve"},
		{"serve", "--file", filepath.Join(dir, "missing.img")},
		{"serve", "--file", filepath.Join(dir, "x.img"), "--size", "12Q"},
		{"serve", "--file", dir},
		{"serve", "--file", filepath.Join(dir, "y.img"), "--size", "1M", "--tls-require"},
	}
	for _, args := range cases {
		out, err := testbin.RunErr(10*time.Second, bin, args...)
		if err == nil || !strings.Contains(out, "paddock:") && !strings.Contains(out, "Error") && !strings.Contains(out, "required") {
			t.Errorf("%v: want a clear error, got %v:\n%s", args, err, out)
		}
	}
}
