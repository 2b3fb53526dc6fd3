package blockrep

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func sampleMessages() []*Message {
	return []*Message{
		{Type: MsgPrepare, Volume: 7, From: 2, Epoch: 9},
		{Type: MsgPromise, Volume: 7, From: 3, Epoch: 9, Gen: Gen{8, 3}, Members: []NodeID{1, 3}},
		{Type: MsgRefuse, Volume: 7, From: 3, Epoch: 12},
		{Type: MsgStoreGen, Volume: 7, From: 1, Epoch: 9, Gen: Gen{9, 1}, Members: []NodeID{1, 2, 3}},
		{Type: MsgWrite, Flags: FlagFUA, Volume: 7, From: 1, Epoch: 9, Gen: Gen{9, 1}, Seq: 42, Offset: 4096, Length: 5, Payload: []byte("hello")},
		{Type: MsgWriteOK, Volume: 7, From: 2, Epoch: 9, Gen: Gen{9, 1}, Seq: 42},
		{Type: MsgZero, Volume: 7, From: 1, Epoch: 9, Gen: Gen{9, 1}, Seq: 43, Offset: 1 << 20, Length: 1 << 20},
		{Type: MsgFlush, Volume: 7, From: 1, Epoch: 9, Seq: 44},
		{Type: MsgPromise, Volume: 7, From: 3, Epoch: 9, Gen: Gen{8, 3}, Members: []NodeID{1, 3}, Payload: []byte{0, 0, 0, 0, 0, 0, 0, 5}},
		{Type: MsgRefuse, Volume: 7, From: 3, Epoch: 12, Payload: []byte("write from epoch 9")},
		{Type: MsgSyncWrite, Volume: 7, From: 1, Epoch: 9, Gen: Gen{9, 1}, Seq: 45, Offset: 8192, Length: 3, Payload: []byte("abc")},
		{Type: MsgRead, Volume: 7, From: 1, Epoch: 9, Seq: 46, Offset: 0, Length: 4096},
		{Type: MsgReadOK, Volume: 7, From: 2, Epoch: 9, Seq: 46, Payload: []byte("data")},
		{Type: MsgDigest, Volume: 7, From: 1, Epoch: 9, Seq: 47, Offset: 0, Length: 1 << 20, Payload: []byte{0, 0, 0, 0, 0, 1, 0, 0}},
		{Type: MsgDigestOK, Volume: 7, From: 2, Epoch: 9, Seq: 47, Payload: make([]byte, 16)},
		{Type: MsgFailed, Volume: 7, From: 2, Seq: 48, Payload: []byte("input/output error")},
		{Type: MsgVerify, Volume: 7, From: 1, Epoch: 9, Seq: 49, Offset: 0, Length: 1 << 20},
		{Type: MsgVerifyOK, Volume: 7, From: 2, Epoch: 9, Seq: 49, Payload: make([]byte, 24)},
		{Type: MsgRelease, Volume: 7, From: 1, Epoch: 9, Seq: 50},
		{Type: MsgRelease, Flags: FlagFenced, Volume: 7, From: 2, Seq: 51, Members: []NodeID{1}},
		{Type: MsgReleaseOK, Volume: 7, From: 3, Seq: 51},
		{Type: MsgPromise, Flags: FlagReleased, Volume: 7, From: 3, Epoch: 10, Gen: Gen{9, 1}, Members: []NodeID{1, 3}},
		// One hot extent (5), one recovered (9); then a whole volume.
		{Type: MsgPromise, Flags: FlagRecovering, Volume: 7, From: 3, Epoch: 11, Gen: Gen{9, 1}, Members: []NodeID{1, 3}, Length: 1,
			Payload: []byte{0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9}},
		{Type: MsgPromise, Flags: FlagRecovering, Volume: 7, From: 3, Epoch: 11, Gen: Gen{9, 1}, Members: []NodeID{1, 3}},
		{Type: MsgResolve, Volume: 7, From: 1, Epoch: 11, Seq: 52, Payload: []byte{0, 0, 0, 0, 0, 0, 0, 9}},
		{Type: MsgResolve, Volume: 7, From: 1, Epoch: 11, Seq: 53},
		{Type: MsgResolveOK, Volume: 7, From: 3, Epoch: 11, Seq: 53},
		// Writes of whole blocks: Decode checksums them block by block.
		{Type: MsgSyncWrite, Volume: 7, From: 1, Epoch: 9, Gen: Gen{9, 1}, Seq: 54, Offset: 8192, Length: 2 * BlockBytes, Payload: patterned(2 * BlockBytes)},
		{Type: MsgWrite, Volume: 7, From: 1, Epoch: 9, Gen: Gen{9, 1}, Seq: 55, Offset: 0, Length: BlockBytes, Payload: patterned(BlockBytes)},
		// Digests of the block checksums.
		{Type: MsgDigest, Flags: FlagSums, Volume: 7, From: 1, Epoch: 9, Seq: 56, Offset: 0, Length: 1 << 20, Payload: []byte{0, 0, 0, 0, 0, 1, 0, 0}},
		{Type: MsgDigestOK, Flags: FlagSums, Volume: 7, From: 2, Epoch: 9, Seq: 56, Payload: make([]byte, 16)},
	}
}

func patterned(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i>>8)
	}
	return b
}

func TestPromiseExtents(t *testing.T) {
	ms := sampleMessages()
	for _, c := range []struct {
		m              *Message
		hot, recovered []int64
		whole          bool
	}{
		{ms[8], []int64{5}, nil, false},
		{ms[22], []int64{5}, []int64{9}, false},
		{ms[23], nil, nil, true},
	} {
		hot, rec, whole := PromiseExtents(c.m)
		if !reflect.DeepEqual(hot, c.hot) || !reflect.DeepEqual(rec, c.recovered) || whole != c.whole {
			t.Errorf("%+v: hot %v recovered %v whole %v, want %v %v %v", c.m, hot, rec, whole, c.hot, c.recovered, c.whole)
		}
	}
}

func TestWireRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		b, err := Encode(nil, m)
		if err != nil {
			t.Fatalf("%v: %v", m.Type, err)
		}
		n, err := FrameLength(b[:wireHeaderBytes])
		if err != nil || n != len(b) {
			t.Fatalf("%v: frame length %d %v, encoded %d", m.Type, n, err, len(b))
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%v: %v", m.Type, err)
		}
		if (m.Type == MsgWrite || m.Type == MsgSyncWrite) && len(m.Payload)%BlockBytes == 0 {
			if len(got.blockSums) != len(m.Payload)/BlockBytes {
				t.Fatalf("%v of %d bytes: %d block checksums", m.Type, len(m.Payload), len(got.blockSums))
			}
			for i, c := range got.blockSums {
				if c != blockSum(m.Payload[i*BlockBytes:(i+1)*BlockBytes]) {
					t.Fatalf("%v: checksum of block %d is wrong", m.Type, i)
				}
			}
		}
		got.blockSums = nil
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("%v: got %+v want %+v", m.Type, got, m)
		}
		// Every flipped byte is refused.
		for i := range b {
			bad := bytes.Clone(b)
			bad[i] ^= 0x40
			if _, err := Decode(bad); err == nil {
				t.Fatalf("%v: flipped byte %d accepted", m.Type, i)
			}
		}
	}
}

func TestWireRefusesMalformed(t *testing.T) {
	bad := []*Message{
		{Type: 0, Epoch: 1},
		{Type: msgTypeEnd, Epoch: 1},
		{Type: MsgWrite, Epoch: 1, Length: 3, Payload: []byte("hello")},
		{Type: MsgWrite, Epoch: 1},
		{Type: MsgFlush, Epoch: 1, Payload: []byte("x")},
		{Type: MsgPrepare, Epoch: 1, Members: []NodeID{1}},
		{Type: MsgZero, Epoch: 1, Offset: 1<<64 - 10, Length: 100},
		{Type: MsgPrepare},
		{Type: MsgPrepare, Epoch: 1, Flags: 0x80},
		{Type: MsgPromise, Epoch: 1, Members: make([]NodeID, maxMembers+1)},
		{Type: MsgPromise, Epoch: 1, Payload: []byte{1, 2, 3}},
		{Type: MsgRefuse, Payload: make([]byte, maxTextBytes+1)},
		{Type: MsgDigest, Epoch: 1, Length: 1 << 20},
		{Type: MsgDigest, Epoch: 1, Length: 1 << 20, Payload: []byte{0, 0, 0, 0, 0, 0, 0, 1}},
		{Type: MsgDigest, Epoch: 1, Length: 1 << 30, Payload: []byte{0, 0, 0, 0, 0, 0, 16, 0}},
		{Type: MsgRead, Epoch: 1, Length: MaxPayloadBytes + 1},
		{Type: MsgRead, Epoch: 1},
		{Type: MsgSyncWrite, Epoch: 1, Length: 2, Payload: []byte("x")},
		{Type: MsgWriteOK, Epoch: 1, Payload: []byte("x")},
		{Type: MsgVerify, Epoch: 1, Length: MaxVerifyBytes + 1},
		{Type: MsgVerifyOK, Epoch: 1, Payload: []byte{1}},
		{Type: MsgRelease},
		{Type: MsgRelease, Epoch: 1, Members: []NodeID{1}},
		{Type: MsgRelease, Flags: FlagFenced},
		{Type: MsgRelease, Flags: FlagFenced, Members: []NodeID{1, 2}},
		{Type: MsgRelease, Flags: FlagFenced, Members: []NodeID{0}},
		{Type: MsgPrepare, Epoch: 1, Flags: FlagFenced},
		{Type: MsgPromise, Epoch: 1, Length: 1, Payload: make([]byte, 8)},                        // recovered extents without the flag
		{Type: MsgPromise, Epoch: 1, Flags: FlagRecovering, Length: 2, Payload: make([]byte, 8)}, // more recovered than listed
		{Type: MsgPromise, Epoch: 1, Flags: FlagRecovering, Length: maxRecoveredExtents + 1, Payload: make([]byte, 8*(maxRecoveredExtents+1))},
		{Type: MsgPrepare, Epoch: 1, Flags: FlagRecovering},
		{Type: MsgResolve, Epoch: 1, Flags: FlagRecovering},
		{Type: MsgResolve, Epoch: 1, Payload: []byte{1, 2, 3}},
		{Type: MsgResolve, Epoch: 1, Payload: make([]byte, 8*(maxRecoveredExtents+1))},
		{Type: MsgResolve},
		{Type: MsgRead, Epoch: 1, Length: 4096, Flags: FlagSums},
		{Type: MsgVerify, Epoch: 1, Length: 4096, Flags: FlagSums},
	}
	for i, m := range bad {
		if _, err := Encode(nil, m); !errors.Is(err, ErrBadMessage) {
			t.Errorf("case %d (%v): %v", i, m.Type, err)
		}
	}
	if _, err := Decode(make([]byte, 10)); !errors.Is(err, ErrBadMessage) {
		t.Fatal("short frame accepted")
	}
}

func FuzzDecodeMessage(f *testing.F) {
	for _, m := range sampleMessages() {
		b, _ := Encode(nil, m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		again, err := Encode(nil, m)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decoded message does not re-encode: %v", err)
		}
	})
}
