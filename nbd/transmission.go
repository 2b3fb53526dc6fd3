package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// reply is a finished request on its way to the writer.
type reply struct {
	req   Request
	errno uint32
	msg   string
	data  []byte // READ data (a pooled buffer, or nil)
	// holes, for a structured READ, are the extents of data: chunks
	// marked Hole are sent as NBD_REPLY_TYPE_OFFSET_HOLE, never read.
	holes   []Extent
	extents []Extent
	// held is the payload budget the request holds until its reply is
	// written.
	held int64
}

// transmission serves one connection after the handshake.
type transmission struct {
	s       *Server
	sess    *session
	log     *slog.Logger
	be      Backend
	view    exportView
	connBuf *budget
	slots   chan struct{}
	workers sync.WaitGroup

	// Replies leave by flat combining: a finished request queues its
	// reply, and whoever finds no send in progress becomes the sender
	// and sends every queued reply, in batches, until the queue is
	// empty. No writer goroutine to wake, and one writev carries all
	// the replies that finished while the previous one was sent.
	sendMu  sync.Mutex
	queued  []*reply
	spare   []*reply
	sending bool
	failed  bool
	vw      *vecWriter

	// readNs and writeNs are moving averages of how long the backend
	// takes, in nanoseconds; see inline.
	readNs  atomic.Int64
	writeNs atomic.Int64
}

func newTransmission(s *Server, sess *session, log *slog.Logger) *transmission {
	be := sess.export.Backend
	t := &transmission{
		s:    s,
		sess: sess,
		log:  log,
		be:   be,
		view: exportView{
			size:       uint64(be.Size()),
			features:   be.Features(),
			structured: sess.structured,
			baseAlloc:  sess.baseAlloc,
			maxPayload: uint32(s.limits.MaxPayloadBytes),
		},
		connBuf: newBudget(s.limits.MaxInFlightBytesPerConn),
		slots:   make(chan struct{}, s.limits.MaxInFlightPerConn),
		// The handshake's buffered writer is empty now; replies
		// bypass it.
		vw: newVecWriter(sess.conn),
	}
	// Until measured, assume the backend is slow: requests go in
	// parallel, and one that never returns cannot stall the reader.
	t.readNs.Store(4 * inlineMaxNs)
	t.writeNs.Store(4 * inlineMaxNs)
	return t
}

// run reads requests until DISC, EOF or a fatal error, then waits for the
// requests in flight, sends their replies and closes the connection.
func (t *transmission) run() error {
	err := t.reader()
	// Every worker sends its own reply before Done, so once they are all
	// done every reply has been sent (or dropped after a send failed).
	t.workers.Wait()
	t.sess.conn.Close()
	return err
}

func (t *transmission) reader() error {
	br := t.sess.br
	var hdr [requestHeaderBytes]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // client went away between requests
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("reading request: %w", err)
		}
		req, err := parseRequest(&hdr)
		if err != nil {
			return err
		}
		t.s.Stats.Requests.Add(1)
		if req.Type == CmdDisc {
			return nil
		}
		errno, msg := validate(req, t.view)
		if req.Type == CmdWrite && errno != 0 {
			// Keep the stream in sync: the payload follows anyway.
			if req.Length > maxWriteSkipBytes {
				return fmt.Errorf("WRITE of %d bytes is too large to skip", req.Length)
			}
			if _, err := io.CopyN(io.Discard, br, int64(req.Length)); err != nil {
				return fmt.Errorf("skipping write payload: %w", err)
			}
		}
		t.slots <- struct{}{}
		if errno != 0 {
			t.s.Stats.RequestErrors.Add(1)
			t.log.Debug("nbd: request refused", "cmd", cmdName(req.Type), "offset", req.Offset, "length", req.Length, "errno", errno, "msg", msg)
			t.send(&reply{req: req, errno: errno, msg: msg})
			continue
		}
		var held int64
		var buf []byte
		if req.Type == CmdRead || req.Type == CmdWrite {
			held = int64(req.Length)
			if !t.connBuf.acquire(held) {
				return net.ErrClosed
			}
			if !t.s.serverBuf.acquire(held) {
				t.connBuf.release(held)
				return net.ErrClosed
			}
			buf = getBuf(int(req.Length))
		}
		if req.Type == CmdWrite {
			if _, err := io.ReadFull(br, buf); err != nil {
				putBuf(buf)
				t.release(held)
				<-t.slots
				return fmt.Errorf("reading write payload: %w", err)
			}
		}
		t.workers.Add(1)
		if t.inline(req) {
			t.serve(req, buf, held)
		} else {
			go t.serve(req, buf, held)
		}
	}
}

// inlineMaxNs: a backend call that takes less than this on average is made
// by the reader itself. Handing a 2 µs pread to another goroutine costs
// more than the pread (a goroutine, its stack growth, a wake-up); handing
// over a 1 ms one is what lets requests overlap. The average follows the
// backend within tens of requests, so a backend that turns slow is soon
// served in parallel again.
const inlineMaxNs = 20_000

