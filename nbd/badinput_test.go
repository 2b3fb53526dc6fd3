package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"testing"
	"time"
)

// raw is a hand-driven connection for sending what a real client never
// would.
type raw struct {
	t *testing.T
	c net.Conn
}

func dialRaw(t *testing.T, addr string) *raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	r := &raw{t: t, c: c}
	var greet [18]byte
	r.read(greet[:])
	return r
}

func (r *raw) write(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

func (r *raw) read(b []byte) {
	r.t.Helper()
	if _, err := io.ReadFull(r.c, b); err != nil {
		r.t.Fatal(err)
	}
}

func (r *raw) clientFlags(f uint32) {
	r.write(binary.BigEndian.AppendUint32(nil, f))
}

func (r *raw) option(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	r.write(append(b, data...))
}

// optReply reads one option reply and returns its type.
func (r *raw) optReply() (uint32, []byte) {
	r.t.Helper()
	var h [20]byte
	r.read(h[:])
	if binary.BigEndian.Uint64(h[:]) != magicOptionReply {
		r.t.Fatal("bad option reply magic")
	}
	data := make([]byte, binary.BigEndian.Uint32(h[16:]))
	r.read(data)
	return binary.BigEndian.Uint32(h[12:]), data
}

// expectClosed asserts the server closed the connection.
func (r *raw) expectClosed() {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	for {
		_, err := r.c.Read(b[:])
		if err == nil {
			continue // drain what the server sent before closing
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			r.t.Fatal("server kept the connection open")
		}
		return
	}
}

// goExport negotiates the export in the simplest way (EXPORT_NAME) and
// returns the transmission flags.
func (r *raw) exportName(name string) uint16 {
	r.clientFlags(flagCFixedNewstyle | flagCNoZeroes)
	r.option(optExportName, []byte(name))
	var b [10]byte
	r.read(b[:])
	return binary.BigEndian.Uint16(b[8:])
}

func (r *raw) request(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	var h [requestHeaderBytes]byte
	Request{Type: typ, Flags: flags, Cookie: cookie, Offset: off, Length: length}.encode(&h)
	r.write(append(h[:], payload...))
}

// simpleReply reads one simple reply and returns its error and cookie.
func (r *raw) simpleReply() (uint32, uint64) {
	r.t.Helper()
	var h [16]byte
	r.read(h[:])
	if binary.BigEndian.Uint32(h[:]) != magicSimple {
		r.t.Fatalf("bad reply magic %#x", binary.BigEndian.Uint32(h[:]))
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

// assertServing checks, with a fresh well-behaved client, that the server
// still serves and that the data is what the test wrote.
func assertServing(t *testing.T, ts *testServer, want []byte) {
	t.Helper()
	c, err := Dial("tcp", ts.addr, ClientOptions{Export: "mem"})
	if err != nil {
		t.Fatalf("server stopped serving: %v", err)
	}
	defer c.Close()
	got := make([]byte, len(want))
	for off := 0; off < len(got); off += 64 << 10 {
		if err := c.ReadAt(got[off:min(off+64<<10, len(got))], int64(off)); err != nil {
			t.Fatalf("second client: %v", err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data changed")
	}
}

func TestBadRequests(t *testing.T) {
	const size = 1 << 20
	limits := Limits{MaxPayloadBytes: 64 << 10}
	ts := startMemServer(t, size, false, limits)
	pattern := bytes.Repeat([]byte{0x5a}, size)
	copy(ts.mem.Bytes(), pattern)

	r := dialRaw(t, ts.addr)
	r.exportName("mem")
	cases := []struct {
		name   string
		typ    uint16
		flags  uint16
		off    uint64
		length uint32
		body   int // payload bytes actually sent
		errno  uint32
	}{
		{"read past end", CmdRead, 0, size - 512, 1024, 0, EINVAL},
		{"read offset overflow", CmdRead, 0, math.MaxUint64 - 10, 512, 0, EINVAL},
		{"write past end", CmdWrite, 0, size - 512, 1024, 1024, ENOSPC},
		{"write offset overflow", CmdWrite, 0, math.MaxUint64 - 10, 512, 512, ENOSPC},
		{"trim past end", CmdTrim, 0, size, 4096, 0, ENOSPC},
		{"zero past end", CmdWriteZeroes, 0, size - 1, 2, 0, ENOSPC},
		{"read above max payload", CmdRead, 0, 0, 128 << 10, 0, EINVAL},
		{"write above max payload", CmdWrite, 0, 0, 128 << 10, 128 << 10, EINVAL},
		{"unknown command", 42, 0, 0, 512, 0, EINVAL},
		{"unknown flag", CmdRead, 1 << 9, 0, 512, 0, EINVAL},
		{"DF without structured replies", CmdRead, CmdFlagDF, 0, 512, 0, EINVAL},
		{"REQ_ONE on a read", CmdRead, CmdFlagReqOne, 0, 512, 0, EINVAL},
		{"NO_HOLE on a write", CmdWrite, CmdFlagNoHole, 0, 512, 512, EINVAL},
		{"block status not negotiated", CmdBlockStatus, 0, 0, 512, 0, EINVAL},
		{"cache past end", CmdCache, 0, size, 1, 0, EINVAL},
	}
	for i, tc := range cases {
		cookie := uint64(1000 + i)
		r.request(tc.typ, tc.flags, cookie, tc.off, tc.length, make([]byte, tc.body))
		errno, got := r.simpleReply()
		if got != cookie || errno != tc.errno {
			t.Errorf("%s: errno %d cookie %d, want errno %d cookie %d", tc.name, errno, got, tc.errno, cookie)
		}
		// The stream must still be in sync: a good read works.
		r.request(CmdRead, 0, 7, 0, 16, nil)
		if errno, got := r.simpleReply(); errno != 0 || got != 7 {
			t.Fatalf("after %s: stream out of sync (errno %d cookie %d)", tc.name, errno, got)
		}
		buf := make([]byte, 16)
		r.read(buf)
		if !bytes.Equal(buf, pattern[:16]) {
			t.Fatalf("after %s: read returned wrong data", tc.name)
		}
	}
	assertServing(t, ts, pattern)

	// A bad magic cannot be resynchronised: that connection closes, the
	// server goes on.
	r.write(bytes.Repeat([]byte{0xff}, requestHeaderBytes))
	r.expectClosed()
	assertServing(t, ts, pattern)

	// A write whose payload is too large even to skip closes the
	// connection without writing anything.
	r2 := dialRaw(t, ts.addr)
	r2.exportName("mem")
	r2.request(CmdWrite, 0, 1, 0, math.MaxUint32, nil)
	r2.expectClosed()
	assertServing(t, ts, pattern)
}

func TestReadOnlyRefusesWrites(t *testing.T) {
	ts := startMemServer(t, 1<<20, true, Limits{})
	r := dialRaw(t, ts.addr)
	r.exportName("mem")
	for i, typ := range []uint16{CmdWrite, CmdTrim, CmdWriteZeroes} {
		body := 0
		if typ == CmdWrite {
			body = 512
		}
		r.request(typ, 0, uint64(i), 0, 512, bytes.Repeat([]byte{1}, body))
		if errno, _ := r.simpleReply(); errno != EPERM {
			t.Fatalf("%s on read-only export: errno %d", cmdName(typ), errno)
		}
	}
	assertServing(t, ts, make([]byte, 1<<20))
}

func TestBadHandshakes(t *testing.T) {
	ts := startMemServer(t, 1<<20, false, Limits{})
	zero := make([]byte, 1<<20)

	t.Run("unknown client flags", func(t *testing.T) {
		r := dialRaw(t, ts.addr)
		r.clientFlags(1 << 7)
		r.expectClosed()
	})
	t.Run("bad option magic", func(t *testing.T) {
		r := dialRaw(t, ts.addr)
		r.clientFlags(flagCFixedNewstyle)
		r.write(bytes.Repeat([]byte{0x11}, 16))
		r.expectClosed()
	})
	t.Run("unknown option is answered, session goes on", func(t *testing.T) {
		r := dialRaw(t, ts.addr)
		r.clientFlags(flagCFixedNewstyle)
		r.option(4242, []byte("whatever"))
		if typ, _ := r.optReply(); typ != repErrUnsup {
			t.Fatalf("unknown option: reply %#x", typ)
		}
		r.option(optList, nil)
		typ, data := r.optReply()
		if typ != repServer || string(data[4:]) != "mem" {
			t.Fatalf("LIST: %#x %q", typ, data)
		}
		if typ, _ := r.optReply(); typ != repAck {
			t.Fatalf("LIST end: %#x", typ)
		}
		r.option(optAbort, nil)
		if typ, _ := r.optReply(); typ != repAck {
			t.Fatalf("ABORT: %#x", typ)
		}
		r.expectClosed()
	})
	t.Run("malformed GO", func(t *testing.T) {
		r := dialRaw(t, ts.addr)
		r.clientFlags(flagCFixedNewstyle)
		for _, data := range [][]byte{
			{0, 0},                            // too short
			{0, 0, 0x10, 0, 'a', 0, 0},        // name length beyond the data
			{0, 0, 0, 3, 'm', 'e', 'm', 0, 5}, // 5 info requests, none sent
		} {
			r.option(optGo, data)
			if typ, _ := r.optReply(); typ != repErrInvalid {
				t.Fatalf("GO %x: reply %#x", data, typ)
			}
		}
		r.option(optGo, []byte{0, 0, 0, 4, 'n', 'o', 'p', 'e', 0, 0})
		if typ, msg := r.optReply(); typ != repErrUnknown || len(msg) == 0 {
			t.Fatalf("GO unknown export: reply %#x %q", typ, msg)
		}
		r.option(optSetMetaContext, metaQuery("mem", metaBaseAllocation))
		if typ, _ := r.optReply(); typ != repErrInvalid {
			t.Fatalf("SET_META_CONTEXT before structured replies: %#x", typ)
		}
		r.option(optStructuredReply, []byte{1})
		if typ, _ := r.optReply(); typ != repErrInvalid {
			t.Fatalf("STRUCTURED_REPLY with data: %#x", typ)
		}
	})
	t.Run("oversized option", func(t *testing.T) {
		r := dialRaw(t, ts.addr)
		r.clientFlags(flagCFixedNewstyle)
		r.option(optList, make([]byte, maxOptionBytes+1))
		if typ, _ := r.optReply(); typ != repErrTooBig {
			t.Fatalf("oversized option: %#x", typ)
		}
		b := binary.BigEndian.AppendUint64(nil, magicOption)
		b = binary.BigEndian.AppendUint32(b, optList)
		b = binary.BigEndian.AppendUint32(b, math.MaxUint32)
		r.write(b)
		r.expectClosed()
	})
	t.Run("unknown export by EXPORT_NAME", func(t *testing.T) {
		r := dialRaw(t, ts.addr)
		r.clientFlags(flagCFixedNewstyle)
		r.option(optExportName, []byte("nope"))
		r.expectClosed()
	})
	t.Run("too many options", func(t *testing.T) {
		r := dialRaw(t, ts.addr)
		r.clientFlags(flagCFixedNewstyle)
		for i := 0; i < defaultMaxOptions; i++ {
			r.option(4242, nil)
			r.optReply()
		}
		r.option(4242, nil)
		r.expectClosed()
	})
	t.Run("truncated handshake", func(t *testing.T) {
		r := dialRaw(t, ts.addr)
		r.write([]byte{0, 0})
		r.c.(*net.TCPConn).CloseWrite()
		r.expectClosed()
	})
	assertServing(t, ts, zero)
}

// TestHandshakeTimeout: a client that says nothing is dropped.
func TestHandshakeTimeout(t *testing.T) {
	mem := NewMemoryBackend(4096, false)
	ts := startServer(t, Config{Exports: SingleExport(&Export{Name: "mem", Backend: mem}), Limits: Limits{HandshakeTimeout: 200 * time.Millisecond}})
	r := dialRaw(t, ts.addr)
	r.expectClosed()
}
