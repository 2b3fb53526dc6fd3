package netfence

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testNet is two network namespaces joined by a veth pair:
// a (10.213.<n>.1, fd00:213:<n>::1) and b (.2, ::2). The filter goes on b's
// end; a is the node being fenced.
type testNet struct {
	a, b       string
	aIP4, bIP4 netip.Addr
	aIP6, bIP6 netip.Addr
	aDev, bDev string
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netfence tests need root (network namespaces, BPF); skipping")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("netfence tests need ip (iproute2): %v", err)
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newTestNet(t *testing.T, n int) *testNet {
	t.Helper()
	id := fmt.Sprintf("%d-%d", os.Getpid()%100000, n)
	tn := &testNet{
		a: "pdk-nfa-" + id, b: "pdk-nfb-" + id,
		aDev: "nfa" + id, bDev: "nfb" + id,
		aIP4: netip.MustParseAddr(fmt.Sprintf("10.213.%d.1", n)), bIP4: netip.MustParseAddr(fmt.Sprintf("10.213.%d.2", n)),
		aIP6: netip.MustParseAddr(fmt.Sprintf("fd00:213:%x::1", n)), bIP6: netip.MustParseAddr(fmt.Sprintf("fd00:213:%x::2", n)),
	}
	run(t, "ip", "netns", "add", tn.a)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", tn.a).Run() })
	run(t, "ip", "netns", "add", tn.b)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", tn.b).Run() })
	// No duplicate address detection: until it ends the link-local
	// addresses are tentative and neighbour discovery (so the first IPv6
	// packets) stalls.
	for _, ns := range []string{tn.a, tn.b} {
		run(t, "ip", "netns", "exec", ns, "sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad && echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad")
	}
	run(t, "ip", "link", "add", tn.aDev, "netns", tn.a, "type", "veth", "peer", "name", tn.bDev, "netns", tn.b)
	for _, side := range []struct{ ns, dev, ip4, ip6 string }{
		{tn.a, tn.aDev, tn.aIP4.String(), tn.aIP6.String()},
		{tn.b, tn.bDev, tn.bIP4.String(), tn.bIP6.String()},
	} {
		run(t, "ip", "-n", side.ns, "addr", "add", side.ip4+"/24", "dev", side.dev)
		run(t, "ip", "-n", side.ns, "addr", "add", side.ip6+"/64", "dev", side.dev, "nodad")
		run(t, "ip", "-n", side.ns, "link", "set", side.dev, "up")
		run(t, "ip", "-n", side.ns, "link", "set", "lo", "up")
	}
	// Wait (bounded) until both families answer: the veth carrier comes up
	// asynchronously.
	for i := 0; ; i++ {
		if pingWait(t, tn.a, tn.bIP4, dropWait) && pingWait(t, tn.a, tn.bIP6, dropWait) {
			break
		}
		if i == 10 {
			t.Fatalf("no connectivity between %s and %s", tn.a, tn.b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return tn
}

// inNetns runs fn on a locked OS thread that has joined netns ns. Sockets
// and links fn creates stay in ns after it returns.
func inNetns(t *testing.T, ns string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	var setupErr error
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			setupErr = err
			runtime.UnlockOSThread()
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			setupErr = err
			runtime.UnlockOSThread()
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			setupErr = err
			runtime.UnlockOSThread()
			return
		}
		fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime then ends it with the
			// goroutine instead of reusing a thread in the wrong netns.
			return
		}
		runtime.UnlockOSThread()
	}()
	<-done
	if setupErr != nil {
		t.Fatalf("joining netns %s: %v", ns, setupErr)
	}
}

// ping reports whether one ICMP echo from ns to addr is answered. It
// speaks ICMP itself on a raw socket (iputils-ping is not always there).
func ping(t *testing.T, ns string, addr netip.Addr) bool { return pingWait(t, ns, addr, passWait) }

func pingWait(t *testing.T, ns string, addr netip.Addr, wait time.Duration) bool {
	network, reqType, replyType := "ip4:icmp", byte(8), byte(0)
	if addr.Is6() {
		network, reqType, replyType = "ip6:ipv6-icmp", 128, 129
	}
	var c net.PacketConn
	inNetns(t, ns, func() {
		var err error
		c, err = net.ListenPacket(network, "")
		if err != nil {
			t.Errorf("raw socket: %v", err)
		}
	})
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	pingSeq++
	id, seq := uint16(os.Getpid()), pingSeq
	msg := []byte{reqType, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 'p', 'd', 'k'}
	if addr.Is4() {
		// ICMPv4 checksum; the kernel fills in ICMPv6's.
		var sum uint32
		for i := 0; i+1 < len(msg); i += 2 {
			sum += uint32(msg[i])<<8 | uint32(msg[i+1])
		}
		sum += uint32(msg[len(msg)-1]) << 8
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		msg[2], msg[3] = byte(^sum>>8), byte(^sum)
	}
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: addr.AsSlice()}); err != nil {
		return false
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return false
		}
		if n >= 8 && buf[0] == replyType && buf[4] == msg[4] && buf[5] == msg[5] && buf[6] == msg[6] && buf[7] == msg[7] {
			return true
		}
	}
}

