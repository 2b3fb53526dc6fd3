package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// errAborted ends a handshake the client ended on purpose (NBD_OPT_ABORT).
var errAborted = errors.New("client aborted the handshake")

// session is what the option phase agreed on.
type session struct {
	conn       net.Conn
	br         *bufio.Reader
	bw         *bufio.Writer
	export     *Export
	structured bool
	baseAlloc  bool // base:allocation selected for this export
	tls        bool
}

const ioBufferBytes = 256 << 10

// handshake runs the fixed newstyle negotiation up to transmission.
func (s *Server) handshake(raw net.Conn, log *slog.Logger) (*session, error) {
	h := &handshaker{s: s, log: log, sess: &session{conn: raw}}
	h.sess.br = bufio.NewReaderSize(raw, ioBufferBytes)
	h.sess.bw = bufio.NewWriterSize(raw, ioBufferBytes)
	raw.SetDeadline(time.Now().Add(s.limits.HandshakeTimeout))
	if err := h.run(); err != nil {
		return h.sess, err
	}
	h.sess.conn.SetDeadline(time.Time{})
	return h.sess, nil
}

type handshaker struct {
	s    *Server
	log  *slog.Logger
	sess *session
	// noZeroes: the client asked to skip the 124 zero bytes of
	// EXPORT_NAME's reply.
	noZeroes bool
	// metaExport is the export a SET_META_CONTEXT selected contexts for.
	metaExport string
	metaSet    bool
}

