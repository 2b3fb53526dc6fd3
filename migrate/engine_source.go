package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// SourceOptions configures the sending side.
type SourceOptions struct {
	Compression     Compression   // default CompressAuto when zero value is wanted: set it
	DeltaCacheBytes int64         // XBZRLE cache, split between streams; 0 = DefaultDeltaCacheBytes, <0 = none
	DowntimeLimit   time.Duration // 0 = DefaultDowntimeLimit
	MaxRounds       int           // 0 = DefaultMaxRounds
	Timeout         time.Duration // whole migration; 0 = DefaultTimeout
	NoAutoConverge  bool
	// BandwidthBytesPerSecond caps the page streams; 0 = no cap.
	BandwidthBytesPerSecond int64
	// Redial opens a new connection to the same destination, to settle a
	// switchover whose connection broke (see the protocol in engine.go).
	// nil: no redial; a lost commit is then ErrInDoubt.
	Redial func(ctx context.Context) (Conn, error)
	// Progress is called every ProgressInterval and at every round, from
	// one goroutine at a time.
	Progress         func(Progress)
	ProgressInterval time.Duration // 0 = 250 ms
	// Handoff, when set, runs inside the pause after the destination
	// said it is ready and before the commit: it moves what the guest
	// uses outside its RAM (the primary role of its volumes) to the
	// destination. It must either complete or leave everything as it
	// found it (undo a partial move itself) and return an error; an
	// error cancels the migration and the guest resumes here. Once it
	// returned nil the source commits whatever happens next (a cancel
	// included): the guest's disks are already on the destination's
	// side, so resuming here would leave the guest and its disks on
	// different nodes. Its time counts in the downtime and is reported
	// as Stats.HandoffMs. ctx ends with the migration (cancel, timeout).
	Handoff func(ctx context.Context) error
	// VerifyRAM rehashes all of RAM once the guest is paused, before the
	// digest is sent, instead of trusting the checksums of the pages as
	// they were sent: the digest then also sees a page the guest changed
	// without the tracker reporting it (a write through a mapping the
	// tracker does not cover). It costs a read of all of RAM inside the
	// pause.
	VerifyRAM bool
	// FaultHook, for tests, is called at named points: "hello", "round"
	// (after each acknowledged pre-copy round), "paused", "ready",
	// "handoff" (after a hand-off that succeeded), "committed". A test
	// cuts the connection there.
	FaultHook func(point string, round int)
}

type source struct {
	g     Guest
	tr    Tracker
	conn  Conn
	opts  SourceOptions
	ram   []byte
	pages int

	ctl    *Encoder
	encs   []*Encoder
	events chan ctlEvent
	done   chan struct{}
	digest *RAMDigest
	conv   *Convergence
	token  uint64

	start    time.Time
	st       Stats
	progMu   sync.Mutex
	status   atomic.Value // string
	round    atomic.Int64
	roundPgs atomic.Uint64 // pages this round sends
	sentPgs  atomic.Uint64 // pages of this round sent so far
	wireBase atomic.Uint64 // wire bytes before this round
	lastDec  atomic.Pointer[Decision]
	dirtyBps atomic.Uint64 // float64 bits would be overkill: whole bytes/s
}

type ctlEvent struct {
	ack uint64
	err error
}

// Migrate moves g to the destination at the other end of conn: pre-copy
// rounds while g runs, then pause, the rest, the device state, the digest
// check and the two-phase commit. tr must track every mapping g writes
// through; Migrate starts it (the caller closes it).
//
// On success (Status completed) the guest belongs to the destination: g is
// left paused and the caller stops it. On any error before the commit, g
// runs again on the source, unthrottled, its memory untouched, and the
// destination is told to discard what it received. After the commit the
// error is ErrInDoubt at worst, and g stays paused.
//
// Stats are returned in every case.
func Migrate(ctx context.Context, g Guest, tr Tracker, conn Conn, opts SourceOptions) (*Stats, error) {
	s := &source{g: g, tr: tr, conn: conn, opts: opts, ram: g.RAM(), start: time.Now()}
	s.st = Stats{Status: StatusSetup, Transport: conn.Transport(), PageStreams: len(conn.Pages()), TotalBytes: uint64(len(s.ram))}
	s.status.Store(StatusSetup)
	err := s.run(ctx)
	s.finish(err)
	return &s.st, err
}