var pingSeq uint16

// How long a probe waits for an answer when it expects one (passWait) and
// when it expects the filter to drop it (dropWait).
const (
	passWait = 2 * time.Second
	dropWait = 300 * time.Millisecond
)

// udpEcho starts a UDP echo server in ns on addr and returns its address.
func udpEcho(t *testing.T, ns string, addr netip.Addr) *net.UDPAddr {
	var pc net.PacketConn
	inNetns(t, ns, func() {
		var err error
		pc, err = net.ListenPacket("udp", net.JoinHostPort(addr.String(), "0"))
		if err != nil {
			t.Errorf("listen udp: %v", err)
		}
	})
	if pc == nil {
		t.FailNow()
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr)
}

// udpRoundTrip sends one datagram from ns and waits for the echo.
func udpRoundTrip(t *testing.T, ns string, to *net.UDPAddr, wait time.Duration) bool {
	var c net.Conn
	inNetns(t, ns, func() {
		var err error
		c, err = net.Dial("udp", to.String())
		if err != nil {
			t.Errorf("dial udp: %v", err)
		}
	})
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	if _, err := c.Write([]byte("paddock")); err != nil {
		return false
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	return err == nil && string(buf[:n]) == "paddock"
}

// tcpListen starts a TCP server in ns that accepts and closes.
func tcpListen(t *testing.T, ns string, addr netip.Addr) string {
	var l net.Listener
	inNetns(t, ns, func() {
		var err error
		l, err = net.Listen("tcp", net.JoinHostPort(addr.String(), "0"))
		if err != nil {
			t.Errorf("listen tcp: %v", err)
		}
	})
	if l == nil {
		t.FailNow()
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l.Addr().String()
}

func tcpConnect(t *testing.T, ns, addr string, wait time.Duration) bool {
	ok := false
	inNetns(t, ns, func() {
		c, err := net.DialTimeout("tcp", addr, wait)
		if err == nil {
			c.Close()
			ok = true
		}
	})
	return ok
}

func TestFilterInNetns(t *testing.T) {
	needRoot(t)
	for i, mode := range []Mode{ModeXDP, ModeTCX} {
		t.Run(string(mode), func(t *testing.T) {
			tn := newTestNet(t, i+1)
			var f *Filter
			var err error
			inNetns(t, tn.b, func() { f, err = Attach(Options{Interface: tn.bDev, Mode: mode}) })
			if err != nil {
				t.Fatalf("attach: %v", err)
			}
			defer f.Close()

			udp4 := udpEcho(t, tn.b, tn.bIP4)
			udp6 := udpEcho(t, tn.b, tn.bIP6)
			tcp4 := tcpListen(t, tn.b, tn.bIP4)
			tcp6 := tcpListen(t, tn.b, tn.bIP6)

			check := func(when string, want bool) {
				t.Helper()
				// A pass on a veth pair is immediate, so waiting long when a
				// pass is expected costs nothing, and a short wait is enough
				// to see a drop.
				wait := dropWait
				if want {
					wait = passWait
				}
				if got := pingWait(t, tn.a, tn.bIP4, wait); got != want {
					t.Errorf("%s: ping %s: %v, want %v", when, tn.bIP4, got, want)
				}
				if got := pingWait(t, tn.a, tn.bIP6, wait); got != want {
					t.Errorf("%s: ping %s: %v, want %v", when, tn.bIP6, got, want)
				}
				if got := udpRoundTrip(t, tn.a, udp4, wait); got != want {
					t.Errorf("%s: udp4: %v, want %v", when, got, want)
				}
				if got := udpRoundTrip(t, tn.a, udp6, wait); got != want {
					t.Errorf("%s: udp6: %v, want %v", when, got, want)
				}
				if got := tcpConnect(t, tn.a, tcp4, wait); got != want {
					t.Errorf("%s: tcp4: %v, want %v", when, got, want)
				}
				if got := tcpConnect(t, tn.a, tcp6, wait); got != want {
					t.Errorf("%s: tcp6: %v, want %v", when, got, want)
				}
			}

			check("before block", true)

			// Blocking another address changes nothing for a.
			other := netip.MustParseAddr("192.0.2.7")
			if err := f.Block(other); err != nil {
				t.Fatal(err)
			}
			check("other address blocked", true)

			for _, a := range []netip.Addr{tn.aIP4, tn.aIP6, tn.aIP4} { // twice: idempotent
				if err := f.Block(a); err != nil {
					t.Fatal(err)
				}
			}
			check("blocked", false)
			list, err := f.List()
			if err != nil {
				t.Fatal(err)
			}
			var dropped4, dropped6 uint64
			for _, b := range list {
				switch b.Addr {
				case tn.aIP4:
					dropped4 = b.Dropped
				case tn.aIP6:
					dropped6 = b.Dropped
				case other:
					if b.Dropped != 0 {
						t.Errorf("%s dropped %d packets; nothing came from it", other, b.Dropped)
					}
				}
			}
			if len(list) != 3 || dropped4 == 0 || dropped6 == 0 {
				t.Fatalf("list %+v; want 3 addresses, a's v4 and v6 with drops", list)
			}

			if err := f.Unblock(tn.aIP4); err != nil {
				t.Fatal(err)
			}
			if err := f.Unblock(tn.aIP6); err != nil {
				t.Fatal(err)
			}
			if err := f.Unblock(tn.aIP6); err != nil { // not blocked: no error
				t.Fatal(err)
			}
			check("unblocked", true)
			total, err := f.DroppedTotal()
			if err != nil || total < dropped4+dropped6 {
				t.Fatalf("dropped total %d (%v); want >= %d after unblock", total, err, dropped4+dropped6)
			}

			// Block again, then Close: closing removes the filter.
			if err := f.Block(tn.aIP4); err != nil {
				t.Fatal(err)
			}
			if pingWait(t, tn.a, tn.bIP4, dropWait) {
				t.Error("ping passed while blocked again")
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if !ping(t, tn.a, tn.bIP4) {
				t.Error("ping blocked after Close")
			}
			if err := f.Block(tn.aIP4); err != ErrClosed {
				t.Errorf("Block after Close: %v", err)
			}
		})
	}
}

func TestAttachErrors(t *testing.T) {
	if _, err := Attach(Options{Interface: "lo", Mode: "ebtables"}); err == nil {
		t.Error("unknown mode accepted")
	}
	if _, err := Attach(Options{Interface: "no-such-if0"}); err == nil {
		t.Error("missing interface accepted")
	}
	if _, err := key(netip.Addr{}); err == nil {
		t.Error("zero address accepted")
	}
}

func TestInstructionsAssemble(t *testing.T) {
	// Without root, at least check that both programs encode.
	for _, m := range []Mode{ModeXDP, ModeTCX} {
		var buf bytes.Buffer
		var bo binary.ByteOrder = binary.BigEndian
		if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 {
			bo = binary.LittleEndian
		}
		if err := Instructions(m).Marshal(&buf, bo); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		if buf.Len() == 0 {
			t.Fatalf("%s: empty program", m)
		}
	}
}
