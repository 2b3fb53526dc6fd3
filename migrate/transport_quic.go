package migrate

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// QUIC: one connection, a bidirectional control stream and one
// unidirectional stream per page stream. quic-go raises the UDP socket
// buffers to ~7 MiB itself (SO_RCVBUFFORCE when it runs as root, else
// within net.core.rmem_max) and uses GSO where the kernel has it
// (QUICGSO reports it). One quic-go connection is bound by its one
// connection goroutine: ~0.2 GB/s here, whatever the stream count.

// quicConfig sizes flow control for bulk transfer over a fast link: a
// window must cover bandwidth x RTT, 1.25 GB/s x 10 ms = 12.5 MB.
func quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           handshakeTimeout,
		MaxIdleTimeout:                 30 * time.Second,
		KeepAlivePeriod:                5 * time.Second,
		InitialStreamReceiveWindow:     2 << 20,
		MaxStreamReceiveWindow:         32 << 20,
		InitialConnectionReceiveWindow: 8 << 20,
		MaxConnectionReceiveWindow:     128 << 20,
		MaxIncomingStreams:             1, // the control stream
		MaxIncomingUniStreams:          MaxPageStreams,
	}
}

// Application error codes in CONNECTION_CLOSE.
const (
	quicCodeClosed  = 0
	quicCodeAborted = 1
)

type quicConn struct {
	qc      *quic.Conn
	tr      *quic.Transport // owned by a dialed conn; nil on the listener side
	control Stream
	pages   []Stream
}

func (c *quicConn) Control() Stream   { return c.control }
func (c *quicConn) Pages() []Stream   { return c.pages }
func (c *quicConn) Transport() string { return TransportQUIC }

func (c *quicConn) PeerCertificate() *x509.Certificate {
	certs := c.qc.ConnectionState().TLS.PeerCertificates
	if len(certs) == 0 {
		return nil
	}
	return certs[0]
}

// QUICGSO reports whether a QUIC connection sends with generic segmentation
// offload; false for other transports.
func QUICGSO(c Conn) bool {
	qc, ok := c.(*quicConn)
	return ok && qc.qc.ConnectionState().GSO
}

func (c *quicConn) Close() error {
	err := c.qc.CloseWithError(quicCodeClosed, "")
	if c.tr != nil {
		c.tr.Close()
		c.tr.Conn.Close()
	}
	return err
}

func (c *quicConn) Abort(reason string) error {
	if len(reason) > MaxErrorMessageBytes {
		reason = reason[:MaxErrorMessageBytes]
	}
	err := c.qc.CloseWithError(quicCodeAborted, reason)
	if c.tr != nil {
		c.tr.Close()
		c.tr.Conn.Close()
	}
	return err
}

// quicStream adapts the three quic-go stream types to Stream.
type quicStream struct {
	bidi *quic.Stream
	send *quic.SendStream
	recv *quic.ReceiveStream
}

var errWrongDirection = errors.New("migrate: page streams run from source to destination only")

func (s quicStream) Read(p []byte) (int, error) {
	switch {
	case s.bidi != nil:
		return s.bidi.Read(p)
	case s.recv != nil:
		return s.recv.Read(p)
	}
	return 0, errWrongDirection
}

func (s quicStream) Write(p []byte) (int, error) {
	switch {
	case s.bidi != nil:
		return s.bidi.Write(p)
	case s.send != nil:
		return s.send.Write(p)
	}
	return 0, errWrongDirection
}

func (s quicStream) CloseWrite() error {
	switch {
	case s.bidi != nil:
		return s.bidi.Close()
	case s.send != nil:
		return s.send.Close()
	}
	return nil
}

func (s quicStream) SetDeadline(t time.Time) error {
	switch {
	case s.bidi != nil:
		return s.bidi.SetDeadline(t)
	case s.send != nil:
		return s.send.SetWriteDeadline(t)
	}
	return s.recv.SetReadDeadline(t)
}

func dialQUIC(ctx context.Context, addr, serverName string, id TLSIdentity, pageStreams int) (Conn, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("migrate: resolve %s: %w", addr, err)
	}
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, fmt.Errorf("migrate: udp socket: %w", err)
	}
	tr := &quic.Transport{Conn: udp}
	qc, err := tr.Dial(ctx, raddr, id.clientConfig(serverName), quicConfig())
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, fmt.Errorf("migrate: quic dial %s: %w", addr, err)
	}
	c := &quicConn{qc: qc, tr: tr}
	if err := c.openStreams(ctx, pageStreams); err != nil {
		c.Abort("setup failed")
		return nil, err
	}
	return c, nil
}

