package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/migrate"
)

// freeMigrationPort finds a port free on both TCP and UDP of 127.0.0.1
// (a destination guest listens for QUIC and TCP on the same number).
func freeMigrationPort(t *testing.T) string {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			u.Close()
			return addr
		}
	}
	t.Fatal("no free port")
	return ""
}

func requireUffdOrSkip(t *testing.T) {
	if err := migrate.CheckUffdTracker(); err != nil {
		t.Logf("uffd tracking unavailable (%v): the guest falls back to explicit tracking", err)
	}
}

type guestPair struct {
	bin, dir     string
	src, dst     *testbin.Proc
	srcSock      string
	dstSock      string
	dstAddr      string
	tlsArgs      []string
	ramArg, name string
}

func startGuestPair(t *testing.T, mem, rate string, extra ...string) *guestPair {
	bin := testbin.Paddock(t)
	dir := t.TempDir()
	p := &guestPair{bin: bin, dir: dir, name: "g1", ramArg: mem,
		srcSock: filepath.Join(dir, "src.sock"), dstSock: filepath.Join(dir, "dst.sock"),
		dstAddr: freeMigrationPort(t),
		tlsArgs: []string{"--tls-dir", filepath.Join(dir, "tls"), "--insecure-self-signed"}}
	args := append([]string{"guest", "run", "--name", p.name, "--mem", mem, "--dirty-rate", rate,
		"--control-sock", p.srcSock}, append(p.tlsArgs, extra...)...)
	p.src = testbin.Start(t, bin, args...)
	p.src.WaitFor(t, "running", 60*time.Second)
	p.dst = testbin.Start(t, bin, append([]string{"guest", "run", "--name", p.name, "--mem", mem, "--incoming",
		"--listen-migration", p.dstAddr, "--control-sock", p.dstSock}, p.tlsArgs...)...)
	p.dst.WaitFor(t, "waiting for a migration", 30*time.Second)
	return p
}

// state returns a guest process's state, "exited" if it is gone.
func (p *guestPair) state(t *testing.T, proc *testbin.Proc, sock string) string {
	if proc.Exited() {
		return "exited"
	}
	out, err := testbin.RunErr(30*time.Second, p.bin, "guest", "status", p.name, "--control-sock", sock)
	if err != nil {
		if proc.Exited() {
			return "exited"
		}
		t.Fatalf("guest status: %v\n%s", err, out)
	}
	var st guestStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("guest status %q: %v", out, err)
	}
	return st.State
}

func TestMigrateGuestProcesses(t *testing.T) {
	requireUffdOrSkip(t)
	p := startGuestPair(t, "256M", "20M", "--pattern", "hotset", "--content", "halfzero")
	out := testbin.Run(t, 3*time.Minute, p.bin, "migrate", p.name, "--control-sock", p.srcSock,
		"--to", p.dstAddr, "--transport", "tcp", "--streams", "4", "--json")
	var st migrate.Stats
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &st); err != nil {
		t.Fatalf("migrate --json printed %q: %v", out, err)
	}
	if st.Status != migrate.StatusCompleted || st.TotalBytes != 256<<20 || st.Rounds < 1 {
		t.Fatalf("stats: %+v", st)
	}
	p.dst.WaitFor(t, "resumed from a migration", 30*time.Second)
	// The destination verified the RAM digest at pause before resuming;
	// now the workload runs there and must stay consistent.
	var before guestStatus
	json.Unmarshal([]byte(testbin.Run(t, 30*time.Second, p.bin, "guest", "status", p.name, "--control-sock", p.dstSock)), &before)
	testbin.Run(t, time.Minute, p.bin, "guest", "check", p.name, "--control-sock", p.dstSock)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var now guestStatus
		json.Unmarshal([]byte(testbin.Run(t, 30*time.Second, p.bin, "guest", "status", p.name, "--control-sock", p.dstSock)), &now)
		if now.State != "running" {
			t.Fatalf("destination state %q", now.State)
		}
		if now.Writes > before.Writes {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the workload does not continue on the destination")
		}
		time.Sleep(50 * time.Millisecond)
	}
	testbin.Run(t, time.Minute, p.bin, "guest", "check", p.name, "--control-sock", p.dstSock)
	p.src.WaitFor(t, "migrated to", 10*time.Second)
	select {
	case <-time.After(10 * time.Second):
		t.Fatal("the source process did not exit after migrating away")
	case <-waitExited(p.src):
	}
}

func waitExited(p *testbin.Proc) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		for !p.Exited() {
			time.Sleep(10 * time.Millisecond)
		}
		close(ch)
	}()
	return ch
}

