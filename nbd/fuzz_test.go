package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// The fuzz targets drive one shared server through net.Pipe with whatever
// bytes the fuzzer makes, and check that it neither panics nor hangs, and
// that a read-only export never changes.

var (
	fuzzOnce   sync.Once
	fuzzServer *Server
	fuzzRO     *MemoryBackend
	fuzzRW     *MemoryBackend
	fuzzRODisk []byte
)

func fuzzSetup() {
	fuzzRO = NewMemoryBackend(64<<10, true)
	for i := range fuzzRO.Bytes() {
		fuzzRO.Bytes()[i] = byte(i * 7)
	}
	fuzzRODisk = bytes.Clone(fuzzRO.Bytes())
	fuzzRW = NewMemoryBackend(64<<10, false)
	var err error
	fuzzServer, err = NewServer(Config{
		Exports: &ExportMap{ByName: map[string]*Export{
			"ro": {Name: "ro", Backend: fuzzRO},
			"rw": {Name: "rw", Backend: fuzzRW},
		}, Default: "rw"},
		Logger: quietLogger(),
		Limits: Limits{MaxPayloadBytes: 16 << 10, HandshakeTimeout: 5 * time.Second},
	})
	if err != nil {
		panic(err)
	}
}

// runFuzzConn feeds input to a fresh server connection and waits for the
// server to let go of it.
func runFuzzConn(t *testing.T, input []byte) {
	fuzzOnce.Do(fuzzSetup)
	client, server := net.Pipe()
	fuzzServer.ServeConn(server)
	drained := make(chan struct{})
	go func() {
		io.Copy(io.Discard, client)
		close(drained)
	}()
	client.SetWriteDeadline(time.Now().Add(5 * time.Second))
	client.Write(input)
	// Half-close is not possible on a pipe: give the server a moment to
	// act on what it read, then hang up.
	time.Sleep(time.Millisecond)
	client.Close()
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not let go of the connection")
	}
	if !bytes.Equal(fuzzRO.Bytes(), fuzzRODisk) {
		t.Fatal("read-only export changed")
	}
}

func optionBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func goData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func requestBytes(typ, flags uint16, off uint64, length uint32, payload []byte) []byte {
	var h [requestHeaderBytes]byte
	Request{Type: typ, Flags: flags, Cookie: 1, Offset: off, Length: length}.encode(&h)
	return append(h[:], payload...)
}

// FuzzOptionPhase fuzzes everything the client sends from its flags on.
func FuzzOptionPhase(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f.Add(cat(flags, optionBytes(optGo, goData("rw", infoBlockSize))))
	f.Add(cat(flags, optionBytes(optInfo, goData("ro", infoName, infoDescription)), optionBytes(optAbort, nil)))
	f.Add(cat(flags, optionBytes(optList, nil), optionBytes(optExportName, []byte("ro"))))
	f.Add(cat(flags, optionBytes(optStructuredReply, nil), optionBytes(optListMetaContext, metaQuery("rw", "base:")), optionBytes(optSetMetaContext, metaQuery("rw", metaBaseAllocation))))
	f.Add(cat(flags, optionBytes(optStartTLS, nil), optionBytes(99, []byte("x"))))
	f.Add(cat(flags, optionBytes(optGo, []byte{0, 0, 0xff, 0xff})))
	f.Fuzz(func(t *testing.T, input []byte) {
		runFuzzConn(t, input)
	})
}

// FuzzRequests fuzzes the transmission phase: a fixed handshake chosen by
// the first byte, then the fuzzer's request stream.
func FuzzRequests(f *testing.F) {
	f.Add(byte(0), requestBytes(CmdRead, 0, 0, 512, nil))
	f.Add(byte(1), requestBytes(CmdWrite, CmdFlagFUA, 100, 4, []byte("abcd")))
	f.Add(byte(2), requestBytes(CmdBlockStatus, CmdFlagReqOne, 0, 4096, nil))
	f.Add(byte(3), bytes.Join([][]byte{requestBytes(CmdWriteZeroes, CmdFlagNoHole|CmdFlagFastZero, 0, 8192, nil), requestBytes(CmdTrim, 0, 60000, 8192, nil), requestBytes(CmdFlush, 0, 0, 0, nil), requestBytes(CmdDisc, 0, 0, 0, nil)}, nil))
	f.Add(byte(1), requestBytes(CmdWrite, 0, 65530, 100, make([]byte, 100)))
	f.Add(byte(0), requestBytes(77, 0xffff, 1<<63, 1<<31, nil))
	f.Fuzz(func(t *testing.T, mode byte, reqs []byte) {
		export := "rw"
		if mode&1 == 0 {
			export = "ro"
		}
		hs := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)
		if mode&2 != 0 {
			hs = append(hs, optionBytes(optStructuredReply, nil)...)
			hs = append(hs, optionBytes(optSetMetaContext, metaQuery(export, metaBaseAllocation))...)
		}
		hs = append(hs, optionBytes(optGo, goData(export))...)
		runFuzzConn(t, append(hs, reqs...))
	})
}

// TestValidateNeverPanics runs validate over edge values.
func TestValidateEdges(t *testing.T) {
	v := exportView{size: 1 << 20, features: Features{CanTrim: true, CanZero: true, CanCache: true}, maxPayload: 1 << 16}
	for _, off := range []uint64{0, 1<<20 - 1, 1 << 20, 1<<64 - 1} {
		for _, n := range []uint32{0, 1, 1 << 16, 1<<32 - 1} {
			for typ := uint16(0); typ < 10; typ++ {
				errno, msg := validate(Request{Type: typ, Offset: off, Length: n}, v)
				if errno == 0 && typ != CmdFlush && typ != CmdDisc && off+uint64(n) > v.size {
					t.Fatalf("%s %d+%d accepted past the end", cmdName(typ), off, n)
				}
				if errno != 0 && msg == "" {
					t.Fatalf("%s %d+%d refused without a message", cmdName(typ), off, n)
				}
			}
		}
	}
}
