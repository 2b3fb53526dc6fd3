package blockrep

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"time"
)

// maintain reconnects peers that are away and resyncs those that came
// back, until the primary closes.
func (p *Primary) maintain() {
	defer p.wg.Done()
	t := time.NewTicker(maintainInterval)
	defer t.Stop()
	var savedAt time.Time
	for {
		// A peer whose link died is down, even if no write failed on
		// it: when it is back it must rejoin (promise, hot extents of
		// its activity log) rather than slip back in on a new link.
		// Without this, a secondary that restarted while no write was
		// sent to it came back without its hot extents being resent, so
		// writes it acknowledged but had not flushed before a power loss
		// were lost on it until a scrub.
		p.mu.Lock()
		for _, pe := range p.peers {
			if pe.link != nil && !pe.link.alive() {
				p.dropLink(pe)
			}
		}
		p.mu.Unlock()
		p.connectAsync()
		p.mu.Lock()
		var back, needSync []*peer
		for _, pe := range p.peers {
			alive := pe.link != nil && pe.link.alive()
			switch {
			case alive && pe.state == PeerDown:
				back = append(back, pe)
			case alive && !pe.noData && !pe.resyncing && (pe.digest || len(pe.compare) > 0 || pe.missed.Count() > 0 || pe.state == PeerSyncing):
				needSync = append(needSync, pe)
			}
		}
		p.mu.Unlock()
		for _, pe := range back {
			p.rejoin(pe)
			p.mu.Lock()
			if pe.state != PeerDown && !pe.noData && !pe.resyncing {
				needSync = append(needSync, pe) // now, not at the next tick
			}
			p.mu.Unlock()
		}
		for _, pe := range needSync {
			p.mu.Lock()
			pe.resyncing = true
			p.mu.Unlock()
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				err := p.resync(pe)
				p.mu.Lock()
				pe.resyncing = false
				p.mu.Unlock()
				if err != nil && p.ctx.Err() == nil {
					p.log.Warn("resync interrupted; it resumes when the replica is back", "replica", pe.id, "err", err)
				}
			}()
		}
		if time.Since(savedAt) >= reconnectInterval {
			savedAt = time.Now()
			if err := p.saveBitmaps(); err != nil {
				p.log.Warn("cannot save the out-of-sync bitmaps", "err", err)
			}
		}
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// rejoin brings a peer that reconnected under this primary's epoch. It
// then catches up as a syncing replica and becomes a member again when it
// has everything.
func (p *Primary) rejoin(pe *peer) {
	p.mu.Lock()
	l := pe.link
	p.mu.Unlock()
	if l == nil {
		return
	}
	a, err := l.call(&Message{Type: MsgPrepare, Volume: p.cfg.VolumeID, From: p.cfg.Self, Epoch: p.epoch}, p.cfg.PeerTimeout)
	if err != nil {
		return
	}
	switch {
	case a.Type == MsgRefuse && a.Epoch >= p.epoch:
		// Promised to another candidate (same epoch) or a newer one:
		// this primary is superseded.
		p.depose(&Refusal{From: a.From, Promised: a.Epoch, Reason: string(a.Payload)})
		return
	case a.Type == MsgPromise:
	default:
		p.log.Warn("replica did not take this primary's epoch", "replica", pe.id, "answer", a.Type, "detail", string(a.Payload))
		l.close()
		return
	}
	blank := a.Flags&FlagBlank != 0
	hotExtents, recExtents, recWhole := PromiseExtents(a)
	recovering := a.Flags&FlagRecovering != 0 && !pe.noData
	if recovering && !blank {
		// It crashed and re-verified extents that no primary resent yet
		// (recovered.go): it may lack acknowledged writes there, so it
		// is no complete copy. Out of the set (so it cannot be chosen
		// as primary or counted up to date) until they are resent.
		p.log.Warn("replica crashed and recovered extents that must be resent; it leaves the generation until they are",
			"replica", pe.id, "extents", len(recExtents), "whole_volume", recWhole)
		if err := p.dropMembers([]NodeID{pe.id}); err != nil {
			return
		}
	}
	if blank {
		// It lost its data and was created again (epoch.go, rule 4):
		// whatever the generation says, it holds nothing; out of the
		// set, then a full comparison (regions that are zero on both
		// sides cost only their digests).
		p.log.Warn("replica lost its data and was created again; it leaves the generation and gets a full resync", "replica", pe.id)
		if err := p.dropMembers([]NodeID{pe.id}); err != nil {
			return
		}
		// Then it stores the current generation (without itself), so it
		// knows the newest one again and may be named a member after the
		// resync; until then it refuses to be one.
		p.genMu.Lock()
		p.mu.Lock()
		g, members := p.gen, slices.Clone(p.members)
		p.mu.Unlock()
		ok, err := l.call(&Message{Type: MsgStoreGen, Volume: p.cfg.VolumeID, From: p.cfg.Self, Epoch: p.epoch, Gen: g, Members: members}, p.cfg.PeerTimeout)
		p.genMu.Unlock()
		if err != nil || ok.Type != MsgStoreGenOK {
			p.log.Warn("blank replica did not store the generation", "replica", pe.id, "err", err)
			l.close()
			return
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if pe.link != l {
		return
	}
	if blank {
		pe.digest = true
	}
	// Its own activity log names what a crash of the primary may have
	// left different there, its recovered record what a crash of its
	// own may have lost. Both are compared by digests, and only the
	// regions that differ are resent (a clean restart keeps its hot
	// extents named: most of them equal here).
	if !pe.digest {
		pe.compare = normExtents(append(pe.compare, hotExtents...))
	}
	if recovering {
		p.noteRecovered(pe, recoveredInfo{extents: recExtents, whole: recWhole})
	}
	if pe.noData {
		pe.state = PeerVoter
		p.log.Info("witness is back", "epoch", p.epoch)
		return
	}
	if slices.Contains(p.members, pe.id) {
		pe.state = PeerMember
	} else {
		pe.state = PeerSyncing
		pe.startSync()
	}
	p.log.Info("replica is back", "replica", pe.id, "state", pe.state, "out_of_sync_bytes", pe.missed.Count()*pe.missed.RegionBytes(), "compare_digests", pe.digest)
}

// resync sends a peer what it misses: first, when the primary does not
// know what that is, it compares digests region by region (only digests
// cross the network); then it sends the marked regions, a bounded window
// at a time, each under its range lock so no client write slips between
// reading it here and writing it there. A syncing peer that has caught
// up joins the generation.
func (p *Primary) resync(pe *peer) error {
	p.mu.Lock()
	l, digest := pe.link, pe.digest
	p.mu.Unlock()
	if l == nil {
		return fmt.Errorf("no link")
	}
	if digest {
		if err := p.compareDigests(pe, l); err != nil {
			return err
		}
		p.mu.Lock()
		// Only for the link compared over: a rejoin on a new link
		// (the replica restarted) may have asked for more meanwhile.
		if pe.link == l {
			pe.digest = false
			pe.compare = nil // the whole volume was compared
		}
		p.mu.Unlock()
	}
	// The extents named for a comparison (hot, recovered) that hold no
	// region marked to send are compared while the marked regions are
	// sent: the two use different parts of the volume and of the
	// machine (digests here and there, against reads, the link and
	// writes there). A region the comparison marks is sent by the next
	// pass below. The other extents are compared after the send: a
	// region compared while its resend is on the way would differ and
	// be sent twice.
	p.mu.Lock()
	apart := p.unmarkedToCompare(pe)
	p.mu.Unlock()
	compared := make(chan error, 1)
	go func() { compared <- p.compareExtentList(pe, l, apart) }()
	sendErr := p.sendMissed(pe, l)
	if err := <-compared; err != nil {
		return err
	}
	if sendErr != nil {
		return sendErr
	}
	if err := p.compareExtents(pe, l); err != nil {
		return err
	}
	for {
		if err := p.sendMissed(pe, l); err != nil {
			return err
		}
		p.mu.Lock()
		resolve := pe.recovering && p.recoveredSent(pe)
		p.mu.Unlock()
		if resolve {
			if err := p.resolvePeer(pe, l); err != nil {
				return err
			}
		}
		p.mu.Lock()
		syncing := pe.state == PeerSyncing
		p.mu.Unlock()
		if !syncing {
			return nil
		}
		// Join: with client writes held, check that nothing new was
		// missed and store the generation with the peer in it.
		p.barrier.Lock()
		p.genMu.Lock()
		p.mu.Lock()
		left := pe.missed.Count()
		again := pe.digest // Discard asked for a comparison meanwhile
		// Not resolved yet (its extents were marked again): resend.
		again = again || pe.recovering
		alive := pe.link == l && l.alive()
		members := append(slices.Clone(p.members), pe.id)
		g := Gen{Epoch: p.epoch, Seq: p.gen.Seq + 1}
		p.mu.Unlock()
		if !alive {
			p.genMu.Unlock()
			p.barrier.Unlock()
			return fmt.Errorf("link lost")
		}
		if again {
			p.genMu.Unlock()
			p.barrier.Unlock()
			return nil // the next round compares digests
		}
		if left > 0 {
			p.genMu.Unlock()
			p.barrier.Unlock()
			continue
		}
		slices.Sort(members)
		err := p.storeGen(g, members)
		if err != nil {
			p.abandon(fmt.Errorf("adding node %d: %w", pe.id, err))
		}
		if err == nil {
			p.mu.Lock()
			pe.state = PeerMember
			now := time.Now()
			pe.lastSync = lastResync{took: now.Sub(pe.syncStarted), resentBytes: pe.resentBytes.Load() - pe.syncResentFrom, endedAt: now}
			took := pe.lastSync.took
			p.mu.Unlock()
			p.log.Info("replica caught up and rejoined the generation", "replica", pe.id, "generation", g,
				"resent_bytes", pe.resentBytes.Load(), "took", took.Round(time.Millisecond))
		}
		p.genMu.Unlock()
		p.barrier.Unlock()
		return err
	}
}

// compareDigests marks the regions where the peer's data differs, by
// data digests: a full comparison (a blank or discarded copy) is to make
// the peer's copy this one's byte for byte, a corrupt block included.
func (p *Primary) compareDigests(pe *peer, l *link) error {
	return p.compareSpan(pe, l, 0, p.Size(), dataDigests)
}

// compareSpan compares [off, off+n) (off on a region) in requests of at
// most compareRequestBytes, compareWindow of them at once: the peer
// digests one while this node digests another (each request also runs
// its two sides at once), where one request for the whole span left one
// side idle while the other worked.
func (p *Primary) compareSpan(pe *peer, l *link, off, n int64, kind digestKind) error {
	rb := p.cfg.RegionBytes
	step := max(rb, min(compareRequestBytes, rb*MaxDigestRegions, 1<<32-1)/rb*rb)
	window := make(chan struct{}, compareWindow)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for pos := off; pos < off+n; pos += step {
		window <- struct{}{}
		mu.Lock()
		err := firstErr
		mu.Unlock()
		if err != nil {
			<-window
			break
		}
		wg.Add(1)
		go func(pos int64) {
			defer wg.Done()
			defer func() { <-window }()
			if err := p.compareRange(pe, l, pos, min(step, off+n-pos), kind); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}(pos)
	}
	wg.Wait()
	return firstErr
}

// compareRange compares the digests of [off, off+n) (at most one digest
// request's worth) here and on the peer, and marks the regions that
// differ. Client writes may land meanwhile: they reach both copies, so a
// region whose digests matched at the two moments they were taken stays
// equal, and one that did not is resent. This node's digests are taken
// while the peer takes its own.
func (p *Primary) compareRange(pe *peer, l *link, off, n int64, kind digestKind) error {
	rb := p.cfg.RegionBytes
	pe.comparedBytes.Add(n)
	differ, err := p.differingRegions(l, off, n, p.cfg.PeerTimeout*4, kind)
	if err != nil {
		return err
	}
	p.mu.Lock()
	for _, i := range differ {
		pe.missed.Mark(off+int64(i)*rb, rb)
	}
	p.mu.Unlock()
	return p.ctx.Err()
}

// digestKind says what a comparison digests.
type digestKind bool

const (
	// dataDigests hash the data (Replica.Digests): they see every byte,
	// and cost both nodes a read of the span.
	dataDigests digestKind = false
	// sumDigests hash the stored block checksums (Store.sumDigests), 4
	// bytes per 4 KiB block: for the extents a restart or a crash names
	// (hot, recovered), where what differs was left by writes. Silent
	// corruption under an intact checksum is scrub's to find.
	sumDigests digestKind = true
)

// differingRegions asks the peer behind l for the digests of the
// regions of off+n, takes this node's own, and returns the indexes of
// the regions that differ.
func (p *Primary) differingRegions(l *link, off, n int64, timeout time.Duration, kind digestKind) ([]int, error) {
	rb := p.cfg.RegionBytes
	req := &Message{Type: MsgDigest, Volume: p.cfg.VolumeID, From: p.cfg.Self, Epoch: p.epoch,
		Offset: uint64(off), Length: uint32(n), Payload: binary.BigEndian.AppendUint64(nil, uint64(rb))}
	local := p.cfg.Local.Digests
	if kind == sumDigests {
		req.Flags |= FlagSums
		local = p.cfg.Local.SumDigests
	}
	type digests struct {
		ds  []uint64
		err error
	}
	here := make(chan digests, 1)
	go func() { // while the peer takes its own
		ds, err := local(off, n, rb)
		here <- digests{ds, err}
	}()
	a, err := l.call(req, timeout)
	mine := <-here
	if err != nil {
		return nil, err
	}
	if a.Type != MsgDigestOK {
		return nil, fmt.Errorf("digests of %d+%d from node %d: %v %s", off, n, a.From, a.Type, truncText(string(a.Payload)))
	}
	if a.Flags&FlagSums != req.Flags&FlagSums {
		return nil, fmt.Errorf("node %d answered with the other kind of digests for %d+%d", a.From, off, n)
	}
	if mine.err != nil {
		return nil, mine.err
	}
	if len(a.Payload) != 8*len(mine.ds) {
		return nil, fmt.Errorf("node %d sent %d digests for %d regions", a.From, len(a.Payload)/8, len(mine.ds))
	}
	var differ []int
	for i, d := range mine.ds {
		if binary.BigEndian.Uint64(a.Payload[8*i:]) != d {
			differ = append(differ, i)
		}
	}
	return differ, nil
}

// sendMissed sends the marked regions until none is left.
func (p *Primary) sendMissed(pe *peer, l *link) error {
	size, rb := p.Size(), p.cfg.RegionBytes
	window := make(chan struct{}, resyncWindow)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	limiter := newRateLimiter()
	from := int64(0)
	for {
		mu.Lock()
		err := firstErr
		mu.Unlock()
		if err != nil {
			break
		}
		if p.ctx.Err() != nil {
			err = p.ctx.Err()
			break
		}
		// The next run of marked regions, up to a chunk.
		p.mu.Lock()
		r := pe.missed.Next(from)
		if r < 0 {
			p.mu.Unlock()
			break
		}
		end := r + 1
		for end*rb < size && (end-r)*rb < resyncChunkBytes && pe.missed.IsSet(end) {
			end++
		}
		p.mu.Unlock()
		off, n := r*rb, min(end*rb, size)-r*rb
		from = end
		window <- struct{}{}
		unlock := p.locks.lock(off, n)
		p.mu.Lock()
		for x := r; x < end; x++ {
			pe.missed.Clear(x)
		}
		e, g := p.epoch, p.gen
		p.mu.Unlock()
		// A pooled buffer: a fresh 1 MiB one per chunk cost page faults
		// and GC work. The frame writer is done with it once call returns.
		fb := getFrame(int(n))
		buf := (*fb)[:n]
		// The read checks every block's checksum; their crc32c
		// folded together is the frame's payload checksum.
		sum, err := p.Store().readAtSum(buf, off)
		if err != nil {
			putFrame(fb)
			unlock()
			<-window
			p.remark(pe, off, n)
			mu.Lock()
			firstErr = fmt.Errorf("reading %d+%d here: %w", off, n, err)
			mu.Unlock()
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-window }()
			defer unlock()
			defer putFrame(fb)
			m := &Message{Type: MsgSyncWrite, Volume: p.cfg.VolumeID, From: p.cfg.Self, Epoch: e, Gen: g,
				Offset: uint64(off), Length: uint32(n), Payload: buf, payloadSum: sum, payloadSumSet: true}
			a, err := l.call(m, p.cfg.PeerTimeout*2)
			if err == nil && a.Type != MsgWriteOK {
				if a.Type == MsgRefuse && a.Epoch > e {
					p.depose(&Refusal{From: a.From, Promised: a.Epoch, Reason: string(a.Payload)})
				}
				err = fmt.Errorf("node %d: %v %s", pe.id, a.Type, a.Payload)
			}
			if err != nil {
				p.remark(pe, off, n)
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			pe.resentBytes.Add(n)
			p.noteResent(pe, l, off, n)
		}()
		limiter.wait(n, p.resyncRate())
	}
	wg.Wait()
	return firstErr
}

// noteResent records that [off, off+n) was resent to pe over l and
// acknowledged.
func (p *Primary) noteResent(pe *peer, l *link, off, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pe.resentLink != l || pe.resent == nil {
		bm, err := NewBitmap(p.Size(), p.cfg.RegionBytes)
		if err != nil {
			return // then nothing is vouched for: every extent is compared
		}
		pe.resent, pe.resentLink = bm, l
	}
	pe.resent.Mark(off, n)
}

// wholeResent says whether every region of extent x (rounded out as
// compared) was resent to pe over l. p.mu held.
func (p *Primary) wholeResent(pe *peer, l *link, x int64) bool {
	if pe.resentLink != l || pe.resent == nil {
		return false
	}
	off, n := p.extentSpan(x, x)
	rb := pe.resent.RegionBytes()
	for r := off / rb; r*rb < off+n; r++ {
		if !pe.resent.IsSet(r) {
			return false
		}
	}
	return n > 0
}

func (p *Primary) remark(pe *peer, off, n int64) {
	p.mu.Lock()
	pe.missed.Mark(off, n)
	p.mu.Unlock()
}

// resyncRate is the current resync ceiling: the floor while clients wrote
// in the last interval, the ceiling otherwise (DRBD's c-min-rate idea:
// resync yields to application I/O, but never below the floor).
func (p *Primary) resyncRate() int64 {
	writes := p.writes.Load()
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.rateSampleAt) > 100*time.Millisecond {
		p.clientBusy = writes != p.rateSampleWrites
		p.rateSampleAt, p.rateSampleWrites = now, writes
	}
	if p.clientBusy && p.cfg.ResyncMinBytesPerSecond > 0 {
		return p.cfg.ResyncMinBytesPerSecond
	}
	return p.cfg.ResyncMaxBytesPerSecond
}

// rateLimiter paces bytes to a rate (0: unlimited).
type rateLimiter struct {
	start time.Time
	sent  int64
	rate  int64
}

func newRateLimiter() *rateLimiter { return &rateLimiter{start: time.Now()} }

func (r *rateLimiter) wait(n, bytesPerSecond int64) {
	if bytesPerSecond != r.rate {
		r.start, r.sent, r.rate = time.Now(), 0, bytesPerSecond
	}
	r.sent += n
	if bytesPerSecond <= 0 {
		return
	}
	due := r.start.Add(time.Duration(float64(r.sent) / float64(bytesPerSecond) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
}

// lastResync is what the last resync of a peer that returned to the
// generation took.
type lastResync struct {
	took        time.Duration
	resentBytes int64
	endedAt     time.Time
}

// startSync marks the start of a peer's resync (p.mu held).
func (pe *peer) startSync() {
	pe.syncStarted = time.Now()
	pe.syncResentFrom = pe.resentBytes.Load()
}

// Discard throws away a replica's data (DRBD's --discard-my-data, from
// the primary's side): the replica leaves the generation, so it can no
// longer become primary, and is compared region by region and overwritten
// with this primary's data wherever it differs; then it rejoins.
func (p *Primary) Discard(id NodeID) error {
	if id == p.cfg.Self {
		return fmt.Errorf("node %d is the primary: move the primary role to another replica first (volume promote)", id)
	}
	p.mu.Lock()
	pe := p.peers[id]
	if pe == nil {
		p.mu.Unlock()
		return fmt.Errorf("node %d holds no replica of volume %d", id, p.cfg.VolumeID)
	}
	pe.digest = true
	member := slices.Contains(p.members, id)
	if pe.state == PeerMember {
		pe.state = PeerSyncing
		pe.startSync()
	}
	p.mu.Unlock()
	if member {
		p.barrier.Lock()
		defer p.barrier.Unlock()
		return p.dropMembers([]NodeID{id})
	}
	return nil
}

// resyncRate measures a resync's rate over a sliding window of samples
// taken when status is asked for (at most every resyncRateSampleMs), so
// the rate follows a rate controller's changes instead of averaging
// from the start.
type resyncRate struct {
	at    [resyncRateSamples]time.Time
	bytes [resyncRateSamples]int64
	n     int
}

const (
	resyncRateSamples  = 16
	resyncRateSampleMs = 250
	resyncRateWindowMs = 4000
)

// observe records resent at now and returns the bytes per second over
// the window (0 until two samples span some time).
func (r *resyncRate) observe(now time.Time, resent int64) int64 {
	last := (r.n - 1 + resyncRateSamples) % resyncRateSamples
	if r.n == 0 || now.Sub(r.at[last]) >= resyncRateSampleMs*time.Millisecond || resent < r.bytes[last] {
		if r.n > 0 && resent < r.bytes[last] {
			r.n = 0 // a new resync: the counter went back
		}
		i := r.n % resyncRateSamples
		r.at[i], r.bytes[i] = now, resent
		r.n++
	}
	if r.n < 2 {
		return 0
	}
	newest := (r.n - 1) % resyncRateSamples
	// The oldest sample still inside the window: status asked for
	// rarely must not average over the idle time before.
	oldest := -1
	for k := max(0, r.n-resyncRateSamples); k < r.n-1; k++ {
		if i := k % resyncRateSamples; now.Sub(r.at[i]) <= resyncRateWindowMs*time.Millisecond {
			oldest = i
			break
		}
	}
	if oldest < 0 {
		return 0
	}
	dt := r.at[newest].Sub(r.at[oldest]).Seconds()
	if dt <= 0 {
		return 0
	}
	return int64(float64(r.bytes[newest]-r.bytes[oldest]) / dt)
}
