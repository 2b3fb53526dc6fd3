package nbd

import (
	"encoding/binary"
	"testing"
)

// TestRequestWireFormat pins the request header layout of proto.md:
// magic, flags, type, cookie, offset, length, big-endian.
func TestRequestWireFormat(t *testing.T) {
	r := Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 0x0102030405060708, Offset: 1 << 40, Length: 4096}
	var b [requestHeaderBytes]byte
	r.encode(&b)
	if binary.BigEndian.Uint32(b[0:]) != 0x25609513 || binary.BigEndian.Uint16(b[4:]) != 1 || binary.BigEndian.Uint16(b[6:]) != 1 ||
		binary.BigEndian.Uint64(b[8:]) != 0x0102030405060708 || binary.BigEndian.Uint64(b[16:]) != 1<<40 || binary.BigEndian.Uint32(b[24:]) != 4096 {
		t.Fatalf("encoded header % x", b)
	}
	got, err := parseRequest(&b)
	if err != nil || got != r {
		t.Fatalf("parsed %+v %v", got, err)
	}
	b[0] ^= 1
	if _, err := parseRequest(&b); err == nil {
		t.Fatal("bad magic accepted")
	}
}

// TestReplyWireFormat pins the simple reply and the structured chunk
// header.
func TestReplyWireFormat(t *testing.T) {
	h := chunkHeader(replyFlagDone, replyTypeOffsetData, 7, 4104)
	if binary.BigEndian.Uint32(h[0:]) != 0x668e33ef || binary.BigEndian.Uint16(h[4:]) != 1 || binary.BigEndian.Uint16(h[6:]) != 1 ||
		binary.BigEndian.Uint64(h[8:]) != 7 || binary.BigEndian.Uint32(h[16:]) != 4104 {
		t.Fatalf("chunk header % x", h)
	}
	if tf := transmissionFlags(&Export{Backend: NewMemoryBackend(4096, true)}, false); tf&tflagReadOnly == 0 || tf&tflagSendTrim != 0 || tf&tflagSendDF != 0 {
		t.Fatalf("read-only flags %#x", tf)
	}
	want := tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes | tflagSendFastZero | tflagSendDF | tflagCanMultiConn
	if tf := transmissionFlags(&Export{Backend: NewMemoryBackend(4096, false)}, true); tf&want != want || tf&tflagReadOnly != 0 {
		t.Fatalf("writable flags %#x", tf)
	}
}
