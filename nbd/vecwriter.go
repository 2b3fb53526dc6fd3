package nbd

import (
	"io"
	"net"
)

// vecWriter gathers replies and sends them with one writev: headers and
// small payloads are copied into an arena, large READ payloads are sent from
// their own buffers without a copy. Buffers handed to it must stay
// untouched until flush returns.
type vecWriter struct {
	w     io.Writer
	arena []byte
	start int // arena[start:] is not yet in vec
	vec   net.Buffers
	store net.Buffers
	bytes int
}

const (
	vecArenaBytes = 128 << 10
	// vecCopyBytes: payloads below this are copied, above it referenced.
	vecCopyBytes = 8 << 10
	// vecFlushBytes: queue at most this much before sending.
	vecFlushBytes = 4 << 20
)

func newVecWriter(w io.Writer) *vecWriter {
	return &vecWriter{w: w, arena: make([]byte, 0, vecArenaBytes)}
}

// Write queues p; it never fails (the error comes from flush).
func (v *vecWriter) Write(p []byte) (int, error) {
	if len(p) >= vecCopyBytes || len(p) > cap(v.arena) {
		v.cut()
		v.vec = append(v.vec, p)
		v.bytes += len(p)
		return len(p), nil
	}
	if len(v.arena)+len(p) > cap(v.arena) {
		// The arena must not grow while vec points into it: send first.
		if err := v.flush(); err != nil {
			return 0, err
		}
	}
	v.arena = append(v.arena, p...)
	v.bytes += len(p)
	return len(p), nil
}

func (v *vecWriter) WriteString(s string) (int, error) { return v.Write([]byte(s)) }

// cut moves the arena's unsent tail into vec.
func (v *vecWriter) cut() {
	if len(v.arena) > v.start {
		v.vec = append(v.vec, v.arena[v.start:])
		v.start = len(v.arena)
	}
}

func (v *vecWriter) buffered() int { return v.bytes }

// flush sends everything queued.
func (v *vecWriter) flush() error {
	v.cut()
	var err error
	if len(v.vec) > 0 {
		b := v.vec
		_, err = b.WriteTo(v.w)
	}
	clear(v.vec) // drop references to payload buffers
	v.vec = v.vec[:0]
	v.arena = v.arena[:0]
	v.start = 0
	v.bytes = 0
	return err
}
