package batchconn

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/paddock-io/paddock/internal/testcert"
)

// countingConn counts the writes that reach the connection.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// A TLS connection over a batching one: the handshake passes through
// (no batch is open), a large write inside a batch reaches the socket in
// one write instead of one per TLS record, and the bytes arrive intact.
func TestTLSWriteInOneBatch(t *testing.T) {
	cert, pool := testcert.SelfSigned(t, "t")
	a, b := net.Pipe()
	counted := &countingConn{Conn: a}
	const payloadBytes = 256 << 10
	client := tls.Client(Wrap(counted, 2*payloadBytes), &tls.Config{RootCAs: pool, ServerName: "t"})
	server := tls.Server(Wrap(b, 0), &tls.Config{Certificates: []tls.Certificate{cert}})
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, payloadBytes)
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Error(err)
		}
		got <- buf
	}()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, payloadBytes)
	rand.Read(want)
	batch := Of(client)
	if batch == nil {
		t.Fatal("Of found no batching connection below the TLS one")
	}
	before := counted.writes.Load()
	batch.Begin()
	if _, err := client.Write(want); err != nil {
		t.Fatal(err)
	}
	if n := counted.writes.Load() - before; n != 0 {
		t.Fatalf("%d writes reached the socket inside the batch, want 0", n)
	}
	if err := batch.End(); err != nil {
		t.Fatal(err)
	}
	if n := counted.writes.Load() - before; n != 1 {
		t.Fatalf("%d writes for a 256 KiB TLS write in a batch, want 1 (16 without batching)", n)
	}
	if !bytes.Equal(<-got, want) {
		t.Fatal("data differs")
	}
}

// A batch larger than the buffer still arrives whole and in order.
func TestBatchLargerThanBuffer(t *testing.T) {
	a, b := net.Pipe()
	c := Wrap(a, 1024)
	want := make([]byte, 10000)
	rand.Read(want)
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, len(want))
		io.ReadFull(b, buf)
		got <- buf
	}()
	c.Begin()
	for off := 0; off < len(want); off += 700 {
		if _, err := c.Write(want[off:min(off+700, len(want))]); err != nil {
			t.Fatal(err)
		}
	}
	c.Write(want[:0])
	if err := c.End(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(<-got, want) {
		t.Fatal("data differs")
	}
}

func TestOfWithoutBatching(t *testing.T) {
	a, _ := net.Pipe()
	if Of(a) != nil || Of(tls.Client(a, &tls.Config{})) != nil {
		t.Fatal("Of found a batching connection where there is none")
	}
}