// openStreams opens the streams and writes their preambles: a QUIC stream
// reaches the peer only with its first byte.
func (c *quicConn) openStreams(ctx context.Context, pageStreams int) error {
	ctl, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("migrate: open control stream: %w", err)
	}
	if _, err := ctl.Write(preamble{kind: streamControl, streams: uint16(pageStreams)}.marshal()); err != nil {
		return fmt.Errorf("migrate: control stream preamble: %w", err)
	}
	c.control = quicStream{bidi: ctl}
	for i := 0; i < pageStreams; i++ {
		s, err := c.qc.OpenUniStreamSync(ctx)
		if err != nil {
			return fmt.Errorf("migrate: open page stream %d: %w", i, err)
		}
		if _, err := s.Write(preamble{kind: streamPage, index: uint16(i), streams: uint16(pageStreams)}.marshal()); err != nil {
			return fmt.Errorf("migrate: page stream %d preamble: %w", i, err)
		}
		c.pages = append(c.pages, quicStream{send: s})
	}
	return nil
}

type quicListener struct {
	udp   *net.UDPConn
	tr    *quic.Transport
	ql    *quic.Listener
	ready chan Conn
	done  chan struct{}
	once  sync.Once
	slots chan struct{} // one token per connection being set up
}

func listenQUIC(addr string, id TLSIdentity) (Listener, error) {
	laddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("migrate: resolve %s: %w", addr, err)
	}
	udp, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("migrate: listen udp %s: %w", addr, err)
	}
	tr := &quic.Transport{Conn: udp}
	ql, err := tr.Listen(id.serverConfig(), quicConfig())
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, fmt.Errorf("migrate: quic listen %s: %w", addr, err)
	}
	l := &quicListener{
		udp: udp, tr: tr, ql: ql,
		ready: make(chan Conn, acceptQueueLen),
		done:  make(chan struct{}),
		slots: make(chan struct{}, maxPendingConns),
	}
	go l.acceptLoop()
	return l, nil
}

func (l *quicListener) Addr() net.Addr { return l.udp.LocalAddr() }

func (l *quicListener) acceptLoop() {
	for {
		qc, err := l.ql.Accept(context.Background())
		if err != nil {
			return // closed
		}
		select {
		case l.slots <- struct{}{}:
			go func() {
				defer func() { <-l.slots }()
				l.setup(qc)
			}()
		default:
			qc.CloseWithError(quicCodeAborted, "too many connections being set up")
		}
	}
}

// setup waits for the control stream and every page stream of qc, then
// queues the connection for Accept.
func (l *quicListener) setup(qc *quic.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	c, err := acceptQUICStreams(ctx, qc)
	if err != nil {
		qc.CloseWithError(quicCodeAborted, err.Error())
		return
	}
	select {
	case l.ready <- c:
	case <-l.done:
		c.Abort("listener closed")
	default:
		c.Abort("accept queue full")
	}
}

func acceptQUICStreams(ctx context.Context, qc *quic.Conn) (*quicConn, error) {
	deadline, _ := ctx.Deadline()
	ctl, err := qc.AcceptStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: accept control stream: %w", err)
	}
	ctl.SetReadDeadline(deadline)
	pre, err := readPreamble(ctl)
	if err != nil {
		return nil, err
	}
	ctl.SetReadDeadline(time.Time{})
	if pre.kind != streamControl {
		return nil, fmt.Errorf("%w: first stream is not the control stream", ErrCorruptFrame)
	}
	c := &quicConn{qc: qc, control: quicStream{bidi: ctl}, pages: make([]Stream, pre.streams)}
	for range pre.streams {
		s, err := qc.AcceptUniStream(ctx)
		if err != nil {
			return nil, fmt.Errorf("migrate: accept page stream: %w", err)
		}
		s.SetReadDeadline(deadline)
		p, err := readPreamble(s)
		if err != nil {
			return nil, err
		}
		s.SetReadDeadline(time.Time{})
		if p.kind != streamPage || p.streams != pre.streams || c.pages[p.index] != nil {
			return nil, fmt.Errorf("%w: page stream %d of %d repeated or inconsistent", ErrCorruptFrame, p.index, p.streams)
		}
		c.pages[p.index] = quicStream{recv: s}
	}
	return c, nil
}

func (l *quicListener) Accept(ctx context.Context) (Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, ErrListenerClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *quicListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.ql.Close()
		l.tr.Close()
		l.udp.Close()
		for {
			select {
			case c := <-l.ready:
				c.Abort("listener closed")
			default:
				return
			}
		}
	})
	return nil
}