func (h *handshaker) run() error {
	var hdr [18]byte
	binary.BigEndian.PutUint64(hdr[0:], magicInit)
	binary.BigEndian.PutUint64(hdr[8:], magicOption)
	binary.BigEndian.PutUint16(hdr[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := h.sess.bw.Write(hdr[:]); err != nil {
		return err
	}
	if err := h.sess.bw.Flush(); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(h.sess.br, cf[:]); err != nil {
		return fmt.Errorf("reading client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return fmt.Errorf("client sent unknown flags %#x", clientFlags)
	}
	if clientFlags&flagCFixedNewstyle == 0 {
		// Plain newstyle allows only EXPORT_NAME and no error
		// replies; every client of the last decade speaks fixed.
		h.log.Debug("nbd: client did not set fixed newstyle; serving it anyway")
	}
	h.noZeroes = clientFlags&flagCNoZeroes != 0
	for n := 0; ; n++ {
		if n >= h.s.limits.MaxOptions {
			return fmt.Errorf("client sent more than %d options", h.s.limits.MaxOptions)
		}
		done, err := h.option()
		if err != nil || done {
			return err
		}
	}
}

// option reads and answers one option; done means transmission begins.
func (h *handshaker) option() (done bool, err error) {
	var oh [16]byte
	if _, err := io.ReadFull(h.sess.br, oh[:]); err != nil {
		return false, fmt.Errorf("reading option header: %w", err)
	}
	if m := binary.BigEndian.Uint64(oh[0:]); m != magicOption {
		return false, fmt.Errorf("bad option magic %#x", m)
	}
	opt := binary.BigEndian.Uint32(oh[8:])
	length := binary.BigEndian.Uint32(oh[12:])
	if length > maxOptionBytes {
		if opt == optExportName || length > maxOptionSkipBytes {
			return false, fmt.Errorf("option %d of %d bytes is too large", opt, length)
		}
		if _, err := io.CopyN(io.Discard, h.sess.br, int64(length)); err != nil {
			return false, err
		}
		return false, h.replyErr(opt, repErrTooBig, "option data of %d bytes exceeds the server's limit of %d", length, maxOptionBytes)
	}
	data := make([]byte, length)
	if _, err := io.ReadFull(h.sess.br, data); err != nil {
		return false, fmt.Errorf("reading option %d data: %w", opt, err)
	}
	if h.s.cfg.TLSMode == TLSRequire && !h.sess.tls && opt != optStartTLS && opt != optAbort {
		if opt == optExportName {
			return false, errors.New("client chose an export without TLS, which this server requires")
		}
		return false, h.replyErr(opt, repErrTLSReqd, "this server requires TLS: send NBD_OPT_STARTTLS first")
	}
	switch opt {
	case optExportName:
		return true, h.exportName(data)
	case optAbort:
		// The client may already be gone: ignore errors of the reply.
		h.reply(opt, repAck, nil)
		return false, errAborted
	case optList:
		return false, h.list(data)
	case optStartTLS:
		return false, h.startTLS(data)
	case optInfo, optGo:
		return h.infoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, h.replyErr(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		if h.sess.structured {
			return false, h.replyErr(opt, repErrInvalid, "structured replies are already negotiated")
		}
		h.sess.structured = true
		return false, h.reply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, h.metaContext(opt, data)
	}
	return false, h.replyErr(opt, repErrUnsup, "option %d is not supported", opt)
}

func (h *handshaker) reply(opt, typ uint32, data []byte) error {
	var rh [20]byte
	binary.BigEndian.PutUint64(rh[0:], magicOptionReply)
	binary.BigEndian.PutUint32(rh[8:], opt)
	binary.BigEndian.PutUint32(rh[12:], typ)
	binary.BigEndian.PutUint32(rh[16:], uint32(len(data)))
	h.sess.bw.Write(rh[:])
	h.sess.bw.Write(data)
	return h.sess.bw.Flush()
}

// replyErr sends an error reply with a message for people; the session
// goes on (a write failure ends it).
func (h *handshaker) replyErr(opt, typ uint32, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxStringBytes {
		msg = msg[:maxStringBytes]
	}
	h.log.Debug("nbd: option refused", "option", opt, "reply", typ, "msg", msg)
	return h.reply(opt, typ, []byte(msg))
}

func (h *handshaker) lookup(name string) (*Export, bool) {
	return h.s.cfg.Exports.Lookup(name)
}

func (h *handshaker) exportName(data []byte) error {
	name := string(data)
	e, ok := h.lookup(name)
	if !ok {
		return fmt.Errorf("client asked for unknown export %q", name)
	}
	h.choose(e)
	var b [10 + 124]byte
	binary.BigEndian.PutUint64(b[0:], uint64(e.Backend.Size()))
	binary.BigEndian.PutUint16(b[8:], transmissionFlags(e, h.sess.structured))
	n := len(b)
	if h.noZeroes {
		n = 10
	}
	h.sess.bw.Write(b[:n])
	return h.sess.bw.Flush()
}

// choose fixes the export for transmission and keeps the metadata context
// selection only if it was made for this export.
func (h *handshaker) choose(e *Export) {
	h.sess.export = e
	h.sess.baseAlloc = h.metaSet && h.metaExport == e.Name && h.sess.structured
}

func (h *handshaker) list(data []byte) error {
	if len(data) != 0 {
		return h.replyErr(optList, repErrInvalid, "NBD_OPT_LIST takes no data")
	}
	for _, name := range h.s.cfg.Exports.Names() {
		b := make([]byte, 4+len(name))
		binary.BigEndian.PutUint32(b, uint32(len(name)))
		copy(b[4:], name)
		if err := h.reply(optList, repServer, b); err != nil {
			return err
		}
	}
	return h.reply(optList, repAck, nil)
}

func (h *handshaker) startTLS(data []byte) error {
	if len(data) != 0 {
		return h.replyErr(optStartTLS, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
	}
	if h.s.cfg.TLSMode == TLSOff {
		return h.replyErr(optStartTLS, repErrPolicy, "TLS is not configured on this server")
	}
	if h.sess.tls {
		return h.replyErr(optStartTLS, repErrInvalid, "TLS is already negotiated")
	}
	if err := h.reply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	if h.sess.br.Buffered() != 0 {
		// Bytes sent before the TLS handshake would be trusted as if
		// they came through TLS: refuse them.
		return errors.New("client sent data after STARTTLS before the TLS handshake")
	}
	tc := tls.Server(h.sess.conn, h.s.cfg.TLS)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	h.sess.conn = tc
	h.sess.br = bufio.NewReaderSize(tc, ioBufferBytes)
	h.sess.bw = bufio.NewWriterSize(tc, ioBufferBytes)
	h.sess.tls = true
	// A TLS upgrade resets what was negotiated in the clear.
	h.sess.structured = false
	h.metaSet = false
	return nil
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO.
func (h *handshaker) infoGo(opt uint32, data []byte) (bool, error) {
	if len(data) < 6 {
		return false, h.replyErr(opt, repErrInvalid, "option data too short")
	}
	nameLen := binary.BigEndian.Uint32(data)
	if nameLen > maxStringBytes || uint64(nameLen)+6 > uint64(len(data)) {
		return false, h.replyErr(opt, repErrInvalid, "export name length %d does not fit the option", nameLen)
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nInfos := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nInfos {
		return false, h.replyErr(opt, repErrInvalid, "%d information requests do not match %d bytes", nInfos, len(rest))
	}
	e, ok := h.lookup(name)
	if !ok {
		return false, h.replyErr(opt, repErrUnknown, "no export named %q", name)
	}
	var wantName, wantDesc bool
	for i := 0; i < nInfos; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	var b [12]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], uint64(e.Backend.Size()))
	binary.BigEndian.PutUint16(b[10:], transmissionFlags(e, h.sess.structured))
	if err := h.reply(opt, repInfo, b[:12]); err != nil {
		return false, err
	}
	if wantName {
		if err := h.reply(opt, repInfo, append([]byte{0, byte(infoName)}, e.Name...)); err != nil {
			return false, err
		}
	}
	if wantDesc && e.Description != "" {
		if err := h.reply(opt, repInfo, append([]byte{0, byte(infoDescription)}, e.Description...)); err != nil {
			return false, err
		}
	}
	var bs [14]byte
	binary.BigEndian.PutUint16(bs[0:], infoBlockSize)
	binary.BigEndian.PutUint32(bs[2:], 1)
	binary.BigEndian.PutUint32(bs[6:], preferredBlockBytes)
	binary.BigEndian.PutUint32(bs[10:], uint32(h.s.limits.MaxPayloadBytes))
	if err := h.reply(opt, repInfo, bs[:]); err != nil {
		return false, err
	}
	if err := h.reply(opt, repAck, nil); err != nil {
		return false, err
	}
	if opt == optGo {
		h.choose(e)
		return true, nil
	}
	return false, nil
}

// metaContext answers LIST_META_CONTEXT and SET_META_CONTEXT. The only
// context is base:allocation.
func (h *handshaker) metaContext(opt uint32, data []byte) error {
	set := opt == optSetMetaContext
	if set && !h.sess.structured {
		return h.replyErr(opt, repErrInvalid, "metadata contexts need structured replies first")
	}
	if len(data) < 8 {
		return h.replyErr(opt, repErrInvalid, "option data too short")
	}
	nameLen := binary.BigEndian.Uint32(data)
	if nameLen > maxStringBytes || uint64(nameLen)+8 > uint64(len(data)) {
		return h.replyErr(opt, repErrInvalid, "export name length %d does not fit the option", nameLen)
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nQueries := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if nQueries > maxMetaQueries {
		return h.replyErr(opt, repErrTooBig, "%d queries exceed the limit of %d", nQueries, maxMetaQueries)
	}
	queries := make([]string, 0, nQueries)
	for i := uint32(0); i < nQueries; i++ {
		if len(rest) < 4 {
			return h.replyErr(opt, repErrInvalid, "query %d is truncated", i)
		}
		ql := binary.BigEndian.Uint32(rest)
		if ql > maxStringBytes || uint64(ql) > uint64(len(rest)-4) {
			return h.replyErr(opt, repErrInvalid, "query %d length %d does not fit the option", i, ql)
		}
		queries = append(queries, string(rest[4:4+ql]))
		rest = rest[4+ql:]
	}
	if len(rest) != 0 {
		return h.replyErr(opt, repErrInvalid, "%d bytes after the last query", len(rest))
	}
	e, ok := h.lookup(name)
	if !ok {
		return h.replyErr(opt, repErrUnknown, "no export named %q", name)
	}
	match := false
	for _, q := range queries {
		if q == metaBaseAllocation || (!set && q == "base:") {
			match = true
		}
	}
	if !set && len(queries) == 0 {
		match = true // an empty LIST asks for every context
	}
	if set {
		h.metaSet = match
		h.metaExport = e.Name
	}
	if match {
		id := metaBaseAllocationID
		if !set {
			id = 0
		}
		b := make([]byte, 4+len(metaBaseAllocation))
		binary.BigEndian.PutUint32(b, id)
		copy(b[4:], metaBaseAllocation)
		if err := h.reply(opt, repMetaContext, b); err != nil {
			return err
		}
	}
	return h.reply(opt, repAck, nil)
}

// transmissionFlags says truthfully what an export supports.
func transmissionFlags(e *Export, structured bool) uint16 {
	f := e.Backend.Features()
	flags := tflagHasFlags | tflagSendFlush | tflagSendFUA
	if f.ReadOnly {
		flags |= tflagReadOnly
	} else {
		if f.CanTrim {
			flags |= tflagSendTrim
		}
		if f.CanZero {
			flags |= tflagSendWriteZeroes
			if f.CanFastZero {
				flags |= tflagSendFastZero
			}
		}
	}
	if structured {
		flags |= tflagSendDF
	}
	if f.CanCache {
		flags |= tflagSendCache
	}
	if f.CanMultiConn {
		flags |= tflagCanMultiConn
	}
	if f.Rotational {
		flags |= tflagRotational
	}
	return flags
}
