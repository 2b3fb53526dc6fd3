package nbd

import "sync"

// budget is a counting semaphore over bytes (or requests): acquire blocks
// until the amount fits under the capacity. A single acquire never exceeds
// the capacity (Limits.withDefaults makes sure of that).
type budget struct {
	mu       sync.Mutex
	cond     sync.Cond
	capacity int64
	used     int64
	closed   bool
}

func newBudget(capacity int64) *budget {
	b := &budget{capacity: capacity}
	b.cond.L = &b.mu
	return b
}

// acquire takes n, waiting while it does not fit; it returns false when the
// budget was closed while waiting.
func (b *budget) acquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for !b.closed && b.used+n > b.capacity {
		b.cond.Wait()
	}
	if b.closed {
		return false
	}
	b.used += n
	return true
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	if b.used < 0 {
		panic("nbd: budget released more than acquired")
	}
	b.mu.Unlock()
	b.cond.Broadcast()
}

// close wakes every waiter and makes later acquires fail.
func (b *budget) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cond.Broadcast()
}

func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
