package witness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/paddock-io/paddock/quorum"
)

// testPKI is a cluster CA that signs node and witness certificates, as
// node/pki.go and "paddock cluster witness-cert" do.
type testPKI struct {
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

func newTestPKI(t *testing.T) *testPKI {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return &testPKI{ca: ca, caKey: key}
}

func (p *testPKI) issue(t *testing.T, cn string) (tls.Certificate, []byte, []byte) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c, certPEM, keyPEM
}

// witnessDir writes a witness data directory.
func (p *testPKI) witnessDir(t *testing.T) string {
	dir := t.TempDir()
	_, certPEM, keyPEM := p.issue(t, CommonName(testClusterID))
	id, _ := json.Marshal(Identity{ClusterID: testClusterID, ClusterName: "test"})
	for name, b := range map[string][]byte{CAFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.ca.Raw}),
		CertFile: certPEM, KeyFile: keyPEM, IdentityFile: id} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type testWitness struct {
	srv    *Server
	addr   string
	cancel func()
	done   chan struct{}
}

func startWitness(t *testing.T, dir string, addr string) *testWitness {
	d, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	for i := 0; i < 50; i++ { // a restarted witness may wait for its old port
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &testWitness{srv: srv, addr: ln.Addr().String(), cancel: cancel, done: make(chan struct{})}
	go func() { srv.Serve(ctx, ln); close(w.done) }()
	t.Cleanup(w.stop)
	return w
}

func (w *testWitness) stop() { w.cancel(); <-w.done }

var testStart = time.Now()

func nowMs() int64 { return time.Since(testStart).Milliseconds() }

func twoNodes(algo quorum.WitnessAlgorithm) quorum.Config {
	return quorum.Config{Nodes: []quorum.Node{{ID: 1, Name: "n1", Votes: 1}, {ID: 2, Name: "n2", Votes: 1}},
		Witness: &quorum.WitnessConfig{Algorithm: algo}}
}

func startClient(t *testing.T, p *testPKI, addr string, id quorum.NodeID, name, clusterID string) (*Client, func()) {
	cert, _, _ := p.issue(t, name)
	c, err := NewClient(ClientConfig{Addr: addr, TLS: ClientTLS(p.ca, cert, testClusterID), ClusterID: clusterID,
		NodeID: id, Incarnation: 1, LeaseMs: 750, IntervalMs: 100, NowMs: nowMs})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return c, stop
}

func waitVote(t *testing.T, c *Client, want []quorum.NodeID) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, v := c.Answer(nowMs()); slices.Equal(v, want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, v := c.Answer(nowMs())
	t.Fatalf("vote %v not reached; have %v; status %+v", want, v, c.Status(nowMs()))
}

func waitAnswered(t *testing.T, c *Client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if a, _ := c.Answer(nowMs()); a {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no answer; status %+v", c.Status(nowMs()))
}

func TestWitnessPairLosesANode(t *testing.T) {
	p := newTestPKI(t)
	dir := p.witnessDir(t)
	w := startWitness(t, dir, "")
	cfg := twoNodes(quorum.FFSplit)
	c1, _ := startClient(t, p, w.addr, 1, "n1", testClusterID)
	c2, stop2 := startClient(t, p, w.addr, 2, "n2", testClusterID)
	// A lone node on a new witness gets no vote.
	c1.SetView([]quorum.NodeID{1}, 1, cfg)
	waitAnswered(t, c1)
	if _, v := c1.Answer(nowMs()); v != nil {
		t.Fatalf("a new witness voted for a lone node: %v", v)
	}
	both := []quorum.NodeID{1, 2}
	c1.SetView(both, 1, cfg)
	c2.SetView(both, 1, cfg)
	waitVote(t, c1, both)
	waitVote(t, c2, both)
	// Node 2 goes away; node 1 sees itself alone and keeps the vote.
	stop2()
	c1.SetView([]quorum.NodeID{1}, 1, cfg)
	waitVote(t, c1, []quorum.NodeID{1})
	if st := w.srv.Status(); !slices.Equal(st.Active, []quorum.NodeID{1}) || st.ConfigVersion != 1 {
		t.Fatalf("witness status %+v", st)
	}
	// The witness goes away: the vote ends with the lease.
	w.stop()
	waitVote(t, c1, nil)
	if c1.Status(nowMs()).Connected {
		t.Fatal("connected to a stopped witness")
	}
	// Restarted on the same address, from its state on disk: it waits
	// out the leases of its previous life, then votes for node 1 again,
	// and never for node 2 alone.
	w2 := startWitness(t, dir, w.addr)
	if st := w2.srv.Status(); !slices.Equal(st.Active, []quorum.NodeID{1}) {
		t.Fatalf("restarted witness forgot the active partition: %+v", st)
	}
	waitVote(t, c1, []quorum.NodeID{1})
	c1.SetView([]quorum.NodeID{1, 2}, 1, cfg)
	w2.stop()
	w3 := startWitness(t, dir, w.addr)
	c1.SetView([]quorum.NodeID{1}, 1, cfg)
	waitVote(t, c1, []quorum.NodeID{1})
	_ = w3
}

func TestWitnessNeverRevivesTheLosers(t *testing.T) {
	p := newTestPKI(t)
	w := startWitness(t, p.witnessDir(t), "")
	cfg := twoNodes(quorum.FFSplit)
	c1, stop1 := startClient(t, p, w.addr, 1, "n1", testClusterID)
	c2, _ := startClient(t, p, w.addr, 2, "n2", testClusterID)
	both := []quorum.NodeID{1, 2}
	c1.SetView(both, 1, cfg)
	c2.SetView(both, 1, cfg)
	waitVote(t, c1, both)
	waitVote(t, c2, both)
	// A split: the tie breaker (lowest id) wins; node 2 is refused.
	c1.SetView([]quorum.NodeID{1}, 1, cfg)
	c2.SetView([]quorum.NodeID{2}, 1, cfg)
	waitVote(t, c1, []quorum.NodeID{1})
	waitAnswered(t, c2)
	// Node 1 dies: node 2, which lost quorum, does not get it back
	// through the witness (DESIGN invariant 3).
	stop1()
	time.Sleep(1200 * time.Millisecond) // longer than node 1's lease
	c2.SetView([]quorum.NodeID{2}, 1, cfg)
	if _, v := c2.Answer(nowMs()); v != nil {
		t.Fatalf("the losing half got the vote: %v", v)
	}
	if st := c2.Status(nowMs()); !st.Connected || st.Vote {
		t.Fatalf("node 2: %+v", st)
	}
}

// TestWitnessWaitsForDisjointLease: with lms a lone node holds the
// vote; when the other two come back without it, the witness waits for
// the lone node's lease before it votes for them.
func TestWitnessWaitsForDisjointLease(t *testing.T) {
	p := newTestPKI(t)
	w := startWitness(t, p.witnessDir(t), "")
	cfg := quorum.Config{Nodes: []quorum.Node{{ID: 1, Name: "n1", Votes: 1}, {ID: 2, Name: "n2", Votes: 1}, {ID: 3, Name: "n3", Votes: 1}},
		Witness: &quorum.WitnessConfig{Algorithm: quorum.LMS}}
	c1, stop1 := startClient(t, p, w.addr, 1, "n1", testClusterID)
	all := []quorum.NodeID{1, 2, 3}
	c1.SetView(all, 1, cfg)
	waitVote(t, c1, all)
	c1.SetView([]quorum.NodeID{1}, 1, cfg)
	waitVote(t, c1, []quorum.NodeID{1})
	// Node 1 loses the witness but keeps its lease a while.
	stop1()
	stopped := time.Now()
	c2, _ := startClient(t, p, w.addr, 2, "n2", testClusterID)
	c3, _ := startClient(t, p, w.addr, 3, "n3", testClusterID)
	c2.SetView([]quorum.NodeID{2, 3}, 1, cfg)
	c3.SetView([]quorum.NodeID{2, 3}, 1, cfg)
	waitAnswered(t, c2)
	if st := c2.Status(nowMs()); st.Vote && time.Since(stopped) < 750*time.Millisecond {
		t.Fatalf("voted for 2,3 while node 1's lease for 1 may run: %+v", st)
	} else if !st.Vote && !strings.Contains(st.Reason, "lease") {
		t.Fatalf("node 2's answer: %+v", st)
	}
	waitVote(t, c2, []quorum.NodeID{2, 3})
	waitVote(t, c3, []quorum.NodeID{2, 3})
}

func TestWitnessRefusesStrangers(t *testing.T) {
	p := newTestPKI(t)
	w := startWitness(t, p.witnessDir(t), "")
	cfg := twoNodes(quorum.FFSplit)
	// Another cluster id.
	other := strings.Repeat("f", 32)
	c, _ := startClient(t, p, w.addr, 1, "n1", other)
	c.SetView([]quorum.NodeID{1, 2}, 1, cfg)
	waitErr(t, c, "serves cluster")
	// A certificate whose name is not node 2's.
	c2, _ := startClient(t, p, w.addr, 2, "n1", testClusterID)
	c2.SetView([]quorum.NodeID{1, 2}, 1, cfg)
	waitErr(t, c2, "not the name of node 2")
	// Another CA: the handshake fails on both sides.
	c3, _ := startClient(t, newTestPKI(t), w.addr, 1, "n1", testClusterID)
	c3.SetView([]quorum.NodeID{1, 2}, 1, cfg)
	waitErr(t, c3, "")
	if st := w.srv.Status(); len(st.Connected) > 0 && st.ConfigVersion != 0 {
		t.Fatalf("strangers changed the witness: %+v", st)
	}
}

func waitErr(t *testing.T, c *Client, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if st := c.Status(nowMs()); st.LastError != "" && strings.Contains(st.LastError, want) {
			if st.Vote {
				t.Fatalf("refused but voting: %+v", st)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no error %q; status %+v", want, c.Status(nowMs()))
}

func TestLoadDirErrors(t *testing.T) {
	if _, err := LoadDir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "witness-cert") {
		t.Fatalf("empty dir: %v", err)
	}
	p := newTestPKI(t)
	dir := p.witnessDir(t)
	os.WriteFile(filepath.Join(dir, StateFile), []byte(`{"active":[3,1]}`), 0o600)
	d, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewServer(d, nil); err == nil || !strings.Contains(err.Error(), "state.json is corrupt") {
		t.Fatalf("corrupt state: %v", err)
	}
}
