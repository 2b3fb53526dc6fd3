package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Client is a small NBD client for tests and tools: fixed newstyle with
// NBD_OPT_GO, optional TLS and structured replies, pipelined requests (any
// number of goroutines may issue requests at once).
type Client struct {
	conn       net.Conn
	bw         *bufio.Writer
	br         *bufio.Reader
	wmu        sync.Mutex
	mu         sync.Mutex
	pending    map[uint64]*call
	nextCookie uint64
	err        error
	done       chan struct{}

	Size       int64
	Flags      uint16
	Structured bool
	BaseAlloc  bool
	MaxPayload uint32
}

// ClientOptions choose what the client negotiates.
type ClientOptions struct {
	Export     string
	Structured bool // ask for structured replies and base:allocation
	TLS        *tls.Config
	Timeout    time.Duration // handshake timeout; default 10 s
}

// Error is an NBD error reply.
type Error struct {
	Errno uint32
	Msg   string
}

func (e *Error) Error() string {
	if e.Msg != "" {
		return fmt.Sprintf("nbd: error %d: %s", e.Errno, e.Msg)
	}
	return fmt.Sprintf("nbd: error %d", e.Errno)
}

type call struct {
	req     Request
	buf     []byte
	extents []Extent
	err     error
	done    chan struct{}
}

// Dial connects to addr and negotiates the export.
func Dial(network, addr string, o ClientOptions) (*Client, error) {
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	conn, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return nil, err
	}
	c, err := NewClient(conn, o)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Negotiate runs only the handshake on conn and leaves the connection at
// the start of transmission, for handing the socket to the kernel's nbd
// driver (which speaks simple replies only: leave o.Structured false).
func Negotiate(conn net.Conn, o ClientOptions) (sizeBytes int64, flags uint16, err error) {
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	conn.SetDeadline(time.Now().Add(timeout))
	defer conn.SetDeadline(time.Time{})
	// No read buffer: bytes read ahead would be lost to the kernel.
	c := &Client{conn: conn, br: bufio.NewReaderSize(oneByteReader{conn}, 16), bw: bufio.NewWriter(conn)}
	if err := c.handshake(o); err != nil {
		return 0, 0, err
	}
	if c.conn != conn {
		return 0, 0, errors.New("TLS cannot be handed to the kernel")
	}
	return c.Size, c.Flags, nil
}

// oneByteReader keeps bufio from reading past the handshake.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

// NewClient negotiates on an open connection.
func NewClient(conn net.Conn, o ClientOptions) (*Client, error) {
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	conn.SetDeadline(time.Now().Add(timeout))
	c := &Client{conn: conn, pending: map[uint64]*call{}, done: make(chan struct{})}
	c.br = bufio.NewReaderSize(conn, ioBufferBytes)
	c.bw = bufio.NewWriterSize(conn, ioBufferBytes)
	if err := c.handshake(o); err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	go c.readLoop()
	return c, nil
}

func (c *Client) handshake(o ClientOptions) error {
	var hdr [18]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		return fmt.Errorf("reading server greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hdr[0:]) != magicInit || binary.BigEndian.Uint64(hdr[8:]) != magicOption {
		return errors.New("not a newstyle NBD server")
	}
	sflags := binary.BigEndian.Uint16(hdr[16:])
	if sflags&flagFixedNewstyle == 0 {
		return errors.New("server does not speak fixed newstyle")
	}
	cflags := flagCFixedNewstyle
	if sflags&flagNoZeroes != 0 {
		cflags |= flagCNoZeroes
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], cflags)
	c.bw.Write(b[:])
	if o.TLS != nil {
		typ, data, err := c.option(optStartTLS, nil)
		if err != nil {
			return err
		}
		if typ != repAck {
			return fmt.Errorf("server refused STARTTLS: %s", data)
		}
		tc := tls.Client(c.conn, o.TLS)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		c.conn = tc
		c.br = bufio.NewReaderSize(tc, ioBufferBytes)
		c.bw = bufio.NewWriterSize(tc, ioBufferBytes)
	}
	if o.Structured {
		typ, _, err := c.option(optStructuredReply, nil)
		if err != nil {
			return err
		}
		c.Structured = typ == repAck
		if c.Structured {
			q := metaQuery(o.Export, metaBaseAllocation)
			if err := c.sendOption(optSetMetaContext, q); err != nil {
				return err
			}
			for {
				typ, data, err := c.readOptionReply(optSetMetaContext)
				if err != nil {
					return err
				}
				if typ == repMetaContext && len(data) >= 4 {
					c.BaseAlloc = true
					continue
				}
				break
			}
		}
	}
	// NBD_OPT_GO with a request for the block size.
	name := []byte(o.Export)
	data := make([]byte, 4+len(name)+2+2)
	binary.BigEndian.PutUint32(data, uint32(len(name)))
	copy(data[4:], name)
	binary.BigEndian.PutUint16(data[4+len(name):], 1)
	binary.BigEndian.PutUint16(data[6+len(name):], infoBlockSize)
	if err := c.sendOption(optGo, data); err != nil {
		return err
	}
	c.MaxPayload = 32 << 20
	for {
		typ, data, err := c.readOptionReply(optGo)
		if err != nil {
			return err
		}
		switch {
		case typ == repAck:
			if c.Size == 0 && c.Flags == 0 {
				return errors.New("server ended NBD_OPT_GO without export information")
			}
			return nil
		case typ == repInfo && len(data) >= 2:
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return errors.New("malformed NBD_INFO_EXPORT")
				}
				c.Size = int64(binary.BigEndian.Uint64(data[2:]))
				c.Flags = binary.BigEndian.Uint16(data[10:])
			case infoBlockSize:
				if len(data) == 14 {
					c.MaxPayload = binary.BigEndian.Uint32(data[10:])
				}
			}
		case typ&(1<<31) != 0:
			return fmt.Errorf("server refused export %q (reply %#x): %s", o.Export, typ, data)
		}
	}
}