// inline says whether the reader should serve req itself.
func (t *transmission) inline(req Request) bool {
	switch {
	case req.Type == CmdRead:
		return t.readNs.Load() < inlineMaxNs
	case req.Type == CmdWrite && req.Flags&CmdFlagFUA == 0:
		return t.writeNs.Load() < inlineMaxNs
	}
	return false
}

// observe folds one backend call's duration into a moving average (1/8
// weight for the newest: it follows a change within tens of requests).
func observe(avg *atomic.Int64, d time.Duration) {
	old := avg.Load()
	avg.Store(old + (int64(d)-old)/8)
}

func (t *transmission) release(held int64) {
	if held > 0 {
		t.connBuf.release(held)
		t.s.serverBuf.release(held)
	}
}

// serve runs one validated request against the backend.
func (t *transmission) serve(req Request, buf []byte, held int64) {
	defer t.workers.Done()
	r := &reply{req: req, held: held}
	off, n := int64(req.Offset), int64(req.Length)
	fua := req.Flags&CmdFlagFUA != 0
	var err error
	switch req.Type {
	case CmdRead:
		start := time.Now()
		r.data = buf
		r.holes = t.readHoles(req)
		if r.holes == nil {
			err = t.be.ReadAt(buf, off)
		} else {
			pos := int64(0)
			for _, e := range r.holes {
				if !e.Hole && err == nil {
					err = t.be.ReadAt(buf[pos:pos+e.Length], off+pos)
				} else if e.Hole {
					t.s.Stats.HoleBytes.Add(e.Length)
				}
				pos += e.Length
			}
		}
		observe(&t.readNs, time.Since(start))
		if err == nil {
			t.s.Stats.BytesRead.Add(n)
		}
	case CmdWrite:
		start := time.Now()
		err = t.be.WriteAt(buf, off, fua)
		if !fua {
			observe(&t.writeNs, time.Since(start))
		}
		putBuf(buf)
		if err == nil {
			t.s.Stats.BytesWritten.Add(n)
		}
	case CmdFlush:
		err = t.be.Flush()
	case CmdTrim:
		if n > 0 {
			err = t.be.Trim(off, n, fua)
		}
	case CmdWriteZeroes:
		if n > 0 {
			err = t.be.Zero(off, n, req.Flags&CmdFlagNoHole != 0, req.Flags&CmdFlagFastZero != 0, fua)
		}
	case CmdCache:
		err = t.be.Cache(off, n)
	case CmdBlockStatus:
		r.extents, err = t.blockStatus(req)
	}
	if err != nil {
		r.errno = errnoOf(err)
		r.msg = err.Error()
		t.s.Stats.RequestErrors.Add(1)
		if r.errno == EIO {
			t.log.Warn("nbd: backend error", "cmd", cmdName(req.Type), "offset", off, "length", n, "err", err)
		}
	}
	t.send(r)
}

// sparseReadMinBytes is the smallest structured READ for which we look for
// a hole: below it the lseek costs more than the zeroes it saves.
const sparseReadMinBytes = 64 << 10

// LeadingHoler is implemented by backends that can tell cheaply how many
// bytes from off read as zeroes without being allocated.
type LeadingHoler interface {
	LeadingHole(off, length int64) (int64, error)
}

// readHoles returns the extents of a READ when it starts with a hole that
// can be sent as a hole chunk, or nil when it goes as one data chunk.
//
// Only a leading hole is looked for, with one SEEK_DATA: finding where data
// ends takes SEEK_HOLE, which on tmpfs walks every page of the data run
// (measured: 40 ms per 256 KiB read of a 1 GiB file), far more than it saves.
func (t *transmission) readHoles(req Request) []Extent {
	if !t.view.structured || req.Flags&CmdFlagDF != 0 || req.Length < sparseReadMinBytes {
		return nil
	}
	lh, ok := t.be.(LeadingHoler)
	if !ok {
		return nil
	}
	n := int64(req.Length)
	hole, err := lh.LeadingHole(int64(req.Offset), n)
	if err != nil || hole <= 0 {
		return nil
	}
	if hole >= n {
		return []Extent{{Length: n, Hole: true, Zero: true}}
	}
	return []Extent{{Length: hole, Hole: true, Zero: true}, {Length: n - hole}}
}

