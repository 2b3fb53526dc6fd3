package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// DestOptions configures the receiving side.
type DestOptions struct {
	// PrepareRAM returns zeroed RAM of ramBytes for an incoming
	// migration, or an error to refuse it (a size it did not expect).
	PrepareRAM func(ramBytes int64) ([]byte, error)
	// Discard is called when a migration fails before commit: the RAM
	// PrepareRAM returned is garbage now.
	Discard func()
	// Resume starts the guest on the received RAM and device state; it
	// is called at the commit, and the source's downtime lasts until it
	// returns.
	Resume func(state []byte) error
	// InDoubtTimeout bounds waiting for the source's verdict after the
	// connection broke between ready and commit; 0 =
	// DefaultInDoubtTimeout. When it expires the migration is discarded.
	InDoubtTimeout time.Duration
	// VerifyRAM rehashes all of RAM from the memfd (or the mapping)
	// before the digest is compared, instead of trusting the checksums
	// of the pages as they were written: the digest then also sees a
	// page changed behind the decoder's back since it was written. It
	// costs a read of all of RAM inside the source's pause (see
	// RAMDigest and BENCHMARKS.md for the price).
	VerifyRAM bool
	// FaultHook, for tests: "ready" (before acknowledging the digest),
	// "committed" (after Resume), and "stream-round-end" from each page
	// stream's goroutine, with the stream's index in place of the round,
	// at a RoundEnd before that stream hashes the round's chunks.
	FaultHook func(point string, round int)
}

// DestStats describe a received migration.
type DestStats struct {
	Transport   string    `json:"transport"`
	PageStreams int       `json:"page_streams"`
	Rounds      int       `json:"rounds"`
	StateBytes  int       `json:"device_state_bytes"`
	TotalTimeMs float64   `json:"total_time_ms"`
	Pages       PageStats `json:"pages"`
	InDoubt     bool      `json:"in_doubt"` // the commit came over a redial
}

// ErrNotCommitted: the migration ended before the source's commit; the
// destination discarded what it received.
var ErrNotCommitted = errors.New("migrate: migration not committed; discarded")

type outcome int

const (
	outcomeFailed outcome = iota
	outcomeRejected
	outcomeInDoubt
	outcomeCommitted
)

type dest struct {
	opts      DestOptions
	ram       []byte
	state     []byte
	token     uint64
	committed uint64 // token of the last committed migration, for late resolves
	// lingerLater: committed, but the source's goodbye never came, so it
	// may redial to learn the outcome.
	lingerLater bool
	st          DestStats
}

// Receive waits on l for one migration and runs it to the end. It returns
// nil once the guest was resumed here (DestOptions.Resume returned), or an
// error after the migration failed, was aborted or, in doubt, got no
// verdict in time; then Discard has been called. Connections that are not
// a new migration (a stray resolve) are answered and dropped. Receive does
// not close l.
func Receive(ctx context.Context, l Listener, opts DestOptions) (*DestStats, error) {
	if opts.PrepareRAM == nil || opts.Resume == nil {
		return nil, errors.New("migrate: Receive needs PrepareRAM and Resume")
	}
	if opts.InDoubtTimeout <= 0 {
		opts.InDoubtTimeout = DefaultInDoubtTimeout
	}
	d := &dest{opts: opts}
	for {
		conn, err := l.Accept(ctx)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		out, err := d.run(ctx, conn)
		d.st.TotalTimeMs = ms(time.Since(start))
		switch out {
		case outcomeRejected:
			continue
		case outcomeCommitted:
			if d.lingerLater {
				d.linger(ctx, l)
			}
			return &d.st, nil
		case outcomeInDoubt:
			d.st.InDoubt = true
			if rerr := d.awaitVerdict(ctx, l); rerr != nil {
				d.discard()
				return &d.st, fmt.Errorf("%w: in doubt after %v, then %v", ErrNotCommitted, err, rerr)
			}
			return &d.st, nil
		default:
			d.discard()
			return &d.st, fmt.Errorf("%w: %v", ErrNotCommitted, err)
		}
	}
}

func (d *dest) discard() {
	if d.ram != nil && d.opts.Discard != nil {
		d.opts.Discard()
	}
	d.ram, d.state = nil, nil
}

func (d *dest) hook(point string, round int) {
	if d.opts.FaultHook != nil {
		d.opts.FaultHook(point, round)
	}
}

type destEvent struct {
	stream int // -1: control
	frame  Frame
	err    error
}

