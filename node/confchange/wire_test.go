package confchange

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"
)

// validMessages is one message of every shape.
func validMessages(t testing.TB) []Message {
	_, base := testNode(t)
	y := changed(t, base, "note y")
	return []Message{
		{Type: MsgPrepare, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}},
		{Type: MsgPromise, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 1}},
		{Type: MsgPromise, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 1}, AcceptedBallot: Ballot{3, 3}, Value: y},
		{Type: MsgAccept, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 2}, Value: y},
		{Type: MsgAccepted, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 1}},
		{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 1}, Reason: NackBallot, Promised: Ballot{9, 3}},
		{Type: MsgNack, From: 2, To: 1, Version: 2, Ballot: Ballot{7, 1}, Reason: NackDecided, Value: y, Committed: 2},
		{Type: MsgNack, From: 2, To: 1, Version: 4, Ballot: Ballot{7, 1}, Reason: NackBehind, Committed: 1},
		{Type: MsgCommit, From: 2, To: 1, Version: 2, Value: y},
		{Type: MsgCatchUpRequest, From: 2, To: 1, Version: 0},
		{Type: MsgCatchUp, From: 2, To: 1, Version: 1, Value: base},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range validMessages(t) {
		if err := m.Validate(0); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		b := EncodeMessage(m)
		got, err := DecodeMessage(b, 0)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, m)
		}
		// Every truncation, and any extra byte, is an error.
		for i := 0; i < len(b); i++ {
			if _, err := DecodeMessage(b[:i], 0); err == nil {
				t.Errorf("%s: truncated to %d bytes decoded", m, i)
			}
		}
		if _, err := DecodeMessage(append(append([]byte(nil), b...), 0), 0); err == nil {
			t.Errorf("%s: trailing byte decoded", m)
		}
		bad := append([]byte(nil), b...)
		bad[0] = 9
		if _, err := DecodeMessage(bad, 0); err == nil {
			t.Errorf("%s: unknown format decoded", m)
		}
	}
}

func TestDecodeRefusesHugeLength(t *testing.T) {
	m := validMessages(t)[3]
	b := EncodeMessage(m)
	// The data length sits right before the data.
	at := len(b) - len(m.Value.Data) - 4
	binary.BigEndian.PutUint32(b[at:], 0xffffffff)
	if _, err := DecodeMessage(b, 0); err == nil {
		t.Fatal("decoded a 4 GiB length")
	}
	// A receiver with a lower limit refuses a value above it.
	if _, err := DecodeMessage(EncodeMessage(m), len(m.Value.Data)-1); err == nil {
		t.Fatal("decoded a value above the receiver's limit")
	}
}

func TestHardStateRoundTripAndCorruption(t *testing.T) {
	n, _ := testNode(t)
	hs := n.hs
	b := EncodeHardState(hs)
	got, err := DecodeHardState(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, hs) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, hs)
	}
	if _, err := New(simOptions(1), got); err != nil {
		t.Fatalf("restart from decoded state: %v", err)
	}
	for i := 0; i < len(b); i++ {
		if _, err := DecodeHardState(b[:i]); err == nil {
			t.Errorf("truncated to %d bytes decoded", i)
		}
		for bit := 0; bit < 8; bit++ {
			c := append([]byte(nil), b...)
			c[i] ^= 1 << bit
			if _, err := DecodeHardState(c); err == nil {
				t.Errorf("bit %d of byte %d flipped: decoded", bit, i)
			}
		}
	}
	// An empty (joining) state round-trips too.
	if got, err := DecodeHardState(EncodeHardState(Joining())); err != nil || !reflect.DeepEqual(got, Joining()) {
		t.Errorf("joining state: %+v %v", got, err)
	}
}

func TestNewRefusesBadState(t *testing.T) {
	n, base := testNode(t)
	good := n.hs
	y := changed(t, base, "note y")
	mutate := map[string]func(hs *HardState){
		"committed digest": func(hs *HardState) { hs.Committed.Digest[3] ^= 1 },
		"committed unreadable": func(hs *HardState) {
			hs.Committed = NewConfig(1, []byte("garbage"))
		},
		"promise without committed": func(hs *HardState) { hs.Committed = Config{}; hs.Accepted = Config{}; hs.AcceptedBallot = Ballot{} },
		"accepted without ballot":   func(hs *HardState) { hs.AcceptedBallot = Ballot{} },
		"ballot without accepted":   func(hs *HardState) { hs.Accepted = Config{} },
		"accepted wrong version":    func(hs *HardState) { hs.Accepted = NewConfig(3, y.Data) },
		"accepted above promise":    func(hs *HardState) { hs.AcceptedBallot = Ballot{99, 2} },
		"accepted digest":           func(hs *HardState) { hs.Accepted.Digest[0] ^= 1 },
		"round too high":            func(hs *HardState) { hs.Round = MaxRound + 1 },
		"promised round too high":   func(hs *HardState) { hs.Promised = Ballot{MaxRound + 1, 2} },
	}
	for name, f := range mutate {
		hs := good
		f(&hs)
		if _, err := New(simOptions(1), hs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	bad := []Options{
		{ID: 0, Members: simMembers},
		{ID: 1},
		{ID: 1, Members: simMembers, MaxConfigBytes: MaxConfigBytes + 1},
		{ID: 1, Members: simMembers, RetryTicks: -1},
		{ID: 1, Members: simMembers, RetryTicks: 10, MaxBackoffTicks: 5},
		{ID: 1, Members: simMembers, ProposalTimeoutTicks: maxTimerTicks + 1},
	}
	for _, o := range bad {
		if _, err := New(o, good); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}

// FuzzDecodeMessage: any bytes decode to an error or a valid message, and
// stepping a node with it never panics and, on error, changes nothing.
func FuzzDecodeMessage(f *testing.F) {
	for _, m := range validMessages(f) {
		f.Add(EncodeMessage(m))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMessage(b, 0)
		if err != nil {
			return
		}
		if err := m.Validate(0); err != nil {
			t.Fatalf("decoded an invalid message: %v", err)
		}
		if !bytes.Equal(EncodeMessage(m), b) {
			t.Fatalf("re-encoding differs")
		}
		m.To = 1
		if m.From == 1 {
			return
		}
		n, _ := testNode(t)
		before := snap(n)
		if _, err := n.Step(m); err != nil && !sameSnap(before, snap(n)) {
			t.Fatalf("state changed on error %v", err)
		}
	})
}

// FuzzDecodeHardState: any bytes give an error or a state; New on that
// state never panics.
func FuzzDecodeHardState(f *testing.F) {
	n, _ := testNode(f)
	f.Add(EncodeHardState(n.hs))
	f.Add(EncodeHardState(Joining()))
	f.Fuzz(func(t *testing.T, b []byte) {
		hs, err := DecodeHardState(b)
		if err != nil {
			return
		}
		New(simOptions(1), hs)
	})
}
