package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGuestReceiveNames: a guest's name becomes a socket file name in the
// data dir, so anything that could leave the guests directory or hide a
// file is refused, as are sizes that are not whole pages and timeouts out
// of bounds.
func TestGuestReceiveNames(t *testing.T) {
	good := []string{"g1", "vm-100", "a.b_c", strings.Repeat("x", 64)}
	bad := []string{"", "../etc", "a/b", ".hidden", "..", "-x", "a b", "g\x00", strings.Repeat("x", 65), "é"}
	for _, n := range good {
		req := GuestReceiveRequest{Name: n, RAMBytes: 32 << 20}
		if err := checkGuestReceive(&req); err != nil {
			t.Errorf("name %q refused: %v", n, err)
		}
		if req.IdleTimeoutMs != DefaultReceiverIdleTimeoutMs {
			t.Errorf("default idle timeout %d", req.IdleTimeoutMs)
		}
	}
	for _, n := range bad {
		req := GuestReceiveRequest{Name: n, RAMBytes: 32 << 20}
		if err := checkGuestReceive(&req); err == nil {
			t.Errorf("name %q accepted", n)
		}
	}
	for _, req := range []GuestReceiveRequest{
		{Name: "g", RAMBytes: 0},
		{Name: "g", RAMBytes: -4096},
		{Name: "g", RAMBytes: 4097},
		{Name: "g", RAMBytes: maxGuestRAMBytes + guestPageBytes},
		{Name: "g", RAMBytes: 4096, Node: "../n2"},
		{Name: "g", RAMBytes: 4096, IdleTimeoutMs: 10},
		{Name: "g", RAMBytes: 4096, IdleTimeoutMs: maxReceiverIdleTimeoutMs + 1},
	} {
		if err := checkGuestReceive(&req); err == nil {
			t.Errorf("%+v accepted", req)
		}
	}
}

// TestGuestReceiverLimit: at most MaxGuestReceivers wait at once, at most
// maxGuestChildren children in all; a second request for a waiting
// receiver of the same size gets that one again, a different size or a
// name in use is refused.
func TestGuestReceiverLimit(t *testing.T) {
	children := map[string]*receiverChild{}
	add := func(name, state string, ram int64) {
		children[name] = &receiverChild{info: GuestReceiver{Name: name, State: state, RAMBytes: ram, Pid: 100 + len(children)}}
	}
	for i := range MaxGuestReceivers {
		req := GuestReceiveRequest{Name: fmt.Sprintf("w%d", i), RAMBytes: 4096}
		if reuse, err := admitReceiver(children, req); err != nil || reuse != nil {
			t.Fatalf("receiver %d of %d: %v, reuse %v", i+1, MaxGuestReceivers, err, reuse)
		}
		state := "waiting"
		if i == 0 {
			state = "starting" // starting ones count as well
		}
		add(req.Name, state, req.RAMBytes)
	}
	_, err := admitReceiver(children, GuestReceiveRequest{Name: "one-more", RAMBytes: 4096})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("at most %d", MaxGuestReceivers)) {
		t.Fatalf("receiver %d: %v", MaxGuestReceivers+1, err)
	}
	// The same name and size: the waiting one again, even when full.
	if reuse, err := admitReceiver(children, GuestReceiveRequest{Name: "w1", RAMBytes: 4096}); err != nil || reuse != children["w1"] {
		t.Fatalf("same receiver again: %v, %v", err, reuse)
	}
	if _, err := admitReceiver(children, GuestReceiveRequest{Name: "w1", RAMBytes: 8192}); err == nil {
		t.Fatal("a waiting receiver of another size was accepted")
	}
	if _, err := admitReceiver(children, GuestReceiveRequest{Name: "w0", RAMBytes: 4096}); err == nil {
		t.Fatal("a name whose receiver is starting was accepted")
	}
	// A receiver that got its guest no longer waits: room for one more.
	children["w1"].info.State = "running"
	if _, err := admitReceiver(children, GuestReceiveRequest{Name: "w1", RAMBytes: 4096}); err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("the name of a running guest: %v", err)
	}
	if reuse, err := admitReceiver(children, GuestReceiveRequest{Name: "next", RAMBytes: 4096}); err != nil || reuse != nil {
		t.Fatalf("after one was used: %v", err)
	}
	// Running guests count against the total.
	for i := len(children); i < maxGuestChildren; i++ {
		add(fmt.Sprintf("r%d", i), "running", 4096)
	}
	children["w2"].info.State = "running"
	if _, err := admitReceiver(children, GuestReceiveRequest{Name: "last", RAMBytes: 4096}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("at most %d", maxGuestChildren)) {
		t.Fatalf("child %d: %v", maxGuestChildren+1, err)
	}
}

// TestReceiverListen: the migration address and the ports after it when
// configured, else the storage IP and the fixed range, else a clear
// refusal.
func TestReceiverListen(t *testing.T) {
	ip, ports, err := receiverListen(NodeConfig{Name: "n1", StorageAddr: "10.0.0.1:7000", MigrationAddr: "10.1.0.1:9000"})
	if err != nil || ip.String() != "10.1.0.1" || len(ports) != MaxGuestReceivers || ports[0] != 9000 || ports[MaxGuestReceivers-1] != 9000+MaxGuestReceivers-1 {
		t.Fatalf("with a migration address: %v %v %v", ip, ports, err)
	}
	ip, ports, err = receiverListen(NodeConfig{Name: "n1", StorageAddr: "10.0.0.1:7000"})
	if err != nil || ip.String() != "10.0.0.1" || len(ports) != receiverPortCount || ports[0] != receiverPortBase {
		t.Fatalf("storage only: %v %v %v", ip, ports, err)
	}
	if _, _, err := receiverListen(NodeConfig{Name: "n1", ClusterAddr: "10.0.0.1:5405"}); err == nil || !strings.Contains(err.Error(), "--migration-addr") {
		t.Fatalf("no address: %v", err)
	}
}

