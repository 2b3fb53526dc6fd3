package blockrep

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// How a primary treats replicas that crashed (recovered.go): a recovering
// peer is resent its recovered extents, then told so (MsgResolve), and
// only then may it join the generation's set; a recovering candidate
// fetches its own recovered extents from a member that is not recovering
// them before it serves.

// recoveredInfo is what a promise said of a replica's recovered extents.
type recoveredInfo struct {
	extents []int64
	whole   bool
}

func (r recoveredInfo) covers(extent int64) bool {
	return r.whole || slices.Contains(r.extents, extent)
}

// noteRecovered records a peer's recovered extents and has them compared
// by digests, then what differs resent (the whole volume: a full
// comparison). Called with p.mu held or before the primary is shared.
func (p *Primary) noteRecovered(pe *peer, r recoveredInfo) {
	pe.recovering, pe.recovered, pe.recoveredWhole = true, slices.Clone(r.extents), r.whole
	if r.whole {
		pe.digest = true
		return
	}
	pe.compare = normExtents(append(pe.compare, r.extents...))
}

// extentSpan is the range of extents [first, last] rounded out to whole
// regions (a region may be larger than an extent) and cut at the end of
// the volume.
func (p *Primary) extentSpan(first, last int64) (off, n int64) {
	rb := p.cfg.RegionBytes
	off = first * ExtentBytes / rb * rb
	end := min(((last+1)*ExtentBytes+rb-1)/rb*rb, p.Size())
	return off, end - off
}

// compareExtents compares the digests of the extents pe.compare names
// (runs of neighbours in one request) and marks what differs.
func (p *Primary) compareExtents(pe *peer, l *link) error {
	p.mu.Lock()
	es := normExtents(pe.compare)
	p.mu.Unlock()
	return p.compareExtentList(pe, l, es)
}

// unmarkedToCompare lists the extents to compare none of whose regions
// (rounded out as compared) is marked to send. p.mu held.
func (p *Primary) unmarkedToCompare(pe *peer) []int64 {
	rb := pe.missed.RegionBytes()
	var out []int64
	for _, x := range normExtents(pe.compare) {
		off, n := p.extentSpan(x, x)
		if n <= 0 {
			continue
		}
		if r := pe.missed.Next(off / rb); r >= 0 && r*rb < off+n {
			continue
		}
		out = append(out, x)
	}
	return out
}

// compareExtentList compares the given extents of pe.compare and takes
// them off it.
func (p *Primary) compareExtentList(pe *peer, l *link, es []int64) error {
	if len(es) == 0 {
		return nil
	}
	// An extent resent whole over this link since the peer's promise
	// holds what this primary has (client writes since reach both), so
	// comparing it would only read it twice: after a resync, a crashed
	// replica's recovered extents are mostly the ones it was just sent.
	all := es
	p.mu.Lock()
	es = slices.DeleteFunc(slices.Clone(es), func(x int64) bool { return p.wholeResent(pe, l, x) })
	p.mu.Unlock()
	size, rb := p.Size(), p.cfg.RegionBytes
	// Extents per request: the span, rounded out to regions at both
	// ends, must fit one digest request (MaxDigestRegions, a u32 length).
	maxRun := max(1, (min(rb*MaxDigestRegions, 1<<32-1)-2*rb)/ExtentBytes)
	for i := 0; i < len(es); {
		j := i + 1
		for j < len(es) && es[j] == es[j-1]+1 && int64(j-i) < maxRun {
			j++
		}
		if es[i]*ExtentBytes < size {
			off, n := p.extentSpan(es[i], es[j-1])
			if err := p.compareSpan(pe, l, off, n, sumDigests); err != nil {
				return err
			}
		}
		i = j
	}
	p.mu.Lock()
	// Only those compared leave the list (a rejoin may have added more),
	// and only for the link compared over: after a rejoin on a new link
	// (the replica restarted and may have recorded the same extents
	// again) they are compared again.
	if pe.link == l {
		pe.compare = slices.DeleteFunc(pe.compare, func(x int64) bool { _, found := slices.BinarySearch(all, x); return found })
	}
	p.mu.Unlock()
	return nil
}

