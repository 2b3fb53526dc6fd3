package blockrep

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"
)

// Scrub and verify.
//
// Verify compares the replicas: for each batch of regions the primary
// asks every member for digests and compares them with its own (only
// digests cross the network), holding the batch's range lock so a client
// write cannot make a false difference. Scrub also checks every block of
// every replica against its checksum (each replica reads its own disk)
// and repairs: a bad block here is fetched from a member whose copy passes
// its checksum, a bad block or a differing region there is sent from here.

// scrubBatchBytes is what one scrub step covers (under one range lock).
const scrubBatchBytes = 4 << 20

// maxReportedBlocks bounds the block lists of a report.
const maxReportedBlocks = 1024

// ScrubNode is what a scrub found on one replica.
type ScrubNode struct {
	Node             NodeID  `json:"node"`
	BadBlocks        []int64 `json:"bad_blocks,omitempty"` // first maxReportedBlocks
	BadBlockCount    int64   `json:"bad_block_count"`
	DifferentRegions int64   `json:"different_regions"`
	Repaired         int64   `json:"repaired_bytes"`
	Error            string  `json:"error,omitempty"`
}

// ScrubReport is the result of a scrub or a verify.
type ScrubReport struct {
	Repair       bool        `json:"repair"`
	BytesScanned int64       `json:"bytes_scanned"`
	RegionBytes  int64       `json:"region_bytes"`
	Nodes        []ScrubNode `json:"nodes"`
	Seconds      float64     `json:"seconds"`
	Complete     bool        `json:"complete"`
}

// Clean says nothing was found anywhere.
func (r ScrubReport) Clean() bool {
	for _, n := range r.Nodes {
		if n.BadBlockCount > 0 || n.DifferentRegions > 0 || n.Error != "" {
			return false
		}
	}
	return r.Complete
}

// Scrub checks (and with repair, fixes) the whole volume, at most
// bytesPerSecond (0: no limit).
func (p *Primary) Scrub(ctx context.Context, repair bool, bytesPerSecond int64) (ScrubReport, error) {
	start := time.Now()
	rb := p.cfg.RegionBytes
	rep := ScrubReport{Repair: repair, RegionBytes: rb}
	p.mu.Lock()
	members := slices.Clone(p.members)
	p.mu.Unlock()
	byNode := map[NodeID]*ScrubNode{}
	for _, id := range members {
		byNode[id] = &ScrubNode{Node: id}
	}
	addBad := func(n *ScrubNode, blocks []int64) {
		n.BadBlockCount += int64(len(blocks))
		for _, b := range blocks {
			if len(n.BadBlocks) < maxReportedBlocks {
				n.BadBlocks = append(n.BadBlocks, b)
			}
		}
	}
	limiter := newRateLimiter()
	size := p.Size()
	for off := int64(0); off < size; off += scrubBatchBytes {
		if err := ctx.Err(); err != nil {
			return p.finishReport(rep, byNode, start), err
		}
		if err := p.Deposed(); err != nil {
			return p.finishReport(rep, byNode, start), err
		}
		n := min(scrubBatchBytes, size-off)
		// Here: checksums, repaired from a member.
		bad, err := p.Store().VerifyBlocks(off, n)
		if err != nil {
			return p.finishReport(rep, byNode, start), fmt.Errorf("reading %d+%d here: %w", off, n, err)
		}
		self := byNode[p.cfg.Self]
		addBad(self, bad)
		if repair {
			for _, b := range bad {
				if _, err := p.repairBlock(b); err == nil {
					self.Repaired += BlockBytes
				} else {
					self.Error = err.Error()
				}
			}
		}
		if err := p.scrubPeers(off, n, repair, byNode, addBad); err != nil {
			return p.finishReport(rep, byNode, start), err
		}
		rep.BytesScanned += n
		limiter.wait(n, bytesPerSecond)
	}
	rep.Complete = true
	return p.finishReport(rep, byNode, start), nil
}

