package blockrep

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of a peer connection.
const (
	// maxInFlightBytes bounds the payload a replica holds for one
	// connection's requests being applied; the reader waits beyond it.
	maxInFlightBytes = 128 << 20
	// maxInFlightRequests bounds the requests applied at once per
	// connection.
	maxInFlightRequests = 256
	connBufferBytes     = 256 << 10
)

// readFrame reads one whole frame.
func readFrame(r io.Reader, hdr []byte) (*Message, error) {
	if _, err := io.ReadFull(r, hdr[:wireHeaderBytes]); err != nil {
		return nil, err
	}
	n, err := FrameLength(hdr[:wireHeaderBytes])
	if err != nil {
		return nil, err
	}
	frame := make([]byte, n)
	copy(frame, hdr[:wireHeaderBytes])
	if _, err := io.ReadFull(r, frame[wireHeaderBytes:]); err != nil {
		return nil, err
	}
	return Decode(frame)
}

// frameWriter serializes frames onto a connection. Writers that arrive
// while another is writing leave their frame in the buffer, and the last
// one out flushes: small replies share a TLS record under load.
type frameWriter struct {
	mu      sync.Mutex
	bw      *bufio.Writer
	waiting atomic.Int32
	scratch []byte
	err     error
}

func newFrameWriter(w io.Writer) *frameWriter {
	return &frameWriter{bw: bufio.NewWriterSize(w, connBufferBytes)}
}

func (fw *frameWriter) send(m *Message) error {
	fw.waiting.Add(1)
	fw.mu.Lock()
	defer fw.mu.Unlock()
	more := fw.waiting.Add(-1) > 0
	if fw.err != nil {
		return fw.err
	}
	var err error
	if fw.scratch, err = Encode(fw.scratch[:0], m); err != nil {
		return err
	}
	if _, err = fw.bw.Write(fw.scratch); err == nil && !more {
		err = fw.bw.Flush()
	}
	if len(fw.scratch) > 1<<20 {
		fw.scratch = nil // do not pin a large write's buffer
	}
	if err != nil {
		fw.err = err
	}
	return err
}

// Server answers peer messages on connections from other nodes. The node
// authenticates the connection (mutual TLS) and says which node is on the
// other end; a message claiming another sender is refused.
type Server struct {
	// Self is this node (the sender of every answer).
	Self NodeID
	// Lookup finds the local replica of a volume, or nil.
	Lookup func(volume uint64) *Replica
	Logger *slog.Logger
	// Forged counts messages refused because of their sender or shape.
	Forged atomic.Int64
}

// ServeConn serves one connection until it fails or ctx ends.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn, peer NodeID) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	br := bufio.NewReaderSize(conn, connBufferBytes)
	fw := newFrameWriter(conn)
	hdr := make([]byte, wireHeaderBytes)
	slots := make(chan struct{}, maxInFlightRequests)
	var bytesInFlight atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		m, err := readFrame(br, hdr)
		if err != nil {
			if errors.Is(err, ErrBadMessage) {
				s.Forged.Add(1)
				log.Warn("peer sent a malformed message; closing its connection", "peer", peer, "err", err)
			}
			return err
		}
		if m.From != peer {
			s.Forged.Add(1)
			log.Warn("peer message with a forged sender", "peer", peer, "claims", m.From, "type", m.Type)
			fw.send(&Message{Type: MsgFailed, Volume: m.Volume, From: s.Self, Seq: m.Seq, Payload: []byte("sender does not match the connection's certificate")})
			continue
		}
		r := s.Lookup(m.Volume)
		if r == nil {
			fw.send(&Message{Type: MsgFailed, Volume: m.Volume, From: s.Self, Seq: m.Seq, Payload: []byte(fmt.Sprintf("no replica of volume %d on this node", m.Volume))})
			continue
		}
		// Promises and generations are answered in order (they are
		// rare); data requests run in parallel within the limits.
		if m.Type == MsgPrepare || m.Type == MsgStoreGen {
			if err := fw.send(r.Handle(m)); err != nil {
				return err
			}
			continue
		}
		n := int64(len(m.Payload))
		for bytesInFlight.Load() > maxInFlightBytes {
			time.Sleep(100 * time.Microsecond)
		}
		bytesInFlight.Add(n)
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply := r.Handle(m)
			bytesInFlight.Add(-n)
			<-slots
			fw.send(reply)
		}()
	}
}

// ErrLinkDown is returned for requests on a link that failed.
var ErrLinkDown = errors.New("replication link down")

// link is the primary's connection to one peer for one volume: requests
// go out tagged with a sequence number, answers come back in any order.
type link struct {
	peer    NodeID
	conn    net.Conn
	fw      *frameWriter
	mu      sync.Mutex
	pending map[uint64]chan *Message
	seq     uint64
	done    chan struct{}
	err     error
}

func newLink(peer NodeID, conn net.Conn) *link {
	l := &link{peer: peer, conn: conn, fw: newFrameWriter(conn), pending: map[uint64]chan *Message{}, done: make(chan struct{})}
	go l.readLoop()
	return l
}

func (l *link) readLoop() {
	br := bufio.NewReaderSize(l.conn, connBufferBytes)
	hdr := make([]byte, wireHeaderBytes)
	for {
		m, err := readFrame(br, hdr)
		if err == nil && m.From != l.peer {
			err = fmt.Errorf("answer from node %d on the link to node %d", m.From, l.peer)
		}
		if err != nil {
			l.fail(err)
			return
		}
		l.mu.Lock()
		ch := l.pending[m.Seq]
		delete(l.pending, m.Seq)
		l.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
}

func (l *link) fail(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = err
		close(l.done)
	}
	l.mu.Unlock()
	l.conn.Close()
}

func (l *link) close() { l.fail(ErrLinkDown) }

func (l *link) alive() bool {
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// call sends m and waits for its answer, at most timeout. A timeout fails
// the whole link: a peer that does not answer one request is not trusted
// with the next (the primary drops it and resyncs it later).
func (l *link) call(m *Message, timeout time.Duration) (*Message, error) {
	ch := make(chan *Message, 1)
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("%w: %v", ErrLinkDown, l.err)
	}
	l.seq++
	m.Seq = l.seq
	l.pending[m.Seq] = ch
	l.mu.Unlock()
	if err := l.fw.send(m); err != nil {
		l.fail(err)
		return nil, fmt.Errorf("%w: %v", ErrLinkDown, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case a := <-ch:
		return a, nil
	case <-l.done:
		return nil, fmt.Errorf("%w: %v", ErrLinkDown, l.err)
	case <-t.C:
		l.fail(fmt.Errorf("node %d did not answer a %v within %v", l.peer, m.Type, timeout))
		return nil, fmt.Errorf("%w: node %d did not answer within %v", ErrLinkDown, l.peer, timeout)
	}
}
