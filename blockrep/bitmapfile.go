package blockrep

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/paddock-io/paddock/internal/atomicfile"
)

// The primary keeps each peer's out-of-sync bitmap on disk, so that a
// primary that restarts (or a node that becomes primary again) resends
// only what a peer missed instead of comparing the whole volume.
//
// Files, in the replica's directory: missed-<peer>.bitmap per peer, then
// bitmaps.json naming the generation they were tracked through. They are
// trusted only when that is still this replica's generation at the next
// promotion: if another primary wrote in between, the bitmaps do not know
// what it wrote, and digests are compared instead. Marks made after the
// last save (at most reconnectInterval ago, or a generation change) are
// covered by the activity log: every replica's hot extents are resent at
// promotion.

type bitmapIndex struct {
	Gen         Gen      `json:"gen"`
	RegionBytes int64    `json:"region_bytes"`
	Peers       []NodeID `json:"peers"`
	// Clean says the primary stopped with no write in flight: no replica
	// can hold a write the others lack, so the next promotion of this
	// node (same generation) needs no activity-log resend.
	Clean bool `json:"clean,omitempty"`
}

const bitmapIndexName = "bitmaps.json"

func (p *Primary) bitmapPath(id NodeID) string {
	return filepath.Join(p.cfg.Local.Dir(), fmt.Sprintf("missed-%d.bitmap", id))
}

// saveBitmaps writes the bitmaps that changed, then the index.
func (p *Primary) saveBitmaps() error { return p.saveBitmapsClean(false) }

func (p *Primary) saveBitmapsClean(clean bool) error {
	p.mu.Lock()
	gen := p.gen
	var ids []NodeID
	var dirty []*peer
	for id, pe := range p.peers {
		ids = append(ids, id)
		if pe.missed.Dirty() || !pe.saved {
			dirty = append(dirty, pe)
		}
	}
	indexStale := p.savedGen != gen
	p.mu.Unlock()
	if len(dirty) == 0 && !indexStale && !clean {
		return nil
	}
	for _, pe := range dirty {
		if err := pe.missed.Save(p.bitmapPath(pe.id)); err != nil {
			return err
		}
		p.mu.Lock()
		pe.saved = true
		p.mu.Unlock()
	}
	slices.Sort(ids)
	b, _ := json.Marshal(bitmapIndex{Gen: gen, RegionBytes: p.cfg.RegionBytes, Peers: ids, Clean: clean})
	if err := atomicfile.Write(filepath.Join(p.cfg.Local.Dir(), bitmapIndexName), b, 0o600); err != nil {
		return err
	}
	p.mu.Lock()
	p.savedGen = gen
	p.mu.Unlock()
	return nil
}

// loadBitmaps takes the saved bitmaps when they still describe this
// replica's history; otherwise every peer starts with a digest comparison.
func (p *Primary) loadBitmaps() {
	b, err := os.ReadFile(filepath.Join(p.cfg.Local.Dir(), bitmapIndexName))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			p.log.Warn("bitmap index unreadable; comparing digests with every replica", "err", err)
		}
		return
	}
	var idx bitmapIndex
	if err := json.Unmarshal(b, &idx); err != nil {
		p.log.Warn("bitmap index unreadable; comparing digests with every replica", "err", err)
		return
	}
	if cur := p.cfg.Local.Voter().Gen; idx.Gen != cur || idx.RegionBytes != p.cfg.RegionBytes {
		p.log.Info("saved bitmaps are from another history; comparing digests", "saved_gen", idx.Gen, "gen", cur)
		return
	}
	for id, pe := range p.peers {
		if !slices.Contains(idx.Peers, id) {
			continue
		}
		bm, err := LoadBitmap(p.bitmapPath(id))
		if err != nil || bm.Regions() != pe.missed.Regions() || bm.RegionBytes() != p.cfg.RegionBytes {
			p.log.Warn("bitmap unusable; comparing digests", "peer", id, "err", err)
			continue
		}
		pe.missed, pe.digest, pe.saved = bm, false, true
	}
	p.cleanStart = idx.Clean
}