func (s *source) defaults() error {
	o := &s.opts
	if o.DowntimeLimit == 0 {
		o.DowntimeLimit = DefaultDowntimeLimit
	}
	if o.MaxRounds == 0 {
		o.MaxRounds = DefaultMaxRounds
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 250 * time.Millisecond
	}
	if o.DeltaCacheBytes == 0 {
		o.DeltaCacheBytes = DefaultDeltaCacheBytes
	}
	if o.DeltaCacheBytes < 0 {
		o.DeltaCacheBytes = 0
	}
	if o.BandwidthBytesPerSecond < 0 {
		return fmt.Errorf("migrate: negative bandwidth %d", o.BandwidthBytesPerSecond)
	}
	if len(s.ram) == 0 || len(s.ram)%PageBytes != 0 || int64(len(s.ram)) > MaxMemoryBytes {
		return fmt.Errorf("migrate: guest RAM of %d bytes", len(s.ram))
	}
	s.pages = len(s.ram) / PageBytes
	if s.tr.Pages() != s.pages {
		return fmt.Errorf("migrate: tracker covers %d pages, RAM has %d", s.tr.Pages(), s.pages)
	}
	var err error
	s.conv, err = NewConvergence(ConvergenceConfig{
		DowntimeLimit: o.DowntimeLimit, MaxRounds: o.MaxRounds, Timeout: o.Timeout, AutoConverge: !o.NoAutoConverge,
	})
	return err
}

func (s *source) hook(point string, round int) {
	if s.opts.FaultHook != nil {
		s.opts.FaultHook(point, round)
	}
}

