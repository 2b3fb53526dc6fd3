// Package batchconn gathers the small writes a TLS connection makes into
// one system call.
//
// Go's crypto/tls writes every record (at most 16 KiB of data) with its
// own write on the connection below, and reads them in small pieces: a
// 256 KiB replication frame costs 16 write and about as many read system
// calls on each side, which on this project's benchmarks made a TLS
// transfer over loopback cost three times the CPU of a plain one. A Conn
// sits below the TLS connection: between Begin and End every write is
// appended to a buffer that goes out in one write at End (or when it
// fills), and reads go through a large buffered reader. Outside a batch
// writes pass straight through, so the handshake, alerts and the
// protocol's own flushes need no care.
package batchconn

import (
	"bufio"
	"net"
	"sync"
)

// DefaultBufferBytes is the size of the write batch and the read buffer.
const DefaultBufferBytes = 256 << 10

// Conn is a net.Conn whose writes can be batched.
type Conn struct {
	net.Conn
	r *bufio.Reader

	mu    sync.Mutex
	depth int // open batches; writes are gathered while > 0
	buf   []byte
	limit int
	err   error // a failed batched write fails every later one
}

// Wrap returns c with batched writes and buffered reads, using
// bufferBytes (DefaultBufferBytes when <= 0) for each.
func Wrap(c net.Conn, bufferBytes int) *Conn {
	if bufferBytes <= 0 {
		bufferBytes = DefaultBufferBytes
	}
	return &Conn{Conn: c, r: bufio.NewReaderSize(c, bufferBytes), limit: bufferBytes}
}

// Read reads through the buffer.
func (c *Conn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Write gathers p while a batch is open and writes it through otherwise.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.depth == 0 {
		return c.Conn.Write(p)
	}
	if len(c.buf)+len(p) > c.limit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > c.limit {
			n, err := c.Conn.Write(p)
			if err != nil {
				c.err = err
			}
			return n, err
		}
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// Begin opens a batch: writes are held until the matching End.
func (c *Conn) Begin() {
	c.mu.Lock()
	c.depth++
	c.mu.Unlock()
}

// End closes a batch and, when it was the last open one, writes what it
// gathered.
func (c *Conn) End() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.depth == 0 {
		panic("batchconn: End without Begin")
	}
	c.depth--
	if c.depth > 0 {
		return c.err
	}
	return c.flushLocked()
}

func (c *Conn) flushLocked() error {
	if c.err != nil {
		return c.err
	}
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	if err != nil {
		c.err = err
	}
	return err
}

// Batcher is what a writer above a TLS connection finds below it (see
// Of) to open and close batches.
type Batcher interface {
	Begin()
	End() error
}

// Of finds the batching connection below c: c itself, or the connection
// a *tls.Conn (anything with NetConn) wraps. Nil when there is none.
func Of(c net.Conn) Batcher {
	for i := 0; i < 4 && c != nil; i++ { // a bounded walk down the layers
		if b, ok := c.(*Conn); ok {
			return b
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}
