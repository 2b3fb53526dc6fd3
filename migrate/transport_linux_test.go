//go:build linux

package migrate

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// quic-go raises its UDP socket buffers to ~7 MiB; as root it forces them
// past net.core.rmem_max (4 MiB on this machine). Check it did.
func TestQUICSocketBuffers(t *testing.T) {
	p := newTestPKI(t)
	l, err := Listen(TransportQUIC, "127.0.0.1:0", p.dst)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	raw, err := l.(*quicListener).udp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var rcv, snd int
	raw.Control(func(fd uintptr) {
		rcv, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		snd, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	})
	t.Logf("UDP socket buffers: receive %d, send %d bytes", rcv, snd)
	if os.Geteuid() == 0 && (rcv < 7<<20 || snd < 7<<20) {
		t.Fatalf("running as root, buffers should be forced to 7 MiB: receive %d, send %d", rcv, snd)
	}
}