// run is the migration; on return s.st says how it ended.
func (s *source) run(ctx context.Context) (err error) {
	if err := s.defaults(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()

	var committed, paused, mayBeReady bool
	// Cancel unblocks every read and write by tearing the connection
	// down; after the commit nothing may be torn down.
	stopAbort := context.AfterFunc(ctx, func() { s.conn.Abort("cancelled") })
	defer func() {
		stopAbort()
		if committed {
			return
		}
		s.conn.Abort(fmt.Sprint(err))
		s.g.Throttle(0)
		if paused {
			if rerr := s.g.Resume(); rerr != nil {
				err = fmt.Errorf("%w; and resuming the guest on the source failed: %v", err, rerr)
			}
		}
		if mayBeReady && s.opts.Redial != nil {
			// The destination may be in doubt: tell it to discard,
			// once, briefly. If this fails it times out and discards.
			rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
			s.resolveOnce(rctx, false)
			rcancel()
		}
	}()

	s.done = make(chan struct{})
	defer close(s.done)
	s.events = make(chan ctlEvent, 16)
	ctlDec := NewDecoder(s.conn.Control(), 0)
	defer ctlDec.Close()
	go s.readControl(ctlDec)

	s.ctl, _ = NewEncoder(s.conn.Control(), EncoderOptions{})
	streams := s.conn.Pages()
	var limiter *rateLimiter
	if s.opts.BandwidthBytesPerSecond > 0 {
		limiter = newRateLimiter(s.opts.BandwidthBytesPerSecond)
	}
	for _, ps := range streams {
		var w io.Writer = ps
		if limiter != nil {
			w = limitedWriter{w: ps, l: limiter}
		}
		e, err := NewEncoder(w, EncoderOptions{Compression: s.opts.Compression, DeltaCacheBytes: s.opts.DeltaCacheBytes / int64(len(streams))})
		if err != nil {
			return err
		}
		s.encs = append(s.encs, e)
	}
	if s.digest, err = NewRAMDigest(int64(len(s.ram))); err != nil {
		return err
	}

	stopProgress := s.startProgress()
	defer stopProgress()

	if err := s.ctl.WriteHello(Hello{RAMBytes: uint64(len(s.ram)), PageBytes: PageBytes, PageStreams: uint32(len(streams))}); err != nil {
		return s.wrap(ctx, "hello", err)
	}
	if s.token, err = s.waitAck(ctx, 0, controlTimeout); err != nil {
		return s.wrap(ctx, "hello", err)
	}
	s.hook("hello", 0)
	if err := s.tr.Start(); err != nil {
		return err
	}
	s.st.SetupTimeMs = ms(time.Since(s.start))
	s.setStatus(StatusActive)

	dirty := NewBitmap(s.pages)
	lastCollect := time.Now()
	round := 0
	roundStart := time.Now()
	sent, err := s.sendRound(ctx, 0, nil)
	if err != nil {
		return s.wrap(ctx, "round 0", err)
	}
	for {
		if _, err := s.waitAck(ctx, uint64(round), 0); err != nil {
			return s.wrap(ctx, fmt.Sprintf("round %d", round), err)
		}
		roundTime := time.Since(roundStart)
		s.hook("round", round)
		collectAt := time.Now()
		n, err := s.tr.Collect(dirty)
		if err != nil {
			return err
		}
		collectTime := time.Since(collectAt)
		s.st.DirtySyncCount++
		now := time.Now()
		if dt := now.Sub(lastCollect).Seconds(); dt > 0 {
			s.st.DirtyPagesRate = float64(n) / dt
			s.dirtyBps.Store(uint64(float64(n) * PageBytes / dt))
		}
		lastCollect = now
		d := s.conv.Next(RoundMeasure{
			Round: round, SentBytes: sent, Duration: roundTime,
			DirtyBytes: uint64(dirty.Count()) * PageBytes, CollectTime: collectTime, Elapsed: time.Since(s.start),
		})
		s.lastDec.Store(&d)
		s.st.ExpectedDowntimeMs = ms(d.ExpectedDowntime)
		if d.ThrottlePercent != s.st.ThrottlePercent {
			s.st.ThrottlePercent = d.ThrottlePercent
			s.g.Throttle(d.ThrottlePercent)
		}
		if d.Action == ActionCancel {
			s.st.RemainingBytes = uint64(dirty.Count()) * PageBytes
			return &cancelError{reason: d.Reason}
		}
		if d.Action == ActionSwitchover {
			break
		}
		round++
		roundStart = time.Now()
		if sent, err = s.sendRound(ctx, round, dirty); err != nil {
			return s.wrap(ctx, fmt.Sprintf("round %d", round), err)
		}
		dirty.Reset()
	}

	// Switchover: from here the guest is paused until it resumes on one
	// side or the other.
	pauseAt := time.Now()
	if err := s.g.Pause(); err != nil {
		return fmt.Errorf("migrate: pausing the guest: %w", err)
	}
	paused = true
	s.setStatus(StatusDevice)
	s.hook("paused", round)
	if _, err := s.tr.Collect(dirty); err != nil {
		return err
	}
	s.st.DirtySyncCount++
	round++
	if _, err := s.sendRound(ctx, round, dirty); err != nil {
		return s.wrap(ctx, "last round", err)
	}
	state, err := s.g.State()
	if err != nil {
		return fmt.Errorf("migrate: guest device state: %w", err)
	}
	if err := s.ctl.WriteDeviceState(state); err != nil {
		return s.wrap(ctx, "device state", err)
	}
	if s.opts.VerifyRAM {
		verifyAt := time.Now()
		if err := s.digest.RehashAll(s.ram); err != nil {
			return err
		}
		s.st.VerifyMs = ms(time.Since(verifyAt))
	}
	if err := s.ctl.WriteDigest(s.digest.Sum()); err != nil {
		return s.wrap(ctx, "digest", err)
	}
	mayBeReady = true
	if _, err := s.waitAck(ctx, uint64(round), 0); err != nil {
		return s.wrap(ctx, "last round", err)
	}
	if _, err := s.waitAck(ctx, ackReady, controlTimeout); err != nil {
		return s.wrap(ctx, "destination verification", err)
	}
	s.hook("ready", round)
	if err := ctx.Err(); err != nil {
		return s.wrap(ctx, "switchover", err)
	}
	if s.opts.Handoff != nil {
		// Before the commit, so that a failed hand-off can still
		// resume the guest here (with its volumes, which the hand-off
		// left or put back here). Not after: a committed guest whose
		// volumes cannot follow would run on the destination with
		// its disks served by the old primary's epoch, which the
		// destination cannot undo. The destination, ready, simply
		// waits for the commit meanwhile.
		s.setStatus(StatusHandoff)
		handoffAt := time.Now()
		herr := s.opts.Handoff(ctx)
		s.st.HandoffMs = ms(time.Since(handoffAt))
		if herr != nil {
			return fmt.Errorf("migrate: volume hand-off: %w", herr)
		}
		s.hook("handoff", round)
	}

	// The commit point. From here the guest never resumes on the source.
	committed = true
	stopAbort()
	s.st.RemainingBytes = 0
	werr := s.ctl.WriteCommit()
	s.hook("committed", round)
	if werr == nil {
		_, werr = s.waitAck(context.Background(), ackResumed, controlTimeout)
	}
	if werr != nil {
		s.conn.Abort("confirmation lost")
		rctx, rcancel := context.WithTimeout(context.Background(), resolveTimeout)
		defer rcancel()
		if rerr := s.resolve(rctx, true); rerr != nil {
			s.st.DowntimeMs = ms(time.Since(pauseAt))
			return fmt.Errorf("%w: %v; redial: %v", ErrInDoubt, werr, rerr)
		}
		s.st.DowntimeMs = ms(time.Since(pauseAt))
		return nil
	}
	s.st.DowntimeMs = ms(time.Since(pauseAt))
	// Goodbye: the destination then knows this side has its
	// confirmation and need not wait for a redial. Wait for its close so
	// that ours does not drop the goodbye in flight.
	if s.ctl.WriteAck(ackResumed) == nil {
		t := time.NewTimer(closeWaitTimeout)
		select {
		case <-s.events:
		case <-t.C:
		}
		t.Stop()
	}
	s.conn.Close()
	return nil
}

// cancelError is a cancel by a limit (rounds, timeout).
type cancelError struct{ reason string }

func (e *cancelError) Error() string { return "migrate: cancelled: " + e.reason }

// wrap names the step that failed, and prefers the context's reason.
func (s *source) wrap(ctx context.Context, step string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(cerr, context.DeadlineExceeded) {
			return &cancelError{reason: fmt.Sprintf("timeout %v reached during %s", s.opts.Timeout, step)}
		}
		return fmt.Errorf("migrate: %s: %w", step, cerr)
	}
	return fmt.Errorf("migrate: %s: %w", step, err)
}

