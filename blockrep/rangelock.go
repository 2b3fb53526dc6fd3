package blockrep

import "sync"

// rangeLocks serializes overlapping writes on the primary, from its local
// write to the last replica's answer. Two overlapping writes in flight at
// once could land in different orders on different replicas (the NBD
// protocol leaves their order open, but the replicas must end identical);
// resync holds a region's lock while it reads and sends it, so a client
// write cannot slip between the two. Non-overlapping writes run in
// parallel; the set is small (bounded by the NBD server's queue depth).
type rangeLocks struct {
	mu   sync.Mutex
	cond *sync.Cond
	held []span
}

type span struct{ off, end int64 }

func (r *rangeLocks) lock(off, length int64) func() {
	s := span{off, off + length}
	r.mu.Lock()
	if r.cond == nil {
		r.cond = sync.NewCond(&r.mu)
	}
	for r.overlaps(s) {
		r.cond.Wait()
	}
	r.held = append(r.held, s)
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		for i, h := range r.held {
			if h == s {
				r.held[i] = r.held[len(r.held)-1]
				r.held = r.held[:len(r.held)-1]
				break
			}
		}
		r.cond.Broadcast()
		r.mu.Unlock()
	}
}

func (r *rangeLocks) overlaps(s span) bool {
	for _, h := range r.held {
		if s.off < h.end && h.off < s.end {
			return true
		}
	}
	return false
}
