package node

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/paddock-io/paddock/fence"
	"github.com/paddock-io/paddock/fence/netfence"
)

// The fence part of "paddock status": one line per node with its state and
// last fence, then the filter.
func TestFencingText(t *testing.T) {
	last := fence.HistoryEntry{TimeMs: 1767225600000, Target: "h1", Method: fence.MethodNetwork, Action: fence.ActionOff,
		Device: "h2,h3", Result: fence.ResultOK, DurationMs: 223}
	s := Status{Fencing: &FencingStatus{
		Nodes: []NodeFenceStatus{
			{ID: 1, Name: "h1", Fenced: true, NetBlocked: true, PowerFenced: true, Last: &last},
			{ID: 2, Name: "h2"},
		},
		Filter: &NetFilterStatus{Interface: "eth0", Mode: "xdp", DroppedPackets: 7,
			Blocked: []netfence.Blocked{{Addr: netip.MustParseAddr("10.77.0.1"), Dropped: 7}}},
	}}
	var b bytes.Buffer
	s.WriteText(&b)
	out := b.String()
	for _, want := range []string{
		"Fencing information",
		"0x00000001 h1               power+net  2026-01-01 00:00:00 network off (h2,h3) ok in 223 ms",
		"0x00000002 h2               no         -",
		"Network filter:   eth0 (xdp), 7 packets dropped; blocking 10.77.0.1 (7 dropped)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
	s.Fencing.Filter = nil
	b.Reset()
	s.WriteText(&b)
	if !strings.Contains(b.String(), "none on this node") {
		t.Errorf("without a filter:\n%s", b.String())
	}
}

// The peer API of the network fence: who may ask, and what a node without
// a filter answers.
func TestPeerNetFenceHandler(t *testing.T) {
	cfg, err := withNetBlock(netTestConfig(t), "n1", "n2", 1)
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{loaded: &Loaded{Identity: Identity{ID: 2, Name: "n2"}, Config: cfg}, nf: &netFenceState{}}
	d.status.Quorum.Quorate = true
	call := func(caller string, body string) (int, string) {
		r := httptest.NewRequest("POST", "/peer/v1/netfence", strings.NewReader(body))
		if caller != "" {
			cert := &x509.Certificate{Subject: pkix.Name{CommonName: caller}}
			r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}}}
		}
		w := httptest.NewRecorder()
		d.peerNetFenceHandler(w, r)
		return w.Code, w.Body.String()
	}
	if code, _ := call("", `{"node":"n3","block":true}`); code != http.StatusUnauthorized {
		t.Errorf("without a certificate: %d", code)
	}
	// n1 is network-fenced: it has no one fenced.
	if code, body := call("n1", `{"node":"n3","block":true}`); code != http.StatusForbidden {
		t.Errorf("a fenced caller: %d %s", code, body)
	}
	if code, _ := call("n3", `{"node":`); code != http.StatusBadRequest {
		t.Errorf("a malformed body: %d", code)
	}
	code, body := call("n3", `{"node":"n1","block":true}`)
	var rep NetFencePeerReply
	if code != http.StatusOK || json.Unmarshal([]byte(body), &rep) != nil || rep.Filter || rep.Node != "n2" || rep.Error != "" {
		t.Errorf("a node without a filter: %d %s", code, body)
	}
	d.status.Quorum.Quorate = false
	if code, _ := call("n3", `{"node":"n1","block":true}`); code != http.StatusConflict {
		t.Errorf("an inquorate node: %d", code)
	}
}