func (s *source) setStatus(st string) {
	s.status.Store(st)
	s.progMu.Lock()
	s.st.Status = st
	s.progMu.Unlock()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// finish fills the final stats.
func (s *source) finish(err error) {
	s.progMu.Lock()
	defer s.progMu.Unlock()
	var ce *cancelError
	switch {
	case err == nil:
		s.st.Status = StatusCompleted
	case errors.Is(err, ErrInDoubt):
		s.st.Status = StatusInDoubt
	case errors.As(err, &ce), errors.Is(err, context.Canceled):
		s.st.Status = StatusCancelled
	default:
		s.st.Status = StatusFailed
	}
	if err != nil {
		s.st.Error = err.Error()
	}
	s.st.TotalTimeMs = ms(time.Since(s.start))
	var ps PageStats
	for _, e := range s.encs {
		ps.Add(e.Stats())
	}
	if s.ctl != nil {
		ps.WireBytes += s.ctl.Stats().WireBytes
	}
	s.st.Pages = ps
	s.st.TransferredBytes = ps.WireBytes
	s.st.DuplicatePages = ps.ZeroPages
	s.st.NormalPages = ps.RawPages
	if s.st.TotalTimeMs > 0 {
		s.st.Mbps = float64(ps.WireBytes) * 8 / 1e6 / (s.st.TotalTimeMs / 1000)
	}
	s.st.Rounds = int(s.round.Load()) + 1
}

// readControl turns control frames from the destination into events.
func (s *source) readControl(dec *Decoder) {
	send := func(ev ctlEvent) bool {
		select {
		case s.events <- ev:
			return true
		case <-s.done:
			return false
		}
	}
	for {
		f, err := dec.Next()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			send(ctlEvent{err: fmt.Errorf("control stream: %w", err)})
			return
		}
		switch f.Type {
		case FrameAck:
			if !send(ctlEvent{ack: f.Index}) {
				return
			}
		case FrameError:
			info, err := f.ErrorInfo()
			if err != nil {
				send(ctlEvent{err: err})
			} else {
				send(ctlEvent{err: &RemoteError{Info: info}})
			}
			return
		default:
			send(ctlEvent{err: corrupt("destination sent a %s frame", f.Type)})
			return
		}
	}
}

