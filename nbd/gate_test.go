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
