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

	"github.com/paddock-io/paddock/internal/batchconn"
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

// framePools hold frame buffers by size class (64 KiB, 1 MiB, 4 MiB,
// 32 MiB + header): a replica receiving writes reuses them instead of
// allocating one per message (the allocations cost GC and page faults).
var framePools = func() []*sync.Pool {
	var ps []*sync.Pool
	for _, n := range frameClasses {
		n := n
		ps = append(ps, &sync.Pool{New: func() any { b := make([]byte, n); return &b }})
	}
	return ps
}()

var frameClasses = []int{64 << 10, 1 << 20, 4 << 20, MaxPayloadBytes + wireHeaderBytes + 4*maxMembers}

func getFrame(n int) *[]byte {
	for i, c := range frameClasses {
		if n <= c {
			return framePools[i].Get().(*[]byte)
		}
	}
	b := make([]byte, n)
	return &b
}

func putFrame(b *[]byte) {
	for i, c := range frameClasses {
		if cap(*b) == c {
			framePools[i].Put(b)
			return
		}
	}
}

// readFrame reads one whole frame.
func readFrame(r io.Reader, hdr []byte) (*Message, error) {
	m, _, err := readFrameInto(r, hdr, false)
	return m, err
}

// readFrameInto reads one frame, into a pooled buffer when pooled (the
// caller returns it with putFrame once done with the message).
func readFrameInto(r io.Reader, hdr []byte, pooled bool) (*Message, *[]byte, error) {
	if _, err := io.ReadFull(r, hdr[:wireHeaderBytes]); err != nil {
		return nil, nil, err
	}
	n, err := FrameLength(hdr[:wireHeaderBytes])
	if err != nil {
		return nil, nil, err
	}
	var buf *[]byte
	var frame []byte
	if pooled {
		buf = getFrame(n)
		frame = (*buf)[:n]
	} else {
		frame = make([]byte, n)
	}
	copy(frame, hdr[:wireHeaderBytes])
	if _, err := io.ReadFull(r, frame[wireHeaderBytes:]); err != nil {
		return nil, buf, err
	}
	m, err := Decode(frame)
	return m, buf, err
}

// frameWriter serializes frames onto a connection. Writers that arrive
// while another is writing leave their frame in the buffer, and the last
// one out flushes: small replies share a TLS record under load.
type frameWriter struct {
	mu      sync.Mutex
	bw      *bufio.Writer
	batch   batchconn.Batcher // below a TLS connection, or nil
	waiting atomic.Int32
	scratch []byte
	err     error
}

func newFrameWriter(w io.Writer) *frameWriter {
	fw := &frameWriter{bw: bufio.NewWriterSize(w, connBufferBytes)}
	if c, ok := w.(net.Conn); ok {
		fw.batch = batchconn.Of(c)
	}
	return fw
}

func (fw *frameWriter) send(m *Message) (err error) {
	fw.waiting.Add(1)
	fw.mu.Lock()
	defer fw.mu.Unlock()
	more := fw.waiting.Add(-1) > 0
	if fw.err != nil {
		return fw.err
	}
	if fw.batch != nil {
		// The TLS records of this frame leave in one write (a large
		// payload bypasses bw and goes to the TLS connection at once).
		fw.batch.Begin()
		defer func() {
			if e := fw.batch.End(); e != nil && err == nil {
				err, fw.err = e, e
			}
		}()
	}
	if fw.scratch, err = EncodeHeader(fw.scratch[:0], m); err != nil {
		return err
	}
	// The payload goes from where it lies: bufio hands a large one
	// straight to the connection.
	if _, err = fw.bw.Write(fw.scratch); err == nil && len(m.Payload) > 0 {
		_, err = fw.bw.Write(m.Payload)
	}
	if err == nil && !more {
		err = fw.bw.Flush()
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
	// Lookup finds what answers for a volume here (a *Replica, or the
	// witness's voter), or nil.
	Lookup func(volume uint64) Handler
	Logger *slog.Logger
	// Forged counts messages refused because of their sender or shape.
	Forged atomic.Int64
}

// Handler answers the peer messages of one volume.
type Handler interface {
	Handle(m *Message) *Message
}

// ServeConn serves one connection until it fails or ctx ends. peer is the
// node the connection's certificate names; 0 means any node of the
// cluster (the witness, which does not know the nodes' names, trusts the
// sender a cluster certificate claims).
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
		m, buf, err := readFrameInto(br, hdr, true)
		release := func() {
			if buf != nil {
				putFrame(buf)
			}
		}
		if err != nil {
			release()
			if errors.Is(err, ErrBadMessage) {
				s.Forged.Add(1)
				log.Warn("peer sent a malformed message; closing its connection", "peer", peer, "err", err)
			}
			return err
		}
		if peer != 0 && m.From != peer {
			s.Forged.Add(1)
			log.Warn("peer message with a forged sender", "peer", peer, "claims", m.From, "type", m.Type)
			fw.send(&Message{Type: MsgFailed, Volume: m.Volume, From: s.Self, Seq: m.Seq, Payload: []byte("sender does not match the connection's certificate")})
			release()
			continue
		}
		r := s.Lookup(m.Volume)
		if r == nil {
			fw.send(&Message{Type: MsgFailed, Volume: m.Volume, From: s.Self, Seq: m.Seq, Payload: []byte(fmt.Sprintf("no replica of volume %d on this node", m.Volume))})
			release()
			continue
		}
		// Promises and generations are answered in order (they are
		// rare); data requests run in parallel within the limits.
		if m.Type == MsgPrepare || m.Type == MsgStoreGen {
			err := fw.send(r.Handle(m))
			release()
			if err != nil {
				return err
			}
			continue
		}
		// A member's write without FUA is applied by the reader
		// itself: handing each to a goroutine of its own cost two
		// thread wake-ups per write, on a machine where the primary,
		// the other replicas and the clients share the cores (measured
		// side by side, 3 replicas: +20-25 % sequential and random
		// write throughput, +35 % sync writes; BENCHMARKS.md). The
		// primary's range locks already keep its writes to one range
		// apart, so no write waits on a later frame of this
		// connection. Writes with FUA (an fdatasync), flushes, resync
		// and everything else still run beside the reader.
		if m.Type == MsgWrite && m.Flags&FlagFUA == 0 {
			err := fw.send(r.Handle(m))
			release()
			if err != nil {
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
			// The request's payload is on disk now (and a reply never
			// aliases the request's buffer): the frame can go back.
			release()
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
