package nbd

import "time"

// Limits bound what clients can make the server hold. Zero fields take the
// defaults below.
type Limits struct {
	// MaxPayloadBytes is the largest READ or WRITE, advertised as the
	// maximum block size. Larger requests get EINVAL.
	MaxPayloadBytes int
	// MaxInFlightPerConn bounds requests being served on one connection.
	MaxInFlightPerConn int
	// MaxInFlightBytesPerConn bounds the payload bytes (READ buffers and
	// WRITE data) held for one connection.
	MaxInFlightBytesPerConn int64
	// MaxInFlightBytesPerServer bounds the same over all connections.
	MaxInFlightBytesPerServer int64
	// MaxConns bounds open connections; more are closed at once.
	MaxConns int
	// HandshakeTimeout bounds the option phase of one connection.
	HandshakeTimeout time.Duration
	// MaxOptions bounds the options one connection may send before
	// choosing an export.
	MaxOptions int
	// MaxExtents bounds the extents of one BLOCK_STATUS reply.
	MaxExtents int
}

const (
	defaultMaxPayloadBytes           = 32 << 20
	defaultMaxInFlightPerConn        = 256
	defaultMaxInFlightBytesPerConn   = 128 << 20
	defaultMaxInFlightBytesPerServer = 1 << 30
	defaultMaxConns                  = 1024
	defaultHandshakeTimeout          = 30 * time.Second
	defaultMaxOptions                = 512
	defaultMaxExtents                = 4096

	// maxOptionBytes bounds the data of one option we read into memory;
	// every option we understand fits easily (names are <= 4096 bytes).
	maxOptionBytes = 64 << 10
	// maxOptionSkipBytes bounds an option we skip over to answer
	// NBD_REP_ERR_TOO_BIG; past it the connection is closed.
	maxOptionSkipBytes = 16 << 20
	// maxStringBytes is the protocol's own limit on names and messages.
	maxStringBytes = 4096
	// maxMetaQueries bounds the queries of one (LIST|SET)_META_CONTEXT.
	maxMetaQueries = 128
	// maxWriteSkipBytes bounds how much of an oversized WRITE's payload we
	// read and discard to keep the stream in sync; beyond it we close.
	maxWriteSkipBytes = 256 << 20
	// preferredBlockBytes is the advertised preferred block size.
	preferredBlockBytes = 4096
)

func (l Limits) withDefaults() Limits {
	if l.MaxPayloadBytes <= 0 {
		l.MaxPayloadBytes = defaultMaxPayloadBytes
	}
	if l.MaxInFlightPerConn <= 0 {
		l.MaxInFlightPerConn = defaultMaxInFlightPerConn
	}
	if l.MaxInFlightBytesPerConn <= 0 {
		l.MaxInFlightBytesPerConn = defaultMaxInFlightBytesPerConn
	}
	if l.MaxInFlightBytesPerServer <= 0 {
		l.MaxInFlightBytesPerServer = defaultMaxInFlightBytesPerServer
	}
	if l.MaxConns <= 0 {
		l.MaxConns = defaultMaxConns
	}
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = defaultHandshakeTimeout
	}
	if l.MaxOptions <= 0 {
		l.MaxOptions = defaultMaxOptions
	}
	if l.MaxExtents <= 0 {
		l.MaxExtents = defaultMaxExtents
	}
	// One request must always fit in the budgets, or it would wait for ever.
	if int64(l.MaxPayloadBytes) > l.MaxInFlightBytesPerConn {
		l.MaxInFlightBytesPerConn = int64(l.MaxPayloadBytes)
	}
	if l.MaxInFlightBytesPerConn > l.MaxInFlightBytesPerServer {
		l.MaxInFlightBytesPerServer = l.MaxInFlightBytesPerConn
	}
	return l
}