func TestTailBuffer(t *testing.T) {
	b := newTailBuffer(8)
	b.Write([]byte("0123456"))
	b.Write([]byte("789abc"))
	if got := b.String(); got != "56789abc" {
		t.Fatalf("tail %q", got)
	}
}

// fakeReceiverDaemon is a daemon value with what the receiver manager
// reads: its configuration, identity, data dir and logger.
func fakeReceiverDaemon(t *testing.T) *Daemon {
	cfg := &ClusterConfig{Nodes: []NodeConfig{{ID: 1, Name: "n1", ClusterAddr: "127.0.0.1:1", StorageAddr: "127.0.0.1:2"}}}
	return &Daemon{dir: DataDir{Path: t.TempDir()}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		loaded: &Loaded{Identity: Identity{ID: 1, Name: "n1"}, Config: cfg}}
}

// TestGuestReceiverProcesses runs the manager with real child processes:
// a shell script in place of paddock that prints the line a receiver
// prints when it listens (then sleeps) is answered with its address and
// listed; asking again answers the same one; stopAll ends it. A child that
// fails before it listens is reported with the end of its stderr.
func TestGuestReceiverProcesses(t *testing.T) {
	d := fakeReceiverDaemon(t)
	m := d.guestReceivers()
	defer m.stopAll()
	dir := t.TempDir()
	listens := filepath.Join(dir, "listens.sh")
	// $4 is the name, $8 the address: guest receive --name N --ram B --listen A ...
	os.WriteFile(listens, []byte("#!/bin/sh\necho \"guest $4: waiting for a migration on $8 (quic and tcp)\"\nexec sleep 600\n"), 0o755)
	m.exe = listens
	ctx := context.Background()
	r, err := m.receive(ctx, GuestReceiveRequest{Name: "g1", RAMBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != "waiting" || r.Node != "n1" || !strings.HasPrefix(r.Addr, "127.0.0.1:") || r.Pid == 0 ||
		r.ControlSock != filepath.Join(d.dir.Path, "guests", "g1.sock") {
		t.Fatalf("receiver: %+v", r)
	}
	again, err := m.receive(ctx, GuestReceiveRequest{Name: "g1", RAMBytes: 1 << 20})
	if err != nil || !again.Reused || again.Pid != r.Pid {
		t.Fatalf("asked again: %+v, %v", again, err)
	}
	if l := m.list(); len(l) != 1 || l[0].Pid != r.Pid {
		t.Fatalf("list: %+v", l)
	}
	m.mu.Lock()
	c := m.byName["g1"]
	m.mu.Unlock()
	m.stopAll()
	select {
	case <-c.done:
	default:
		t.Fatal("stopAll returned with the child alive")
	}
	if _, err := m.receive(ctx, GuestReceiveRequest{Name: "g2", RAMBytes: 1 << 20}); err == nil || !strings.Contains(err.Error(), "stopping") {
		t.Fatalf("after stopAll: %v", err)
	}

	m2 := fakeReceiverDaemon(t).guestReceivers()
	defer m2.stopAll()
	fails := filepath.Join(dir, "fails.sh")
	os.WriteFile(fails, []byte("#!/bin/sh\necho 'Error: keys/node.pem: no such file' >&2\nexit 1\n"), 0o755)
	m2.exe = fails
	_, err = m2.receive(ctx, GuestReceiveRequest{Name: "g1", RAMBytes: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), "exited before listening") || !strings.Contains(err.Error(), "keys/node.pem: no such file") {
		t.Fatalf("failing child: %v", err)
	}
	if l := m2.list(); len(l) != 0 {
		t.Fatalf("a failed child is listed: %+v", l)
	}
}

// TestPeerGuestReceiveRefusals: the peer endpoint starts nothing for a
// caller without a cluster certificate, for a request naming another
// node, or for a malformed body.
func TestPeerGuestReceiveRefusals(t *testing.T) {
	d := fakeReceiverDaemon(t)
	d.guestReceivers().exe = "/nonexistent/must-not-run"
	call := func(body string, withCert bool) (int, string) {
		r := httptest.NewRequest("POST", "/peer/v1/guests/receive", strings.NewReader(body))
		if withCert {
			cert := &x509.Certificate{Subject: pkix.Name{CommonName: "n2"}}
			r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}}}
		}
		w := httptest.NewRecorder()
		d.peerGuestReceiveHandler(w, r)
		return w.Code, w.Body.String()
	}
	for _, c := range []struct {
		body     string
		withCert bool
		code     int
		says     string
	}{
		{`{"name":"g1","ram_bytes":4096}`, false, 401, "certificate"},
		{`{"name":"g1","ram_bytes":4096,"node":"n3"}`, true, 400, "not n3"},
		{`{"name":"g1","ram_bytes":4096,"bogus":1}`, true, 400, "bogus"},
		{`{"name":"../g1","ram_bytes":4096}`, true, 400, "guest name"},
		{`{"name":"g1","ram_bytes":4096`, true, 400, "bad request"},
	} {
		code, body := call(c.body, c.withCert)
		if code != c.code || !strings.Contains(body, c.says) {
			t.Errorf("%s (cert %v): %d %s", c.body, c.withCert, code, body)
		}
	}
	if l := d.guestReceivers().list(); len(l) != 0 {
		t.Fatalf("children: %+v", l)
	}
}