func metaQuery(export, query string) []byte {
	b := make([]byte, 4+len(export)+4+4+len(query))
	binary.BigEndian.PutUint32(b, uint32(len(export)))
	copy(b[4:], export)
	p := 4 + len(export)
	binary.BigEndian.PutUint32(b[p:], 1)
	binary.BigEndian.PutUint32(b[p+4:], uint32(len(query)))
	copy(b[p+8:], query)
	return b
}

func (c *Client) sendOption(opt uint32, data []byte) error {
	var h [16]byte
	binary.BigEndian.PutUint64(h[0:], magicOption)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], uint32(len(data)))
	c.bw.Write(h[:])
	c.bw.Write(data)
	return c.bw.Flush()
}

// option sends an option and reads one reply.
func (c *Client) option(opt uint32, data []byte) (uint32, []byte, error) {
	if err := c.sendOption(opt, data); err != nil {
		return 0, nil, err
	}
	return c.readOptionReply(opt)
}

func (c *Client) readOptionReply(opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, fmt.Errorf("reading option reply: %w", err)
	}
	if binary.BigEndian.Uint64(h[0:]) != magicOptionReply {
		return 0, nil, errors.New("bad option reply magic")
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		return 0, nil, fmt.Errorf("reply for option %d, expected %d", got, opt)
	}
	typ := binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptionBytes {
		return 0, nil, fmt.Errorf("option reply of %d bytes is too large", n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(c.br, data); err != nil {
		return 0, nil, err
	}
	return typ, data, nil
}

// do sends one request and waits for its reply.
func (c *Client) do(req Request, payload []byte, buf []byte) (*call, error) {
	cl := &call{req: req, buf: buf, done: make(chan struct{})}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	c.nextCookie++
	cl.req.Cookie = c.nextCookie
	c.pending[cl.req.Cookie] = cl
	c.mu.Unlock()
	var h [requestHeaderBytes]byte
	cl.req.encode(&h)
	c.wmu.Lock()
	c.bw.Write(h[:])
	c.bw.Write(payload)
	err := c.bw.Flush()
	c.wmu.Unlock()
	if err != nil {
		c.fail(err)
	}
	<-cl.done
	return cl, cl.err
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	for k, cl := range c.pending {
		cl.err = c.err
		close(cl.done)
		delete(c.pending, k)
	}
	c.mu.Unlock()
	c.conn.Close()
}

func (c *Client) take(cookie uint64) (*call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.pending[cookie]
	if !ok {
		return nil, fmt.Errorf("reply for unknown cookie %d", cookie)
	}
	return cl, nil
}

func (c *Client) finish(cl *call) {
	c.mu.Lock()
	if c.pending[cl.req.Cookie] != cl {
		// fail() completed it already.
		c.mu.Unlock()
		return
	}
	delete(c.pending, cl.req.Cookie)
	c.mu.Unlock()
	close(cl.done)
}

func (c *Client) readLoop() {
	defer close(c.done)
	for {
		if err := c.readReply(); err != nil {
			c.fail(err)
			return
		}
	}
}

func (c *Client) readReply() error {
	var m [4]byte
	if _, err := io.ReadFull(c.br, m[:]); err != nil {
		return err
	}
	switch binary.BigEndian.Uint32(m[:]) {
	case magicSimple:
		var h [12]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return err
		}
		cl, err := c.take(binary.BigEndian.Uint64(h[4:]))
		if err != nil {
			return err
		}
		if e := binary.BigEndian.Uint32(h[0:]); e != 0 {
			cl.err = &Error{Errno: e}
		} else if cl.req.Type == CmdRead {
			if _, err := io.ReadFull(c.br, cl.buf); err != nil {
				return err
			}
		}
		c.finish(cl)
		return nil
	case magicStructured:
		var h [16]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return err
		}
		flags := binary.BigEndian.Uint16(h[0:])
		typ := binary.BigEndian.Uint16(h[2:])
		cl, err := c.take(binary.BigEndian.Uint64(h[4:]))
		if err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(h[12:])
		if n > c.MaxPayload+1024 {
			return fmt.Errorf("chunk of %d bytes is too large", n)
		}
		if err := c.chunk(cl, typ, n); err != nil {
			return err
		}
		if flags&replyFlagDone != 0 {
			c.finish(cl)
		}
		return nil
	}
	return errors.New("bad reply magic")
}

