package witness

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/paddock-io/paddock/quorum"
)

const testClusterID = "0123456789abcdef0123456789abcdef"

func testReport() *Report {
	return &Report{Seq: 7, Membership: []quorum.NodeID{1, 2}, ConfigVersion: 3, LeaseMs: 750,
		Config: quorum.Config{Nodes: []quorum.Node{{ID: 1, Name: "a", Votes: 1}, {ID: 2, Name: "b", Votes: 1}}, Witness: &quorum.WitnessConfig{Algorithm: quorum.FFSplit}}}
}

func TestFrameRoundTrip(t *testing.T) {
	msgs := []*Envelope{
		{Type: TypeHello, Hello: &Hello{Version: ProtocolVersion, ClusterID: testClusterID, NodeID: 1, Incarnation: 4}},
		{Type: TypeReport, Report: testReport()},
		{Type: TypeVerdict, Verdict: &Verdict{Seq: 7, Granted: true, Membership: []quorum.NodeID{1, 2}, LeaseMs: 750, Reason: "x"}},
		{Type: TypeVerdict, Verdict: &Verdict{Seq: 7, Reason: "no"}},
		{Type: TypeRefusal, Refusal: &Refusal{Reason: "go away"}},
	}
	var buf bytes.Buffer
	for _, m := range msgs {
		if err := WriteFrame(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range msgs {
		got, err := ReadFrame(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if got.Type != want.Type {
			t.Fatalf("got %s, want %s", got.Type, want.Type)
		}
	}
}

func TestFrameRejects(t *testing.T) {
	frame := func(body string) []byte {
		b := make([]byte, 4+len(body))
		binary.BigEndian.PutUint32(b, uint32(len(body)))
		copy(b[4:], body)
		return b
	}
	cases := map[string][]byte{
		"too long":       {0, 1, 0, 0},
		"empty":          {0, 0, 0, 0},
		"truncated":      append([]byte{0, 0, 0, 10}, "{}"...),
		"not json":       frame("hello"),
		"unknown type":   frame(`{"type":"vote","refusal":{"reason":""}}`),
		"two bodies":     frame(`{"type":"refusal","refusal":{"reason":""},"verdict":{"seq":1,"reason":""}}`),
		"wrong body":     frame(`{"type":"hello","refusal":{"reason":""}}`),
		"unknown field":  frame(`{"type":"refusal","refusal":{"reason":""},"x":1}`),
		"old version":    frame(`{"type":"hello","hello":{"version":0,"cluster_id":"` + testClusterID + `","node_id":1}}`),
		"node 0":         frame(`{"type":"hello","hello":{"version":1,"cluster_id":"` + testClusterID + `","node_id":0}}`),
		"unsorted":       frame(`{"type":"report","report":{"seq":1,"membership":[2,1],"config_version":1,"config":{"nodes":[]},"lease_ms":750}}`),
		"lease 0":        frame(`{"type":"report","report":{"seq":1,"membership":[1],"config_version":1,"config":{"nodes":[]},"lease_ms":0}}`),
		"trailing":       frame(`{"type":"refusal","refusal":{"reason":""}} {}`),
		"grant no lease": frame(`{"type":"verdict","verdict":{"seq":1,"granted":true,"membership":[1],"reason":""}}`),
	}
	for name, b := range cases {
		if _, err := ReadFrame(bytes.NewReader(b)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := WriteFrame(&bytes.Buffer{}, &Envelope{Type: TypeRefusal, Refusal: &Refusal{Reason: strings.Repeat("x", 1000)}}); err == nil {
		t.Error("wrote an over-long reason")
	}
}

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, &Envelope{Type: TypeReport, Report: testReport()})
	f.Add(buf.Bytes())
	buf.Reset()
	WriteFrame(&buf, &Envelope{Type: TypeHello, Hello: &Hello{Version: 1, ClusterID: testClusterID, NodeID: 3}})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ReadFrame(bytes.NewReader(b))
		if err != nil {
			return
		}
		// What was accepted is valid and survives a round trip.
		var out bytes.Buffer
		if err := WriteFrame(&out, e); err != nil {
			t.Fatalf("accepted %q but cannot write it back: %v", b, err)
		}
		again, err := ReadFrame(&out)
		if err != nil || again.Type != e.Type {
			t.Fatalf("round trip of %q: %v", b, err)
		}
	})
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"config_version":3,"config":{"nodes":[{"id":1,"votes":1},{"id":2,"votes":1}],"witness":{"algorithm":"ffsplit"}},"active":[1,2],"max_lease_ms":750}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"active":[2,1]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseState(b)
		if err != nil {
			return
		}
		if s.Config != nil {
			if err := s.Config.Validate(); err != nil {
				t.Fatalf("accepted an invalid config: %v", err)
			}
			if _, err := quorum.NewArbiter(*s.Config, s.Active); err != nil && s.Config.Witness != nil {
				t.Fatalf("accepted state cannot make an arbiter: %v", err)
			}
		}
	})
}

func FuzzParseIdentity(f *testing.F) {
	f.Add([]byte(`{"cluster_id":"` + testClusterID + `","cluster_name":"lab"}`))
	f.Add([]byte(`{"cluster_id":"xyz"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseIdentity(b)
		if err == nil && len(id.ClusterID) != 32 {
			t.Fatalf("accepted cluster id %q", id.ClusterID)
		}
	})
}
