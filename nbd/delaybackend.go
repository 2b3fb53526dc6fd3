package nbd

import "time"

// DelayBackend adds a fixed latency to every call of another backend. It
// stands in for a slow disk or a network hop in benchmarks, to show that
// requests overlap.
type DelayBackend struct {
	Backend
	delay time.Duration
}

// NewDelayBackend wraps b.
func NewDelayBackend(b Backend, delay time.Duration) *DelayBackend {
	return &DelayBackend{Backend: b, delay: delay}
}

func (d *DelayBackend) ReadAt(p []byte, off int64) error {
	time.Sleep(d.delay)
	return d.Backend.ReadAt(p, off)
}

func (d *DelayBackend) WriteAt(p []byte, off int64, fua bool) error {
	time.Sleep(d.delay)
	return d.Backend.WriteAt(p, off, fua)
}

func (d *DelayBackend) Flush() error {
	time.Sleep(d.delay)
	return d.Backend.Flush()
}