func (c *Client) chunk(cl *call, typ uint16, n uint32) error {
	switch typ {
	case replyTypeNone:
		return nil
	case replyTypeOffsetData, replyTypeOffsetHole:
		var o [8]byte
		if n < 8 {
			return errors.New("short offset chunk")
		}
		if _, err := io.ReadFull(c.br, o[:]); err != nil {
			return err
		}
		off := binary.BigEndian.Uint64(o[:]) - cl.req.Offset
		if typ == replyTypeOffsetHole {
			var l [4]byte
			if _, err := io.ReadFull(c.br, l[:]); err != nil {
				return err
			}
			hl := uint64(binary.BigEndian.Uint32(l[:]))
			if off+hl > uint64(len(cl.buf)) {
				return errors.New("hole chunk outside the request")
			}
			clear(cl.buf[off : off+hl])
			return nil
		}
		dl := uint64(n - 8)
		if off+dl > uint64(len(cl.buf)) {
			return errors.New("data chunk outside the request")
		}
		_, err := io.ReadFull(c.br, cl.buf[off:off+dl])
		return err
	case replyTypeBlockStatus:
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return err
		}
		for p := 4; p+8 <= len(data); p += 8 {
			f := binary.BigEndian.Uint32(data[p+4:])
			cl.extents = append(cl.extents, Extent{
				Length: int64(binary.BigEndian.Uint32(data[p:])),
				Hole:   f&stateHole != 0,
				Zero:   f&stateZero != 0,
			})
		}
		return nil
	case replyTypeError, replyTypeErrorOffset:
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return err
		}
		e := &Error{Errno: EIO}
		if len(data) >= 6 {
			e.Errno = binary.BigEndian.Uint32(data)
			ml := int(binary.BigEndian.Uint16(data[4:]))
			if 6+ml <= len(data) {
				e.Msg = string(data[6 : 6+ml])
			}
		}
		cl.err = e
		return nil
	}
	// Unknown chunk types are skipped, as the protocol asks.
	_, err := io.CopyN(io.Discard, c.br, int64(n))
	return err
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(p []byte, off int64) error {
	_, err := c.do(Request{Type: CmdRead, Offset: uint64(off), Length: uint32(len(p))}, nil, p)
	return err
}

// WriteAt writes p at off; flags may hold CmdFlagFUA.
func (c *Client) WriteAt(p []byte, off int64, flags uint16) error {
	_, err := c.do(Request{Type: CmdWrite, Flags: flags, Offset: uint64(off), Length: uint32(len(p))}, p, nil)
	return err
}

// Flush sends NBD_CMD_FLUSH.
func (c *Client) Flush() error {
	_, err := c.do(Request{Type: CmdFlush}, nil, nil)
	return err
}

// Trim sends NBD_CMD_TRIM.
func (c *Client) Trim(off, length int64, flags uint16) error {
	_, err := c.do(Request{Type: CmdTrim, Flags: flags, Offset: uint64(off), Length: uint32(length)}, nil, nil)
	return err
}

// Zero sends NBD_CMD_WRITE_ZEROES.
func (c *Client) Zero(off, length int64, flags uint16) error {
	_, err := c.do(Request{Type: CmdWriteZeroes, Flags: flags, Offset: uint64(off), Length: uint32(length)}, nil, nil)
	return err
}

// BlockStatus asks for base:allocation extents.
func (c *Client) BlockStatus(off, length int64, flags uint16) ([]Extent, error) {
	cl, err := c.do(Request{Type: CmdBlockStatus, Flags: flags, Offset: uint64(off), Length: uint32(length)}, nil, nil)
	if err != nil {
		return nil, err
	}
	return cl.extents, nil
}

// Raw sends any request (tests use it for bad input) and returns the reply.
func (c *Client) Raw(req Request, payload, buf []byte) error {
	_, err := c.do(req, payload, buf)
	return err
}

// Close sends NBD_CMD_DISC and closes the connection.
func (c *Client) Close() error {
	var h [requestHeaderBytes]byte
	Request{Type: CmdDisc}.encode(&h)
	c.wmu.Lock()
	c.bw.Write(h[:])
	c.bw.Flush()
	c.wmu.Unlock()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
	return c.conn.Close()
}

// ErrAborted fails the requests of a client closed by Abort.
var ErrAborted = errors.New("nbd: connection aborted")

// Abort drops the connection at once: every pending request fails with
// ErrAborted. Unlike Close it sends no DISC and waits for nothing, so it
// is safe when the server is unreachable (a write blocked on a dead TCP
// connection would hold Close).
func (c *Client) Abort() {
	c.fail(ErrAborted)
}