func (p *Primary) finishReport(rep ScrubReport, byNode map[NodeID]*ScrubNode, start time.Time) ScrubReport {
	for _, n := range byNode {
		rep.Nodes = append(rep.Nodes, *n)
	}
	slices.SortFunc(rep.Nodes, func(a, b ScrubNode) int { return int(a.Node) - int(b.Node) })
	rep.Seconds = time.Since(start).Seconds()
	return rep
}

// scrubPeers checks one batch on every member: its checksums, then its
// digests against this node's, under the batch's range lock.
func (p *Primary) scrubPeers(off, n int64, repair bool, byNode map[NodeID]*ScrubNode, addBad func(*ScrubNode, []int64)) error {
	rb := p.cfg.RegionBytes
	unlock := p.locks.lock(off, n)
	defer unlock()
	p.mu.Lock()
	e, g := p.epoch, p.gen
	var peers []*peer
	for _, pe := range p.peers {
		if byNode[pe.id] != nil {
			peers = append(peers, pe)
		}
	}
	p.mu.Unlock()
	mine, err := p.cfg.Local.Digests(off, n, rb)
	if err != nil {
		return fmt.Errorf("digests here: %w", err)
	}
	for _, pe := range peers {
		sn := byNode[pe.id]
		p.mu.Lock()
		l := pe.link
		p.mu.Unlock()
		if l == nil || !l.alive() {
			sn.Error = "unreachable"
			continue
		}
		base := &Message{Volume: p.cfg.VolumeID, From: p.cfg.Self, Epoch: e, Offset: uint64(off), Length: uint32(n)}
		vm := *base
		vm.Type = MsgVerify
		a, err := l.call(&vm, p.cfg.PeerTimeout*4)
		if err != nil || a.Type != MsgVerifyOK {
			sn.Error = fmt.Sprintf("verify: %v %v", err, answerText(a))
			continue
		}
		var bad []int64
		for i := 0; i+8 <= len(a.Payload); i += 8 {
			bad = append(bad, int64(binary.BigEndian.Uint64(a.Payload[i:])))
		}
		addBad(sn, bad)
		dm := *base
		dm.Type, dm.Payload = MsgDigest, binary.BigEndian.AppendUint64(nil, uint64(rb))
		a, err = l.call(&dm, p.cfg.PeerTimeout*4)
		if err != nil || a.Type != MsgDigestOK || len(a.Payload) != 8*len(mine) {
			sn.Error = fmt.Sprintf("digest: %v %v", err, answerText(a))
			continue
		}
		var differ []int64
		for i, d := range mine {
			if binary.BigEndian.Uint64(a.Payload[8*i:]) != d {
				differ = append(differ, off+int64(i)*rb)
			}
		}
		sn.DifferentRegions += int64(len(differ))
		if !repair {
			continue
		}
		// A bad block there lies in a differing region (its data
		// changed) or not (its checksum did): send both kinds.
		send := map[int64]int64{}
		for _, r := range differ {
			send[r] = min(rb, off+n-r)
		}
		for _, b := range bad {
			r := b * BlockBytes / rb * rb
			if _, ok := send[r]; !ok {
				send[b*BlockBytes] = BlockBytes
			}
		}
		for at, length := range send {
			buf := make([]byte, length)
			if err := p.Store().ReadAt(buf, at); err != nil {
				sn.Error = err.Error()
				continue
			}
			m := *base
			m.Type, m.Gen, m.Offset, m.Length, m.Payload = MsgSyncWrite, g, uint64(at), uint32(length), buf
			a, err := l.call(&m, p.cfg.PeerTimeout*2)
			if err != nil || a.Type != MsgWriteOK {
				sn.Error = fmt.Sprintf("repair: %v %v", err, answerText(a))
				continue
			}
			sn.Repaired += length
		}
	}
	return nil
}

func answerText(a *Message) string {
	if a == nil {
		return ""
	}
	return fmt.Sprintf("%v %s", a.Type, a.Payload)
}