// recoveredSent says whether none of the peer's recovered extents is
// still to compare or marked (and, for the whole volume, no comparison
// is pending): after a resend pass without error, they were all sent.
// p.mu held.
func (p *Primary) recoveredSent(pe *peer) bool {
	if pe.recoveredWhole {
		return !pe.digest && pe.missed.Count() == 0
	}
	for _, x := range pe.recovered {
		if slices.Contains(pe.compare, x) {
			return false
		}
	}
	rb := pe.missed.RegionBytes()
	for _, x := range pe.recovered {
		first := x * ExtentBytes / rb
		if r := pe.missed.Next(first); r >= 0 && r*rb < (x+1)*ExtentBytes {
			return false
		}
	}
	return true
}

// resolvePeer tells a recovering peer, once its recovered extents were
// all resent on link l, to flush them and forget them.
func (p *Primary) resolvePeer(pe *peer, l *link) error {
	p.mu.Lock()
	if !pe.recovering {
		p.mu.Unlock()
		return nil
	}
	if pe.link != l || !p.recoveredSent(pe) {
		p.mu.Unlock()
		return fmt.Errorf("node %d: recovered extents not all resent yet", pe.id)
	}
	es, whole, e := slices.Clone(pe.recovered), pe.recoveredWhole, p.epoch
	p.mu.Unlock()
	m := &Message{Type: MsgResolve, Volume: p.cfg.VolumeID, From: p.cfg.Self, Epoch: e}
	if !whole {
		if len(es) == 0 {
			return errors.New("a resolve must name extents or the whole volume") // not reached: recovering has one or the other
		}
		for _, x := range es {
			m.Payload = binary.BigEndian.AppendUint64(m.Payload, uint64(x))
		}
	}
	a, err := l.call(m, p.cfg.PeerTimeout*2)
	if err != nil {
		return err
	}
	if a.Type != MsgResolveOK {
		if a.Type == MsgRefuse && a.Epoch > e {
			p.depose(&Refusal{From: a.From, Promised: a.Epoch, Reason: string(a.Payload)})
		}
		// Its record may have grown meanwhile (a failed fdatasync
		// there makes it the whole volume): the link is dropped, and
		// the rejoin's promise says what to compare now.
		l.close()
		return fmt.Errorf("node %d did not resolve its recovered extents: %v %s", pe.id, a.Type, a.Payload)
	}
	p.mu.Lock()
	if pe.link == l {
		pe.recovering, pe.recovered, pe.recoveredWhole = false, nil, false
	}
	p.mu.Unlock()
	p.log.Info("replica's recovered extents were resent; it is a complete copy again", "replica", pe.id,
		"extents", len(es), "whole_volume", whole)
	return nil
}