func (t *transmission) blockStatus(req Request) ([]Extent, error) {
	maxExtents := t.s.limits.MaxExtents
	if req.Flags&CmdFlagReqOne != 0 {
		maxExtents = 1
	}
	bs, ok := t.be.(BlockStatuser)
	if !ok {
		return []Extent{{Length: int64(req.Length)}}, nil
	}
	ext, err := bs.BlockStatus(int64(req.Offset), int64(req.Length), maxExtents)
	if err != nil {
		return nil, err
	}
	// Enforce the contract rather than trust it: never empty, never
	// longer than asked, never more entries than allowed.
	var total int64
	out := ext[:0]
	for _, e := range ext {
		if e.Length <= 0 || len(out) == maxExtents {
			break
		}
		if total+e.Length > int64(req.Length) {
			e.Length = int64(req.Length) - total
		}
		out = append(out, e)
		total += e.Length
		if total == int64(req.Length) {
			break
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("backend returned no extents")
	}
	return out, nil
}

// send queues a reply and, unless another goroutine is sending already,
// sends everything queued until the queue is empty.
func (t *transmission) send(r *reply) {
	t.sendMu.Lock()
	t.queued = append(t.queued, r)
	if t.sending {
		t.sendMu.Unlock()
		return
	}
	t.sending = true
	for len(t.queued) > 0 {
		batch := t.queued
		t.queued = t.spare[:0]
		failed := t.failed
		t.sendMu.Unlock()

		if !failed {
			var err error
			for _, r := range batch {
				if err = t.writeReply(t.vw, r); err != nil {
					break
				}
			}
			if err == nil {
				err = t.vw.flush()
			}
			if err != nil {
				failed = true
				// The client cannot hear us any more: make the
				// reader stop too.
				t.sess.conn.Close()
			}
		}
		for i, r := range batch {
			putBuf(r.data)
			t.release(r.held)
			<-t.slots
			batch[i] = nil
		}

		t.sendMu.Lock()
		t.failed = t.failed || failed
		t.spare = batch[:0]
	}
	t.sending = false
	t.sendMu.Unlock()
}

func (t *transmission) writeReply(w *vecWriter, r *reply) error {
	structured := t.view.structured && (r.req.Type == CmdRead || r.req.Type == CmdBlockStatus)
	if !structured {
		var h [16]byte
		binary.BigEndian.PutUint32(h[0:], magicSimple)
		binary.BigEndian.PutUint32(h[4:], r.errno)
		binary.BigEndian.PutUint64(h[8:], r.req.Cookie)
		w.Write(h[:])
		if r.errno == 0 && r.req.Type == CmdRead {
			_, err := w.Write(r.data)
			return err
		}
		return nil
	}
	if r.errno != 0 {
		msg := r.msg
		if len(msg) > maxStringBytes {
			msg = msg[:maxStringBytes]
		}
		h := chunkHeader(replyFlagDone, replyTypeError, r.req.Cookie, uint32(6+len(msg)))
		w.Write(h[:])
		var e [6]byte
		binary.BigEndian.PutUint32(e[0:], r.errno)
		binary.BigEndian.PutUint16(e[4:], uint16(len(msg)))
		w.Write(e[:])
		_, err := w.WriteString(msg)
		return err
	}
	switch r.req.Type {
	case CmdRead:
		if len(r.data) == 0 {
			h := chunkHeader(replyFlagDone, replyTypeNone, r.req.Cookie, 0)
			_, err := w.Write(h[:])
			return err
		}
		if r.holes == nil {
			return writeDataChunk(w, r.req.Cookie, replyFlagDone, r.req.Offset, r.data)
		}
		pos := int64(0)
		for i, e := range r.holes {
			var flags uint16
			if i == len(r.holes)-1 {
				flags = replyFlagDone
			}
			off := r.req.Offset + uint64(pos)
			var err error
			if e.Hole {
				h := chunkHeader(flags, replyTypeOffsetHole, r.req.Cookie, 12)
				w.Write(h[:])
				var b [12]byte
				binary.BigEndian.PutUint64(b[0:], off)
				binary.BigEndian.PutUint32(b[8:], uint32(e.Length))
				_, err = w.Write(b[:])
			} else {
				err = writeDataChunk(w, r.req.Cookie, flags, off, r.data[pos:pos+e.Length])
			}
			if err != nil {
				return err
			}
			pos += e.Length
		}
		return nil
	case CmdBlockStatus:
		h := chunkHeader(replyFlagDone, replyTypeBlockStatus, r.req.Cookie, uint32(4+8*len(r.extents)))
		w.Write(h[:])
		var id [4]byte
		binary.BigEndian.PutUint32(id[:], metaBaseAllocationID)
		w.Write(id[:])
		for _, e := range r.extents {
			var d [8]byte
			binary.BigEndian.PutUint32(d[0:], uint32(e.Length))
			var flags uint32
			if e.Hole {
				flags |= stateHole
			}
			if e.Zero {
				flags |= stateZero
			}
			binary.BigEndian.PutUint32(d[4:], flags)
			if _, err := w.Write(d[:]); err != nil {
				return err
			}
		}
		return nil
	}
	return nil
}

func writeDataChunk(w *vecWriter, cookie uint64, flags uint16, off uint64, data []byte) error {
	h := chunkHeader(flags, replyTypeOffsetData, cookie, uint32(8+len(data)))
	w.Write(h[:])
	var o [8]byte
	binary.BigEndian.PutUint64(o[:], off)
	w.Write(o[:])
	_, err := w.Write(data)
	return err
}

func chunkHeader(flags, typ uint16, cookie uint64, length uint32) [20]byte {
	var h [20]byte
	binary.BigEndian.PutUint32(h[0:], magicStructured)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], typ)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint32(h[16:], length)
	return h
}
