package blockrep

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
)

// ReleaseFenced tells a volume's voters that node holder was fenced by
// the cluster (its power verified off, or inquorate past its self-fence
// lease), so it serves nothing: each voter whose current promise went to
// holder marks it released (epoch.go, rule 5), and the next primary need
// not wait out holder's read lease. dials reach the voters (the witness
// under WitnessID); local is this node's replica of the volume, or nil.
// Best effort, each voter within releaseTimeout: one not reached costs
// only that wait. It returns how many voters took the release.
func ReleaseFenced(ctx context.Context, self NodeID, volume uint64, holder NodeID, local *Replica,
	dials map[NodeID]func(context.Context) (net.Conn, error)) int {
	var n atomic.Int32
	if local != nil {
		local.mu.Lock()
		if local.meta.Voter.ReleaseFenced(holder) {
			n.Add(1)
		}
		local.mu.Unlock()
	}
	var wg sync.WaitGroup
	for id, dial := range dials {
		if id == holder || id == self {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			dctx, cancel := context.WithTimeout(ctx, releaseTimeout)
			defer cancel()
			conn, err := dial(dctx)
			if err != nil {
				return
			}
			l := newLink(id, conn)
			defer l.close()
			m := &Message{Type: MsgRelease, Flags: FlagFenced, Volume: volume, From: self, Members: []NodeID{holder}}
			if a, err := l.call(m, releaseTimeout); err == nil && a.Type == MsgReleaseOK {
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(n.Load())
}
