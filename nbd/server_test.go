package nbd

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestReadWriteRoundTrip(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			ts := startMemServer(t, 8<<20, false, Limits{})
			c := dial(t, ts.addr, ClientOptions{Export: "mem", Structured: structured})
			if c.Size != 8<<20 {
				t.Fatalf("size %d", c.Size)
			}
			if c.Structured != structured || c.BaseAlloc != structured {
				t.Fatalf("structured %v base:allocation %v", c.Structured, c.BaseAlloc)
			}
			want := bytes.Repeat([]byte{0xab}, 1<<20)
			if err := c.WriteAt(want, 4096, CmdFlagFUA); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(want))
			if err := c.ReadAt(got, 4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("read back differs")
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := c.Zero(4096, 4096, 0); err != nil {
				t.Fatal(err)
			}
			if err := c.Trim(8192, 4096, 0); err != nil {
				t.Fatal(err)
			}
			if err := c.ReadAt(got[:8192], 4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[:8192], make([]byte, 8192)) {
				t.Fatal("zeroed range not zero")
			}
			// Zero-length read and write are no-ops that succeed.
			if err := c.ReadAt(nil, 0); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestDefaultExportAndFlags(t *testing.T) {
	ts := startMemServer(t, 1<<20, true, Limits{})
	c := dial(t, ts.addr, ClientOptions{Export: ""})
	if c.Flags&tflagReadOnly == 0 {
		t.Fatal("read-only export not flagged read-only")
	}
	if c.Flags&(tflagSendTrim|tflagSendWriteZeroes) != 0 {
		t.Fatalf("read-only export advertises writes: %#x", c.Flags)
	}
	var e *Error
	if err := c.WriteAt([]byte{1}, 0, 0); !errors.As(err, &e) || e.Errno != EPERM {
		t.Fatalf("write to read-only export: %v", err)
	}
}

// TestPipelining issues many requests at once from many goroutines and
// checks every reply lands with its request.
func TestPipelining(t *testing.T) {
	ts := startMemServer(t, 16<<20, false, Limits{})
	c := dial(t, ts.addr, ClientOptions{Export: "mem", Structured: true})
	const workers, perWorker, blockBytes = 32, 50, 4096
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			buf := make([]byte, blockBytes)
			got := make([]byte, blockBytes)
			for i := 0; i < perWorker; i++ {
				// Each worker owns its own blocks: block = w + workers*k.
				off := int64(w+workers*rng.Intn(100)) * blockBytes
				rng.Read(buf)
				if err := c.WriteAt(buf, off, 0); err != nil {
					errs <- err
					return
				}
				if err := c.ReadAt(got, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, got) {
					errs <- fmt.Errorf("worker %d: block %d differs", w, off/blockBytes)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestBlockStatusFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	be, err := OpenFile(path, 16<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	ts := startServer(t, Config{Exports: SingleExport(&Export{Name: "d", Backend: be})})
	c := dial(t, ts.addr, ClientOptions{Export: "d", Structured: true})
	if err := c.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 4<<20, 0); err != nil {
		t.Fatal(err)
	}
	ext, err := c.BlockStatus(0, 16<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{4 << 20, true, true}, {1 << 20, false, false}, {11 << 20, true, true}}
	if fmt.Sprint(ext) != fmt.Sprint(want) {
		t.Fatalf("extents %v, want %v", ext, want)
	}
	one, err := c.BlockStatus(0, 16<<20, CmdFlagReqOne)
	if err != nil || len(one) != 1 || one[0].Length != 4<<20 {
		t.Fatalf("REQ_ONE: %v %v", one, err)
	}
	// TRIM punches a hole; WRITE_ZEROES without NO_HOLE too.
	if err := c.Trim(4<<20, 512<<10, 0); err != nil {
		t.Fatal(err)
	}
	ext, _ = c.BlockStatus(4<<20, 1<<20, 0)
	if len(ext) != 2 || !ext[0].Hole || ext[1].Hole {
		t.Fatalf("after trim: %v", ext)
	}
	if err := c.Zero(4<<20+512<<10, 512<<10, CmdFlagNoHole); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if err := c.ReadAt(got, 4<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 1<<20)) {
		t.Fatal("trimmed and zeroed range does not read as zeroes")
	}
}

func TestFileBackendRefusesResize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(path, 8192, false); err == nil {
		t.Fatal("opened with a different size")
	}
	if _, err := OpenFile(filepath.Join(t.TempDir(), "missing"), 0, false); err == nil {
		t.Fatal("created a file without a size")
	}
	b, err := OpenFile(path, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !b.Features().ReadOnly || b.WriteAt([]byte{1}, 0, false) == nil {
		t.Fatal("read-only file backend accepted a write")
	}
}

func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	mem := NewMemoryBackend(1<<20, false)
	for _, mode := range []TLSMode{TLSAllow, TLSRequire} {
		ts := startServer(t, Config{
			Exports: SingleExport(&Export{Name: "mem", Backend: mem}),
			TLS:     &tls.Config{Certificates: []tls.Certificate{cert}},
			TLSMode: mode,
		})
		c := dial(t, ts.addr, ClientOptions{Export: "mem", Structured: true, TLS: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}})
		if err := c.WriteAt([]byte("over tls"), 0, CmdFlagFUA); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 8)
		if err := c.ReadAt(got, 0); err != nil || string(got) != "over tls" {
			t.Fatalf("read over TLS: %q %v", got, err)
		}
		_, err := Dial("tcp", ts.addr, ClientOptions{Export: "mem"})
		if mode == TLSRequire && err == nil {
			t.Fatal("plain client served by a TLS-only server")
		}
		if mode == TLSAllow && err != nil {
			t.Fatalf("plain client refused by TLSAllow: %v", err)
		}
	}
	// Without TLS configured, STARTTLS is refused but the session goes on.
	ts := startMemServer(t, 1<<20, false, Limits{})
	if _, err := Dial("tcp", ts.addr, ClientOptions{Export: "mem", TLS: &tls.Config{RootCAs: pool}}); err == nil {
		t.Fatal("STARTTLS accepted without a certificate")
	}
}

