package migrate

import (
	"context"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Stream is one ordered byte stream of a migration connection.
type Stream interface {
	io.Reader
	io.Writer
	// CloseWrite ends this side's data: the peer reads io.EOF after the
	// last byte. The other direction, if any, stays open.
	CloseWrite() error
	SetDeadline(t time.Time) error
}

// Conn is one migration's connection between the source (which dials) and
// the destination (which accepts): one control stream both ways, and
// PageStreams parallel streams from the source to the destination. On the
// source the page streams are write-only, on the destination read-only.
//
// Frames never cross streams, and the order between streams is undefined:
// the engine must send every version of a page on the same stream
// (StreamOf), and use RoundEnd frames as barriers where it needs them.
type Conn interface {
	Control() Stream
	Pages() []Stream
	// PeerCertificate is the peer's verified leaf certificate: the
	// engine checks it names the node it expects.
	PeerCertificate() *x509.Certificate
	// Transport is "quic" or "tcp".
	Transport() string
	// Close ends the connection. Data not yet received by the peer may
	// be lost: end the migration with an acknowledgement on the control
	// stream first.
	Close() error
	// Abort tears the connection down at once; the peer's reads and
	// writes fail promptly. For a cancel or an error.
	Abort(reason string) error
}

// Listener accepts migration connections whose every stream has arrived.
// Closing a QUIC listener also ends the connections it accepted: they share
// its UDP socket.
type Listener interface {
	Accept(ctx context.Context) (Conn, error)
	Addr() net.Addr
	Close() error
}

// Transport names accepted by Listen and Dial.
const (
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
)

// handshakeTimeout bounds a connection's setup: TLS, then the preamble of
// every stream. A peer that stalls longer is dropped.
const handshakeTimeout = 10 * time.Second

// maxPendingConns bounds the connections being set up at once on a
// listener, so a flood of half-open connections costs bounded memory.
const maxPendingConns = 128

// acceptQueueLen bounds the connections ready but not yet Accepted.
const acceptQueueLen = 8

// ErrListenerClosed is returned by Accept after Close.
var ErrListenerClosed = errors.New("migrate: listener closed")

// Listen listens for migrations on addr over transport ("quic" or "tcp").
func Listen(transport, addr string, id TLSIdentity) (Listener, error) {
	if err := id.check(); err != nil {
		return nil, err
	}
	switch transport {
	case TransportQUIC:
		return listenQUIC(addr, id)
	case TransportTCP:
		return listenTCP(addr, id)
	}
	return nil, fmt.Errorf("migrate: unknown transport %q (quic, tcp)", transport)
}

// Dial connects to a destination listening on addr, verifying that its
// certificate is valid for serverName, and opens pageStreams page streams
// (1..MaxPageStreams).
func Dial(ctx context.Context, transport, addr, serverName string, id TLSIdentity, pageStreams int) (Conn, error) {
	if err := id.check(); err != nil {
		return nil, err
	}
	if pageStreams < 1 || pageStreams > MaxPageStreams {
		return nil, fmt.Errorf("migrate: %d page streams, want 1..%d", pageStreams, MaxPageStreams)
	}
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	switch transport {
	case TransportQUIC:
		return dialQUIC(ctx, addr, serverName, id, pageStreams)
	case TransportTCP:
		return dialTCP(ctx, addr, serverName, id, pageStreams)
	}
	return nil, fmt.Errorf("migrate: unknown transport %q (quic, tcp)", transport)
}

// StreamChunkPages is the unit of page-to-stream pinning: one full frame.
const StreamChunkPages = MaxPagesPerFrame

// StreamOf returns the page stream that carries page, among streams: 1 MiB
// chunks go round-robin, so the bulk pass spreads evenly, and every later
// version of a page follows its earlier ones on the same stream (the
// receiver applies them in order, and each encoder's delta cache sees all
// of its pages).
func StreamOf(page uint64, streams int) int {
	return int(page / StreamChunkPages % uint64(streams))
}

// The preamble opens every stream: it says which stream it is. On TCP,
// where each stream is its own TLS connection, the session id groups them.
//
//	0  magic    "PDKS"
//	4  version  1
//	5  kind     0 control, 1 page
//	6  index    page stream index (0 for control)
//	8  streams  page streams in the session
//	10 session  16 random bytes (zero on QUIC)
const preambleBytes = 26

var preambleMagic = [4]byte{'P', 'D', 'K', 'S'}

const (
	streamControl = 0
	streamPage    = 1
)

type preamble struct {
	kind    uint8
	index   uint16
	streams uint16
	session [16]byte
}

func (p preamble) marshal() []byte {
	b := make([]byte, preambleBytes)
	copy(b, preambleMagic[:])
	b[4] = 1
	b[5] = p.kind
	binary.LittleEndian.PutUint16(b[6:], p.index)
	binary.LittleEndian.PutUint16(b[8:], p.streams)
	copy(b[10:], p.session[:])
	return b
}

func readPreamble(r io.Reader) (preamble, error) {
	var b [preambleBytes]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return preamble{}, fmt.Errorf("migrate: stream preamble: %w", err)
	}
	if [4]byte(b[:4]) != preambleMagic || b[4] != 1 {
		return preamble{}, fmt.Errorf("%w: bad stream preamble %q", ErrCorruptFrame, b[:5])
	}
	p := preamble{
		kind:    b[5],
		index:   binary.LittleEndian.Uint16(b[6:]),
		streams: binary.LittleEndian.Uint16(b[8:]),
	}
	copy(p.session[:], b[10:])
	switch {
	case p.streams == 0 || p.streams > MaxPageStreams:
		return p, fmt.Errorf("%w: preamble with %d page streams", ErrCorruptFrame, p.streams)
	case p.kind == streamControl && p.index != 0:
		return p, fmt.Errorf("%w: control stream with index %d", ErrCorruptFrame, p.index)
	case p.kind == streamPage && p.index >= p.streams:
		return p, fmt.Errorf("%w: page stream %d of %d", ErrCorruptFrame, p.index, p.streams)
	case p.kind > streamPage:
		return p, fmt.Errorf("%w: stream kind %d", ErrCorruptFrame, p.kind)
	}
	return p, nil
}
