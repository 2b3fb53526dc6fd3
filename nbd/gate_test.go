package nbd

import (
	"sync/atomic"
	"time"
)

// gateBackend holds every write until gate is closed, counting the waiters.
type gateBackend struct {
	Backend
	gate    chan struct{}
	waiters atomic.Int64
}

func (g *gateBackend) WriteAt(p []byte, off int64, fua bool) error {
	g.waiters.Add(1)
	<-g.gate
	g.waiters.Add(-1)
	return g.Backend.WriteAt(p, off, fua)
}

func (g *gateBackend) waiting() int64 { return g.waiters.Load() }

func sleepMs(ms int) { time.Sleep(time.Duration(ms) * time.Millisecond) }

// concurrencyBackend records how many calls overlap.
type concurrencyBackend struct {
	Backend
	delay   time.Duration
	now     atomic.Int64
	maxSeen atomic.Int64
}

func (c *concurrencyBackend) ReadAt(p []byte, off int64) error {
	n := c.now.Add(1)
	for {
		m := c.maxSeen.Load()
		if n <= m || c.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(c.delay)
	c.now.Add(-1)
	return c.Backend.ReadAt(p, off)
}