// TestInFlightBound checks that a connection never holds more payload than
// its budget, however many requests the client pipelines.
func TestInFlightBound(t *testing.T) {
	limits := Limits{MaxPayloadBytes: 1 << 20, MaxInFlightBytesPerConn: 2 << 20, MaxInFlightPerConn: 4}
	mem := NewMemoryBackend(64<<20, false)
	slow := &gateBackend{Backend: mem, gate: make(chan struct{})}
	ts := startServer(t, Config{Exports: SingleExport(&Export{Name: "m", Backend: slow}), Limits: limits})
	c := dial(t, ts.addr, ClientOptions{Export: "m"})
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c.WriteAt(make([]byte, 1<<20), int64(i)<<20, 0)
		}(i)
	}
	// Let requests pile up, then check the server holds at most two.
	for i := 0; i < 50; i++ {
		if slow.waiting() >= 2 {
			break
		}
		sleepMs(10)
	}
	sleepMs(50)
	if n := slow.waiting(); n != 2 {
		t.Fatalf("%d writes of 1 MiB in flight with a 2 MiB budget, want exactly 2", n)
	}
	if used := ts.srv.serverBuf.inUse(); used > 2<<20 {
		t.Fatalf("server budget holds %d bytes", used)
	}
	close(slow.gate)
	wg.Wait()
}

// TestSparseRead reads across holes and data with structured replies: the
// holes travel as hole chunks, and the bytes are right either way.
func TestSparseRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	be, err := OpenFile(path, 8<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	ts := startServer(t, Config{Exports: SingleExport(&Export{Name: "d", Backend: be})})
	want := make([]byte, 4<<20)
	for i := 1 << 20; i < 2<<20; i++ {
		want[i] = byte(i)
	}
	if err := be.WriteAt(want[1<<20:2<<20], 1<<20, false); err != nil {
		t.Fatal(err)
	}
	for _, structured := range []bool{false, true} {
		c := dial(t, ts.addr, ClientOptions{Export: "d", Structured: structured})
		got := bytes.Repeat([]byte{0xff}, len(want))
		if err := c.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("structured=%v: sparse read differs", structured)
		}
		// DF asks for one chunk: still right.
		if structured {
			got := bytes.Repeat([]byte{0xff}, len(want))
			if err := c.Raw(Request{Type: CmdRead, Flags: CmdFlagDF, Length: uint32(len(got))}, nil, got); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("DF read: %v", err)
			}
		}
	}
	if hb := ts.srv.Stats.HoleBytes.Load(); hb != 1<<20 {
		t.Fatalf("hole bytes %d, want %d (the leading hole of the one structured non-DF read)", hb, 1<<20)
	}
}

// TestSlowBackendOverlaps: with a backend that takes milliseconds, requests
// of one connection are served in parallel (what makes IOPS grow with the
// queue depth), also after many of them have been measured.
func TestSlowBackendOverlaps(t *testing.T) {
	cb := &concurrencyBackend{Backend: NewMemoryBackend(1<<20, false), delay: 2 * time.Millisecond}
	ts := startServer(t, Config{Exports: SingleExport(&Export{Name: "m", Backend: cb})})
	c := dial(t, ts.addr, ClientOptions{Export: "m"})
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := 0; i < 20; i++ {
				if err := c.ReadAt(buf, 0); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if m := cb.maxSeen.Load(); m < 8 {
		t.Fatalf("at most %d of 16 concurrent reads overlapped on a slow backend", m)
	}
}

// TestMultiConn: what one connection wrote and flushed is what another
// reads (CAN_MULTI_CONN is advertised for the file backend).
func TestMultiConn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	be, err := OpenFile(path, 1<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	ts := startServer(t, Config{Exports: SingleExport(&Export{Name: "d", Backend: be})})
	a := dial(t, ts.addr, ClientOptions{Export: "d"})
	b := dial(t, ts.addr, ClientOptions{Export: "d", Structured: true})
	if a.Flags&tflagCanMultiConn == 0 {
		t.Fatal("file export does not advertise CAN_MULTI_CONN")
	}
	for i := 0; i < 20; i++ {
		want := bytes.Repeat([]byte{byte(i)}, 4096)
		if err := a.WriteAt(want, int64(i)*4096, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Flush(); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4096)
		if err := b.ReadAt(got, int64(i)*4096); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("block %d written on one connection not read on the other: %v", i, err)
		}
	}
}