// run serves one connection: a new migration or a resolve.
func (d *dest) run(ctx context.Context, conn Conn) (out outcome, err error) {
	ctl := conn.Control()
	enc, _ := NewEncoder(ctl, EncoderOptions{})
	dec := NewDecoder(ctl, 0)
	defer dec.Close()
	fail := func(code uint32, err error) (outcome, error) {
		enc.WriteError(ErrorInfo{Code: code, Message: err.Error()})
		conn.Abort(err.Error())
		return outcomeFailed, err
	}

	ctl.SetDeadline(time.Now().Add(handshakeTimeout))
	f, err := dec.Next()
	if err != nil {
		conn.Abort("no hello")
		return outcomeRejected, err
	}
	hello, err := f.Hello()
	if err != nil {
		conn.Abort("bad hello")
		return outcomeRejected, err
	}
	if int(hello.PageStreams) != len(conn.Pages()) {
		enc.WriteError(ErrorInfo{Code: codeProtocol, Message: "hello disagrees with the connection's page streams"})
		conn.Abort("")
		return outcomeRejected, corrupt("hello with %d page streams on a connection of %d", hello.PageStreams, len(conn.Pages()))
	}
	token := newToken()
	if err := enc.WriteAck(token); err != nil {
		conn.Abort("")
		return outcomeRejected, err
	}
	f, err = dec.Next()
	if err != nil {
		// The source had its token: this migration failed (nothing
		// was received yet, so there is nothing to discard).
		conn.Abort("")
		return outcomeFailed, fmt.Errorf("migrate: after hello: %w", err)
	}
	if f.Type == FrameAck {
		// A resolve for a migration this side no longer holds in
		// doubt: confirm a commit that already happened, refuse the rest.
		d.answerStrayResolve(conn, enc, dec, f.Index)
		return outcomeRejected, nil
	}
	if f.Type != FrameRoundStart || f.Index != 0 {
		conn.Abort("")
		return outcomeRejected, corrupt("migration opened with a %s frame (index %d)", f.Type, f.Index)
	}
	ctl.SetDeadline(time.Time{})

	d.token = token
	d.st = DestStats{Transport: conn.Transport(), PageStreams: len(conn.Pages())}
	ram, err := d.opts.PrepareRAM(int64(hello.RAMBytes))
	if err != nil {
		return fail(codeGuest, fmt.Errorf("migrate: destination refuses %d bytes of RAM: %w", hello.RAMBytes, err))
	}
	if uint64(len(ram)) != hello.RAMBytes {
		return fail(codeGuest, fmt.Errorf("migrate: destination prepared %d bytes of RAM for %d", len(ram), hello.RAMBytes))
	}
	d.ram = ram
	return d.receive(ctx, conn, enc, dec)
}

