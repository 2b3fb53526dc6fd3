package membership

import (
	"bytes"
	"reflect"
	"testing"
)

var testKey = bytes.Repeat([]byte{7}, AuthKeyBytes)

func TestWireRoundTrip(t *testing.T) {
	hb := &Heartbeat{ClusterTag: 42, From: 3, Incarnation: 9, Seq: 1000, ConfigVersion: 5, Flags: FlagQuorate, ExpectedVotes: 3, Peers: []PeerReport{{ID: 1, Heard: true, AgeMs: 12, EchoIncarnation: 4, EchoSeq: 99}, {ID: 2, AgeMs: MaxAgeMs}, {ID: 31, Heard: true, EchoSeq: 1 << 60}}}
	pkt, err := Encode(nil, hb, testKey)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(pkt, testKey)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, hb) {
		t.Fatalf("got %+v want %+v", got, hb)
	}
	// Every single flipped bit is caught.
	for i := range pkt {
		bad := bytes.Clone(pkt)
		bad[i] ^= 0x10
		if _, err := Decode(bad, testKey); err == nil {
			t.Fatalf("flipped byte %d accepted", i)
		}
	}
	if _, err := Decode(pkt, bytes.Repeat([]byte{8}, AuthKeyBytes)); err != ErrAuth {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := Encode(nil, &Heartbeat{Peers: make([]PeerReport, MaxNodes+1)}, testKey); err == nil {
		t.Fatal("oversized heard list encoded")
	}
}

func FuzzDecode(f *testing.F) {
	pkt, _ := Encode(nil, &Heartbeat{ClusterTag: 1, From: 2, Peers: []PeerReport{{ID: 1, Heard: true, AgeMs: 5, EchoIncarnation: 1, EchoSeq: 7}}}, testKey)
	f.Add(pkt)
	f.Add([]byte("PDHB"))
	f.Add(bytes.Repeat([]byte{0}, MaxPacketBytes))
	f.Fuzz(func(t *testing.T, b []byte) {
		hb, err := Decode(b, testKey)
		if err != nil {
			return
		}
		// Anything that decodes must re-encode to the same bytes.
		again, err := Encode(nil, hb, testKey)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decoded packet does not re-encode: %v", err)
		}
	})
}
