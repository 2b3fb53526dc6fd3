package migrate

import (
	"sync"
	"time"
)

// rateLimiter is a token bucket shared by the page streams of a migration
// (--bandwidth): it caps the bytes handed to the transport per second.
type rateLimiter struct {
	mu             sync.Mutex
	bytesPerSecond float64
	burstBytes     float64
	tokens         float64
	last           time.Time
}

// rateBurstBytes lets one encoder buffer through at once.
const rateBurstBytes = encoderBufferBytes

func newRateLimiter(bytesPerSecond int64) *rateLimiter {
	return &rateLimiter{bytesPerSecond: float64(bytesPerSecond), burstBytes: rateBurstBytes, tokens: rateBurstBytes, last: time.Now()}
}

// wait blocks until n bytes may go.
func (l *rateLimiter) wait(n int) {
	l.mu.Lock()
	now := time.Now()
	l.tokens = min(l.burstBytes, l.tokens+now.Sub(l.last).Seconds()*l.bytesPerSecond)
	l.last = now
	l.tokens -= float64(n)
	var sleep time.Duration
	if l.tokens < 0 {
		sleep = time.Duration(-l.tokens / l.bytesPerSecond * float64(time.Second))
	}
	l.mu.Unlock()
	if sleep > 0 {
		time.Sleep(sleep)
	}
}

// limitedWriter writes through a rateLimiter.
type limitedWriter struct {
	w interface{ Write([]byte) (int, error) }
	l *rateLimiter
}

func (w limitedWriter) Write(p []byte) (int, error) {
	w.l.wait(len(p))
	return w.w.Write(p)
}