// receive runs the rounds, the verification and the commit of a migration
// whose round 0 has started.
func (d *dest) receive(ctx context.Context, conn Conn, enc *Encoder, dec *Decoder) (outcome, error) {
	ramPages := uint64(len(d.ram) / PageBytes)
	dec.SetRAMPages(ramPages)
	digest, err := NewRAMDigest(int64(len(d.ram)))
	if err != nil {
		return outcomeFailed, err
	}
	// PrepareRAM gave fresh RAM: it reads as zero, and reading it would
	// allocate it.
	digest.SetZero()
	streams := conn.Pages()
	n := len(streams)
	events := make(chan destEvent, 2*n+4)
	quit := make(chan struct{})
	cont := make([]chan struct{}, n)
	stats := make([]PageStats, n)
	var wg sync.WaitGroup
	defer func() {
		close(quit)
		conn.Abort("done")
		wg.Wait()
	}()
	send := func(ev destEvent) bool {
		select {
		case events <- ev:
			return true
		case <-quit:
			return false
		}
	}
	for i, ps := range streams {
		cont[i] = make(chan struct{}, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.readPages(i, n, ps, ramPages, digest, &stats[i], send, cont[i], quit)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			f, err := dec.Next()
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				send(destEvent{stream: -1, err: fmt.Errorf("control stream: %w", err)})
				return
			}
			c := *f
			c.Payload = append([]byte(nil), f.Payload...)
			if !send(destEvent{stream: -1, frame: c}) {
				return
			}
		}
	}()

	var (
		lastStarted uint64 // round 0 started before receive
		acked       = int64(-1)
		ends        = map[uint64]int{}
		ds          DeviceState
		want        *Digest
		ready       bool
	)
	failed := func(code uint32, err error) (outcome, error) {
		if ready {
			return outcomeInDoubt, err
		}
		enc.WriteError(ErrorInfo{Code: code, Message: err.Error()})
		return outcomeFailed, err
	}
	for {
		var ev destEvent
		select {
		case ev = <-events:
		case <-ctx.Done():
			return failed(codeCancelled, ctx.Err())
		}
		if ev.err != nil {
			var re *RemoteError
			if errors.As(ev.err, &re) {
				return failed(codeAbort, ev.err)
			}
			return failed(codeProtocol, ev.err)
		}
		f := &ev.frame
		if ev.stream >= 0 { // a page stream reached RoundEnd(f.Index)
			if int64(f.Index) != acked+1 {
				return failed(codeProtocol, corrupt("page stream %d ended round %d, expected %d", ev.stream, f.Index, acked+1))
			}
			ends[f.Index]++
		} else {
			switch f.Type {
			case FrameRoundStart:
				if int64(f.Index) != acked+1 || f.Index != lastStarted+1 || ready || want != nil {
					return failed(codeProtocol, corrupt("round %d started after round %d", f.Index, lastStarted))
				}
				lastStarted = f.Index
			case FrameDeviceState:
				if _, err := ds.Add(f); err != nil {
					return failed(codeProtocol, err)
				}
			case FrameDigest:
				dg, err := f.Digest()
				if err != nil || want != nil {
					return failed(codeProtocol, fmt.Errorf("migrate: digest frame: %v", err))
				}
				want = &dg
			case FrameCommit:
				if !ready {
					return failed(codeProtocol, corrupt("commit before the destination was ready"))
				}
				return d.commit(conn, enc, events, quit)
			case FrameError:
				info, err := f.ErrorInfo()
				if err != nil {
					return failed(codeProtocol, err)
				}
				return failed(codeAbort, &RemoteError{Info: info})
			default:
				return failed(codeProtocol, corrupt("unexpected %s frame on the control stream", f.Type))
			}
		}
		// Acknowledge the round once every stream ended it; then let
		// the streams read on.
		if acked < int64(lastStarted) && ends[lastStarted] == n {
			delete(ends, lastStarted)
			acked = int64(lastStarted)
			d.st.Rounds = int(acked) + 1
			if err := enc.WriteAck(lastStarted); err != nil {
				return failed(codeProtocol, err)
			}
			for _, c := range cont {
				c <- struct{}{}
			}
		}
		if !ready && want != nil && ds.Bytes() != nil && acked == int64(lastStarted) {
			for _, s := range stats {
				d.st.Pages.Add(s)
			}
			if d.opts.VerifyRAM {
				if err := digest.RehashAll(d.ram); err != nil {
					return failed(codeGuest, err)
				}
			}
			got := digest.Sum()
			if got != *want {
				return failed(codeDigest, fmt.Errorf("migrate: RAM digest differs from the source's after round %d", lastStarted))
			}
			d.state = ds.Bytes()
			d.st.StateBytes = len(d.state)
			d.hook("ready", int(lastStarted))
			if err := enc.WriteAck(ackReady); err != nil {
				return outcomeInDoubt, err
			}
			ready = true
		}
	}
}

// destRAMByFile lets benchmarks compare writing raw frames into the
// memfd with pwrite (Decoder.SetRAMFile) against writing through the
// mapping; always true otherwise.
var destRAMByFile = true

// destChunkSums lets benchmarks compare taking the checksums of chunks
// as written (Decoder.ChunkSum) against reading every chunk back; always
// true otherwise.
var destChunkSums = true

