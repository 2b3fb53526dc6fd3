package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/paddock-io/paddock/internal/batchconn"
)

// tcpBatchBytes is the batch below each TLS connection (internal/batchconn):
// crypto/tls writes every record of at most 16 KiB with its own system
// call, so a 1 MiB raw frame took 64 writes; batched it takes 4, and reads
// come through a buffer of the same size.
const tcpBatchBytes = 256 << 10

// tcpBatching switches the batching off for benchmarks that compare it
// with plain TLS (BenchmarkPipelineTCP); always on otherwise.
var tcpBatching = true

func wrapTCP(nc net.Conn) net.Conn {
	if !tcpBatching {
		return nc
	}
	return batchconn.Wrap(nc, tcpBatchBytes)
}

// rawTCP returns the kernel socket below a stream's TLS connection.
func rawTCP(t *tls.Conn) *net.TCPConn {
	nc := t.NetConn()
	if b, ok := nc.(*batchconn.Conn); ok {
		nc = b.Conn
	}
	tc, _ := nc.(*net.TCPConn)
	return tc
}

// TCP: one TLS connection per stream, the control stream first, grouped on
// the listener by the session id in their preambles. Each connection has
// its own kernel socket and TLS state, so page streams encrypt on every
// core: ~1.4 GB/s here against QUIC's ~0.2.

type tcpConn struct {
	control *tlsStream
	pages   []Stream
	all     []*tls.Conn
	peer    *x509.Certificate
}

func (c *tcpConn) Control() Stream                    { return c.control }
func (c *tcpConn) Pages() []Stream                    { return c.pages }
func (c *tcpConn) Transport() string                  { return TransportTCP }
func (c *tcpConn) PeerCertificate() *x509.Certificate { return c.peer }

func (c *tcpConn) Close() error {
	var first error
	for _, t := range c.all {
		if err := t.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Abort resets every connection (SO_LINGER 0): the peer sees ECONNRESET
// at once instead of waiting for buffered data.
func (c *tcpConn) Abort(string) error {
	for _, t := range c.all {
		if tc := rawTCP(t); tc != nil {
			tc.SetLinger(0)
		}
		t.NetConn().Close()
	}
	return nil
}

// tlsStream is a Stream over one TLS connection, limited to one direction
// for page streams.
type tlsStream struct {
	c         *tls.Conn
	batch     batchconn.Batcher // below c, or nil
	readable  bool
	writeable bool
}

func newTLSStream(t *tls.Conn, readable, writeable bool) *tlsStream {
	return &tlsStream{c: t, batch: batchconn.Of(t), readable: readable, writeable: writeable}
}

func (s *tlsStream) Read(p []byte) (int, error) {
	if !s.readable {
		return 0, errWrongDirection
	}
	return s.c.Read(p)
}

func (s *tlsStream) Write(p []byte) (int, error) {
	if !s.writeable {
		return 0, errWrongDirection
	}
	if s.batch == nil {
		return s.c.Write(p)
	}
	// The records of one Write leave in as few system calls as the
	// batch allows.
	s.batch.Begin()
	n, err := s.c.Write(p)
	if eerr := s.batch.End(); err == nil {
		err = eerr
	}
	return n, err
}

func (s *tlsStream) CloseWrite() error {
	if !s.writeable {
		return nil
	}
	return s.c.CloseWrite()
}

func (s *tlsStream) SetDeadline(t time.Time) error { return s.c.SetDeadline(t) }

func dialTCP(ctx context.Context, addr, serverName string, id TLSIdentity, pageStreams int) (Conn, error) {
	var session [16]byte
	if _, err := rand.Read(session[:]); err != nil {
		return nil, err
	}
	nd := &net.Dialer{KeepAlive: 5 * time.Second}
	cfg := id.clientConfig(serverName)
	c := &tcpConn{}
	for i := -1; i < pageStreams; i++ {
		nc, err := nd.DialContext(ctx, "tcp", addr)
		if err != nil {
			c.Abort("")
			return nil, fmt.Errorf("migrate: tcp dial %s: %w", addr, err)
		}
		t := tls.Client(wrapTCP(nc), cfg)
		c.all = append(c.all, t)
		if err := t.HandshakeContext(ctx); err != nil {
			c.Abort("")
			return nil, fmt.Errorf("migrate: tcp dial %s: %w", addr, err)
		}
		p := preamble{kind: streamControl, streams: uint16(pageStreams), session: session}
		if i >= 0 {
			p.kind, p.index = streamPage, uint16(i)
		}
		if deadline, ok := ctx.Deadline(); ok {
			t.SetWriteDeadline(deadline)
		}
		if _, err := t.Write(p.marshal()); err != nil {
			c.Abort("")
			return nil, fmt.Errorf("migrate: stream preamble: %w", err)
		}
		t.SetWriteDeadline(time.Time{})
		if i < 0 {
			c.control = newTLSStream(t, true, true)
			c.peer = t.ConnectionState().PeerCertificates[0]
		} else {
			c.pages = append(c.pages, newTLSStream(t, false, true))
		}
	}
	return c, nil
}

type tcpListener struct {
	ln    net.Listener
	id    TLSIdentity
	ready chan Conn
	done  chan struct{}
	once  sync.Once
	slots chan struct{}

	mu       sync.Mutex
	sessions map[[16]byte]*tcpSession
}

// tcpSession gathers the connections of one migration.
type tcpSession struct {
	conn    *tcpConn
	arrived int
	timer   *time.Timer
}

// maxPendingSessions bounds the sessions waiting for their streams.
const maxPendingSessions = 16

func listenTCP(addr string, id TLSIdentity) (Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("migrate: listen tcp %s: %w", addr, err)
	}
	l := &tcpListener{
		ln: ln, id: id,
		ready:    make(chan Conn, acceptQueueLen),
		done:     make(chan struct{}),
		slots:    make(chan struct{}, maxPendingConns),
		sessions: make(map[[16]byte]*tcpSession),
	}
	go l.acceptLoop()
	return l, nil
}

func (l *tcpListener) Addr() net.Addr { return l.ln.Addr() }

func (l *tcpListener) acceptLoop() {
	cfg := l.id.serverConfig()
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			// Out of descriptors and the like: wait, do not spin.
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case l.slots <- struct{}{}:
			go func() {
				defer func() { <-l.slots }()
				l.setup(tls.Server(wrapTCP(nc), cfg))
			}()
		default:
			nc.Close()
		}
	}
}