// cutProxy forwards TCP connections to target and, once, cuts every open
// connection when the bytes in one direction pass a threshold. Later
// connections (the source's redial) pass untouched.
type cutProxy struct {
	l             net.Listener
	target        string
	forwardCut    int64 // source to destination bytes; 0 = never
	backCut       int64 // destination to source bytes; 0 = never
	forward, back atomic.Int64
	mu            sync.Mutex
	conns         []net.Conn
	cut           atomic.Bool
	cutAtForward  atomic.Int64
}

func newCutProxy(t *testing.T, target string, forwardCut, backCut int64) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l, target: target, forwardCut: forwardCut, backCut: backCut}
	t.Cleanup(func() { l.Close(); p.cutAll() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *cutProxy) cutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) serve(c net.Conn) {
	d, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	counted := !p.cut.Load()
	p.mu.Lock()
	p.conns = append(p.conns, c, d)
	p.mu.Unlock()
	pipe := func(dst, src net.Conn, n *atomic.Int64, limit int64) {
		buf := make([]byte, 32<<10)
		for {
			k, err := src.Read(buf)
			if k > 0 {
				if counted && limit > 0 && !p.cut.Load() && n.Add(int64(k)) >= limit {
					if p.cut.CompareAndSwap(false, true) {
						p.cutAtForward.Store(p.forward.Load())
						p.cutAll()
						return
					}
				}
				if _, err := dst.Write(buf[:k]); err != nil {
					return
				}
			}
			if err != nil {
				if err == io.EOF {
					if tc, ok := dst.(*net.TCPConn); ok {
						tc.CloseWrite()
					}
				}
				return
			}
		}
	}
	go pipe(d, c, &p.forward, p.forwardCut)
	go pipe(c, d, &p.back, p.backCut)
}

// TestMigrateGuestCutAtRandom cuts the TCP connections of a migration at
// random points, counted in bytes either way (the destination's bytes are
// mostly acknowledgements, so those cuts land in every phase, switchover
// included): the guest runs on exactly one side, and when it stayed on the
// source its memory is intact.
func TestMigrateGuestCutAtRandom(t *testing.T) {
	requireUffdOrSkip(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	cuts := []struct{ forward, back int64 }{
		{forward: 1 + rng.Int64N(4<<10)},  // during the handshakes
		{forward: 1 + rng.Int64N(32<<20)}, // during the rounds
		{back: 3<<10 + rng.Int64N(3<<10)}, // on some acknowledgement, maybe the ready or resumed one
		{back: 3<<10 + rng.Int64N(3<<10)},
	}
	for i, c := range cuts {
		t.Run(fmt.Sprintf("cut-%d-fwd%d-back%d", i, c.forward, c.back), func(t *testing.T) {
			p := startGuestPair(t, "32M", "8M")
			proxy := newCutProxy(t, p.dstAddr, c.forward, c.back)
			out, err := testbin.RunErr(2*time.Minute, p.bin, "migrate", p.name, "--control-sock", p.srcSock,
				"--to", proxy.l.Addr().String(), "--server-name", "127.0.0.1", "--transport", "tcp", "--streams", "2",
				"--downtime", "50ms")
			t.Logf("migrate: %v, cut %v (at %d bytes forward); %d bytes back in all\n%s", err, proxy.cut.Load(), proxy.cutAtForward.Load(), proxy.back.Load(), out)
			// Let the destination settle: resumed, or back to waiting.
			time.Sleep(300 * time.Millisecond)
			src := p.state(t, p.src, p.srcSock)
			dst := p.state(t, p.dst, p.dstSock)
			srcRuns := src == "running"
			dstRuns := dst == "running"
			t.Logf("source %s, destination %s", src, dst)
			if srcRuns == dstRuns {
				t.Fatalf("guest runs on source %v and destination %v: want exactly one", srcRuns, dstRuns)
			}
			if err == nil && !dstRuns {
				t.Fatal("migrate succeeded but the destination does not run the guest")
			}
			if srcRuns {
				if err == nil {
					t.Fatal("the guest stayed on the source but migrate reported success")
				}
				testbin.Run(t, time.Minute, p.bin, "guest", "check", p.name, "--control-sock", p.srcSock)
			} else {
				testbin.Run(t, time.Minute, p.bin, "guest", "check", p.name, "--control-sock", p.dstSock)
			}
		})
	}
}

func TestGuestRunNeedsTLS(t *testing.T) {
	bin := testbin.Paddock(t)
	out, err := testbin.RunErr(30*time.Second, bin, "guest", "run", "--name", "x", "--mem", "1M",
		"--control-sock", filepath.Join(t.TempDir(), "s"))
	if err == nil || !strings.Contains(out, "mutual TLS") {
		t.Fatalf("guest run without TLS: %v\n%s", err, out)
	}
}