// waitAck waits for the next acknowledgement, which must be want. Before
// the token is known (the hello's acknowledgement) any valid token is
// taken and returned. timeout 0: only ctx bounds the wait.
func (s *source) waitAck(ctx context.Context, want uint64, timeout time.Duration) (uint64, error) {
	var tc <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		tc = t.C
	}
	select {
	case ev := <-s.events:
		if ev.err != nil {
			return 0, ev.err
		}
		if s.token == 0 {
			if ev.ack == 0 || ev.ack >= 1<<62 {
				return 0, corrupt("hello acknowledged with token %#x", ev.ack)
			}
			return ev.ack, nil
		}
		if ev.ack != want {
			return 0, corrupt("acknowledgement of %#x, waiting for %#x", ev.ack, want)
		}
		return ev.ack, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-tc:
		return 0, fmt.Errorf("no acknowledgement in %v", timeout)
	}
}

// sendRound sends round r: all of RAM for round 0 (dirty nil), else the
// pages set in dirty. Each page stream sends its share, rehashes what it
// sent for the digest (chunks in the bulk pass, pages after), and ends
// with a RoundEnd barrier. It returns the wire
// bytes of the round's pages.
func (s *source) sendRound(ctx context.Context, r int, dirty *Bitmap) (uint64, error) {
	n := len(s.encs)
	count := s.pages
	if dirty != nil {
		count = dirty.Count()
	}
	s.round.Store(int64(r))
	s.roundPgs.Store(uint64(count))
	s.sentPgs.Store(0)
	var wireBefore uint64
	for _, e := range s.encs {
		wireBefore += e.Stats().WireBytes
	}
	s.wireBase.Store(wireBefore)
	if err := s.ctl.WriteRoundStart(uint64(r), RoundStart{DirtyPages: uint64(count)}); err != nil {
		return 0, err
	}
	var lists [][]uint64
	if dirty != nil {
		lists = make([][]uint64, n)
		for p := dirty.NextSet(0); p >= 0; p = dirty.NextSet(p + 1) {
			i := StreamOf(uint64(p), n)
			lists[i] = append(lists[i], uint64(p))
		}
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, e := range s.encs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			before := e.Stats()
			var err error
			if dirty == nil {
				err = s.sendAll(e, i, n)
			} else {
				err = s.sendPages(e, lists[i])
			}
			if err == nil {
				err = e.WriteRoundEnd(uint64(r), e.Stats().Sub(before))
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	var wire uint64
	for _, e := range s.encs {
		wire += e.Stats().WireBytes
	}
	return wire - wireBefore, errors.Join(errs...)
}

// chunkPages is the digest chunk in pages; it equals StreamChunkPages, so
// each digest chunk travels on one stream and is hashed by its sender.
const chunkPages = DigestChunkBytes / PageBytes

func init() {
	if chunkPages != StreamChunkPages {
		panic("migrate: digest chunks must match stream chunks")
	}
}

// sourceRAMByFile lets benchmarks compare the bulk pass reading RAM with
// pread on its memfd (Encoder.WriteRunFile) against copying it through
// the mapping; always true otherwise.
var sourceRAMByFile = true

// sendAll is stream i's share of the bulk pass.
func (s *source) sendAll(e *Encoder, i, n int) error {
	mg, _ := s.g.(interface{ Memory() *Memory })
	fd := -1
	if sourceRAMByFile {
		fd = ramFile(s.ram)
	}
	if fd >= 0 {
		defer closeRAMFile(fd)
	}
	for c := i; c*chunkPages < s.pages; c += n {
		from, to := c*chunkPages, min((c+1)*chunkPages, s.pages)
		if mg != nil && mg.Memory().IsHole(int64(from)*PageBytes, int64(to-from)*PageBytes) {
			// Never written: zero, and reading it would allocate it.
			if err := e.writeZeroRun(uint64(from), to-from); err != nil {
				return err
			}
			s.digest.SetChunkZero(c)
			s.sentPgs.Add(uint64(to - from))
			continue
		}
		if fd >= 0 {
			// The chunk's checksum is of the bytes as sent: a page
			// written since differs from it, but was written after
			// the tracker started, so it is sent again and
			// rehashed in a later round.
			if _, err := e.WriteRunFile(fd, uint64(from), to-from, s.digest.ChunkPageSums(c)); err != nil {
				return err
			}
			s.digest.SetChunkFromPageSums(c)
			s.sentPgs.Add(uint64(to - from))
			continue
		}
		if err := e.WriteRun(uint64(from), s.ram[from*PageBytes:to*PageBytes]); err != nil {
			return err
		}
		s.digest.UpdateChunk(s.ram, c)
		s.sentPgs.Add(uint64(to - from))
	}
	return nil
}

// sendPagesBatch bounds the pages per WritePages call, so progress moves
// and a stream's list is consumed in steps.
const sendPagesBatch = 4096

// sendPages sends a stream's dirty pages (ascending) and rehashes them
// for the digest.
func (s *source) sendPages(e *Encoder, list []uint64) error {
	for len(list) > 0 {
		k := min(len(list), sendPagesBatch)
		if err := e.WritePages(s.ram, list[:k]); err != nil {
			return err
		}
		for _, p := range list[:k] {
			// The page as RAM holds it now, at a page's cost (see
			// pagesum.go); its chunk belongs to this stream.
			s.digest.UpdatePage(s.ram, int(p))
		}
		s.sentPgs.Add(uint64(k))
		list = list[k:]
	}
	return nil
}

// startProgress runs the Progress callback until the returned stop.
func (s *source) startProgress() (stop func()) {
	if s.opts.Progress == nil {
		return func() {}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(s.opts.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				s.opts.Progress(s.progress())
			}
		}
	}()
	return func() {
		close(quit)
		wg.Wait()
		s.opts.Progress(s.progress())
	}
}

func (s *source) progress() Progress {
	p := Progress{
		Status:              s.status.Load().(string),
		Round:               int(s.round.Load()),
		ElapsedMs:           ms(time.Since(s.start)),
		RAMBytes:            uint64(len(s.ram)),
		RoundBytes:          s.roundPgs.Load() * PageBytes,
		DirtyBytesPerSecond: float64(s.dirtyBps.Load()),
	}
	sent := s.sentPgs.Load() * PageBytes
	if sent < p.RoundBytes {
		p.RemainingBytes = p.RoundBytes - sent
	}
	// Encoders belong to their stream goroutines: count RAM sent in the
	// round on top of the wire bytes of the rounds before.
	p.TransferredBytes = s.wireBase.Load() + sent
	if d := s.lastDec.Load(); d != nil {
		p.BandwidthBytesPerSecond = d.BandwidthBytesPerSecond
		p.ThrottlePercent = d.ThrottlePercent
		p.ExpectedDowntimeMs = ms(d.ExpectedDowntime)
	}
	return p
}