// setup runs the TLS handshake and reads the preamble of one connection,
// then files it under its session.
func (l *tcpListener) setup(t *tls.Conn) {
	t.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := t.Handshake(); err != nil {
		t.Close()
		return
	}
	p, err := readPreamble(t)
	if err != nil {
		t.Close()
		return
	}
	t.SetDeadline(time.Time{})
	if c := l.file(t, p); c != nil {
		select {
		case l.ready <- c:
		case <-l.done:
			c.Abort("")
		default:
			c.Abort("")
		}
	}
}

// file adds t to its session and returns the connection once complete.
func (l *tcpListener) file(t *tls.Conn, p preamble) *tcpConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	peer := t.ConnectionState().PeerCertificates[0]
	s := l.sessions[p.session]
	if s == nil {
		if len(l.sessions) >= maxPendingSessions {
			t.Close()
			return nil
		}
		s = &tcpSession{conn: &tcpConn{pages: make([]Stream, p.streams), peer: peer}}
		l.sessions[p.session] = s
		id := p.session
		s.timer = time.AfterFunc(handshakeTimeout, func() { l.expire(id, s) })
	}
	c := s.conn
	// Every stream of a session must come from the same peer, agree on
	// the stream count, and fill an empty place.
	bad := !bytes.Equal(peer.Raw, c.peer.Raw) || int(p.streams) != len(c.pages) ||
		(p.kind == streamControl && c.control != nil) ||
		(p.kind == streamPage && c.pages[p.index] != nil)
	if bad {
		t.Close()
		return nil
	}
	c.all = append(c.all, t)
	if p.kind == streamControl {
		c.control = newTLSStream(t, true, true)
	} else {
		c.pages[p.index] = newTLSStream(t, true, false)
	}
	s.arrived++
	if s.arrived < len(c.pages)+1 {
		return nil
	}
	s.timer.Stop()
	delete(l.sessions, p.session)
	return c
}

func (l *tcpListener) expire(id [16]byte, s *tcpSession) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions[id] == s {
		delete(l.sessions, id)
		s.conn.Abort("")
	}
}

func (l *tcpListener) Accept(ctx context.Context) (Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, ErrListenerClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *tcpListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.ln.Close()
		l.mu.Lock()
		for id, s := range l.sessions {
			s.timer.Stop()
			s.conn.Abort("")
			delete(l.sessions, id)
		}
		l.mu.Unlock()
		for {
			select {
			case c := <-l.ready:
				c.Abort("")
			default:
				return
			}
		}
	})
	return nil
}