// fetchOwnRecovered brings this candidate's recovered extents up to date
// from members of the newest generation that are not recovering them
// (their copies hold every acknowledged write), comparing digests so
// that only the regions that differ cross the network. An extent that
// every member of the newest generation is recovering (each reached) has
// no better copy: this node's stands, and that is logged loudly; one that
// a member not reached may hold fails the promotion. Then the record is
// resolved.
func (p *Primary) fetchOwnRecovered(members []NodeID, rec map[NodeID]recoveredInfo) error {
	own, ok := rec[p.cfg.Self]
	if !ok {
		return nil
	}
	start := time.Now()
	syncFailures := p.Store().SyncFailures()
	extents := own.extents
	nExtents := (p.Size() + ExtentBytes - 1) / ExtentBytes
	// The extents a crash named were re-verified when the store opened,
	// so their checksums stand for their data. Those of a write that
	// failed here (lostLocalWrite) were not: there the store's order
	// (data first, its checksums after) leaves a torn write with old
	// checksums, whose digest then differs from a peer's all the same.
	// "The whole volume" means the record was lost, or an fdatasync
	// failed (Store.syncFailed) and even the checksums on disk may not
	// match the data there: compare the data itself.
	kind := sumDigests
	if own.whole {
		kind = dataDigests
		extents = make([]int64, 0, nExtents)
		for x := int64(0); x < nExtents; x++ {
			extents = append(extents, x)
		}
	}
	// A few extents at once: each costs a digest pass on both sides
	// (reading 4 MiB each) and the round trips; the promotion waits.
	var mu sync.Mutex
	var fetchedBytes int64
	var noSource []int64
	var firstErr error
	next := make(chan int64)
	var wg sync.WaitGroup
	for w := 0; w < fetchWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for x := range next {
				n, err := p.fetchFromSources(x, members, rec, kind)
				mu.Lock()
				switch {
				case errors.Is(err, errNoSource):
					noSource = append(noSource, x)
				case err != nil:
					if firstErr == nil {
						firstErr = err
					}
				default:
					fetchedBytes += n
				}
				mu.Unlock()
			}
		}()
	}
	for _, x := range extents {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed {
			break
		}
		if x >= 0 && x < nExtents {
			next <- x
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	slices.Sort(noSource)
	if len(noSource) > 0 {
		p.log.Error("this node crashed and re-verified extents that every member of the newest generation is recovering too: no better copy exists, serving this node's (acknowledged writes there may be lost)",
			"extent_count", len(noSource), "extents", fmt.Sprint(noSource[:min(len(noSource), 32)]), "members", fmt.Sprint(members))
	}
	if err := p.Store().ResolveRecovered(own.extents, own.whole, syncFailures); err != nil {
		return err
	}
	p.log.Warn("this node crashed or failed a write before; the extents that may have been older here were brought up to date from members that have them", "extents", len(extents),
		"without_source", len(noSource), "fetched_bytes", fetchedBytes, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// fetchWorkers bounds the extents a recovering candidate fetches at once.
const fetchWorkers = 4

// errNoSource: every data member of the newest generation was reached
// and is recovering the extent too (no better copy exists anywhere).
var errNoSource = errors.New("every member of the newest generation is recovering this extent")

// fetchFromSources brings extent x up to date from the first member
// (reachable, not recovering x) that can supply it.
func (p *Primary) fetchFromSources(x int64, members []NodeID, rec map[NodeID]recoveredInfo, kind digestKind) (int64, error) {
	var sources []*link
	var unreached []NodeID // data members that may hold x's acknowledged writes
	p.mu.Lock()
	for _, id := range members {
		pe := p.peers[id]
		if id == p.cfg.Self || (pe != nil && pe.noData) {
			continue
		}
		if pe == nil || pe.link == nil || !pe.link.alive() {
			unreached = append(unreached, id)
			continue
		}
		if r, ok := rec[id]; ok && r.covers(x) {
			continue
		}
		sources = append(sources, pe.link)
	}
	p.mu.Unlock()
	if len(sources) == 0 {
		if len(unreached) > 0 {
			// A member of the newest generation that did not promise
			// may hold acknowledged writes this copy lost: serving it
			// would undo them (found in review: 2 replicas and a
			// witness, the other replica away). The promotion fails
			// and is retried until that member is back.
			return 0, fmt.Errorf("this node's copy of extent %d may lack acknowledged writes (it crashed, or a write or flush failed here); members %v of the newest generation may hold them and were not reached: the promotion waits for one of them", x, unreached)
		}
		return 0, errNoSource
	}
	var lastErr error
	for _, l := range sources {
		n, err := p.fetchExtent(l, x, kind)
		if err == nil {
			return n, nil
		}
		lastErr = err
	}
	// A good copy exists but could not be read: serving this node's
	// copy could undo acknowledged writes.
	return 0, fmt.Errorf("this node's copy of extent %d may lack acknowledged writes (it crashed, or a write or flush failed here); no member that holds them could supply it: %w", x, lastErr)
}

// fetchExtent makes one extent here equal to the copy behind l: digests
// first, then the regions that differ. It returns the bytes fetched.
func (p *Primary) fetchExtent(l *link, x int64, kind digestKind) (int64, error) {
	rb := p.cfg.RegionBytes
	off, n := p.extentSpan(x, x)
	// One request: an extent is far fewer than MaxDigestRegions regions.
	differ, err := p.differingRegions(l, off, n, p.cfg.PeerTimeout*2, kind)
	if err != nil {
		return 0, fmt.Errorf("extent %d: %w", x, err)
	}
	var fetched int64
	for _, i := range differ {
		roff := off + int64(i)*rb
		rn := min(rb, off+n-roff)
		r, err := l.call(&Message{Type: MsgRead, Volume: p.cfg.VolumeID, From: p.cfg.Self, Epoch: p.epoch,
			Offset: uint64(roff), Length: uint32(rn)}, p.cfg.PeerTimeout*2)
		if err != nil {
			return fetched, err
		}
		if r.Type != MsgReadOK || int64(len(r.Payload)) != rn {
			return fetched, fmt.Errorf("read of %d+%d from node %d: %v %s", roff, rn, r.From, r.Type, truncText(string(r.Payload)))
		}
		if err := p.Store().WriteAt(r.Payload, roff, false); err != nil {
			return fetched, fmt.Errorf("writing fetched %d+%d here: %w", roff, rn, err)
		}
		fetched += rn
	}
	return fetched, nil
}