// readPages applies one page stream's frames to RAM. At each RoundEnd it
// updates the digest for what the round wrote (they belong to this stream:
// see chunkPages): the bulk pass's chunks from their checksums as written
// or read back, later rounds' pages from their recorded changes. Then it
// reports and waits for the round's acknowledgement.
func (d *dest) readPages(i, streams int, ps Stream, ramPages uint64, digest *RAMDigest, st *PageStats,
	send func(destEvent) bool, cont, quit chan struct{}) {
	dec := NewDecoder(ps, ramPages)
	defer dec.Close()
	fd := -1
	if destRAMByFile {
		fd = ramFileForWrite(d.ram)
	}
	var chunkBuf []byte
	if fd >= 0 {
		defer closeRAMFile(fd)
		dec.SetRAMFile(fd)
		chunkBuf = make([]byte, DigestChunkBytes)
	}
	touched := NewBitmap(int(ramPages))
	dec.SetTouched(touched)
	// Round 0 writes into fresh RAM: zero pages are there already.
	dec.SetSkipZero(true)
	populated := NewBitmap((int(ramPages) + chunkPages - 1) / chunkPages)
	populate, round0 := true, true
	for {
		f, err := dec.Next()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			send(destEvent{stream: i, err: fmt.Errorf("page stream %d: %w", i, err)})
			return
		}
		switch f.Type {
		case FramePages:
			if populate && !(f.Encoding == EncZero && round0) && !dec.WritesByFile() {
				// Allocate a chunk's pages in one call before its
				// first write rather than one fault per page.
				last := f.Index
				if f.Encoding != EncBatch {
					last = min(f.Index+uint64(f.Count), ramPages) - 1
				}
				for c := int(f.Index / chunkPages); c <= int(last/chunkPages); c++ {
					if !populated.Test(c) {
						populated.Set(c)
						from, to := c*chunkPages*PageBytes, min((c+1)*chunkPages, int(ramPages))*PageBytes
						if PopulateWrite(d.ram[from:to]) != nil {
							populate = false
							break
						}
					}
				}
			}
			s, err := dec.ApplyPages(f, d.ram)
			if err != nil {
				send(destEvent{stream: i, err: fmt.Errorf("page stream %d: %w", i, err)})
				return
			}
			st.Add(s)
		case FrameRoundEnd:
			d.hook("stream-round-end", i)
			for p := touched.NextSet(0); p >= 0; {
				c := p / chunkPages
				if StreamOf(uint64(p), streams) != i {
					// Pages must keep to their stream (StreamOf): it
					// orders their versions and owns their chunk.
					send(destEvent{stream: i, err: corrupt("page %d arrived on stream %d, belongs to %d", p, i, StreamOf(uint64(p), streams))})
					return
				}
				p = touched.NextSet((c + 1) * chunkPages)
			}
			// After the bulk pass the decoder recorded how each page
			// it wrote changed its chunk's checksum (pagesum.go); the
			// chunks are this stream's (checked above).
			dec.TakePageChanges(digest.ApplyChunkChange)
			for p := touched.NextSet(0); p >= 0 && round0; {
				c := p / chunkPages
				if crc, ok := dec.ChunkSum(c); ok && destChunkSums {
					// Wholly written this round by in-order run
					// frames: the checksum of what was written.
					digest.SetChunk(c, crc)
				} else if fd >= 0 {
					// Read as it is now in RAM.
					if err := digest.UpdateChunkFile(fd, c, chunkBuf); err != nil {
						send(destEvent{stream: i, err: err})
						return
					}
				} else {
					digest.UpdateChunk(d.ram, c)
				}
				p = touched.NextSet((c + 1) * chunkPages)
			}
			touched.Reset()
			dec.ResetChunkSums()
			round0 = false
			dec.SetSkipZero(false)
			dec.SetPageChanges(true)
			if !send(destEvent{stream: i, frame: Frame{Type: FrameRoundEnd, Index: f.Index}}) {
				return
			}
			select {
			case <-cont:
			case <-quit:
				return
			}
		default:
			send(destEvent{stream: i, err: corrupt("page stream %d carries a %s frame", i, f.Type)})
			return
		}
	}
}

// commit resumes the guest here, confirms, and waits for the source's
// goodbye; without it the source may not have the confirmation, so the
// caller lingers for its redial (awaitVerdict answers it).
func (d *dest) commit(conn Conn, enc *Encoder, events chan destEvent, quit chan struct{}) (outcome, error) {
	if err := d.opts.Resume(d.state); err != nil {
		enc.WriteError(ErrorInfo{Code: codeGuest, Message: "resume on the destination: " + err.Error()})
		return outcomeFailed, fmt.Errorf("migrate: resume on the destination: %w", err)
	}
	d.committed = d.token
	d.hook("committed", d.st.Rounds)
	if err := enc.WriteAck(ackResumed); err != nil {
		d.lingerLater = true
		return outcomeCommitted, nil
	}
	t := time.NewTimer(closeWaitTimeout)
	defer t.Stop()
	for {
		select {
		case ev := <-events:
			if ev.stream == -1 && ev.err == nil && ev.frame.Type == FrameAck && ev.frame.Index == ackResumed {
				conn.Close()
				return outcomeCommitted, nil
			}
			if ev.stream == -1 && ev.err != nil {
				d.lingerLater = true
				return outcomeCommitted, nil
			}
		case <-t.C:
			d.lingerLater = true
			return outcomeCommitted, nil
		}
	}
}
