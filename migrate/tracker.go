package migrate

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
)

// Tracker finds the pages of guest RAM written since the previous round.
//
// The contract the engine relies on: a write that completes after Start
// returns is reported by some later Collect; a write that completes after
// Collect #k returns is reported by Collect #k+1 or later, never lost; and a
// page that was not written is not reported. The engine must read a page's
// contents after the Collect that reported it returns. One write racing with
// Collect may be reported by two Collects (seen with the uffd tracker, ~1 %
// of racing writes under load: the kernel drops a page's protection in the
// fault handler before the faulting store is retried, so a scan landing in
// between reports the page early, and the next scan again). That costs a
// resend, never a lost write. Collect and Close must
// not be called concurrently; writers may run at any time.
type Tracker interface {
	// Pages is the number of pages tracked. Collect wants a Bitmap of
	// this length.
	Pages() int
	// Start arms tracking over the whole range, forgetting anything
	// written before. Calling it again re-arms.
	Start() error
	// Collect sets in dst the bit of every page written since Start or
	// the previous Collect and re-arms those pages in the same step. It
	// returns how many distinct pages it found written; pages already set
	// in dst still count, so the count is this round's dirty rate.
	Collect(dst *Bitmap) (dirtyPages int, err error)
	// Close stops tracking and frees kernel resources.
	Close() error
}

// ErrNotStarted is returned by Collect before Start.
var ErrNotStarted = errors.New("migrate: tracker not started")

// UnsupportedError says which kernel feature a tracker needs and lacks.
// errors.Is(err, errors.ErrUnsupported) holds for it.
type UnsupportedError struct {
	Feature string // e.g. "UFFD_FEATURE_WP_ASYNC", "PAGEMAP_SCAN"
	Err     error  // the syscall's answer, if any
}

func (e *UnsupportedError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("migrate: dirty tracking needs %s, which this kernel lacks: %v", e.Feature, e.Err)
	}
	return fmt.Sprintf("migrate: dirty tracking needs %s, which this kernel lacks", e.Feature)
}

func (e *UnsupportedError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, errors.ErrUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == errors.ErrUnsupported }

// ExplicitTracker is a Tracker fed by its writers: whoever writes calls Mark.
// It serves block devices (the NBD write path knows what it writes) and
// tests, and any memory the kernel cannot track. Mark is lock-free and may
// be called from any number of goroutines.
type ExplicitTracker struct {
	sizeBytes int64
	pages     int
	words     []atomic.Uint64

	mu      sync.Mutex // serializes Start, Collect, Close
	started bool
	closed  bool
}

// NewExplicitTracker tracks sizeBytes (a positive multiple of PageBytes).
func NewExplicitTracker(sizeBytes int64) (*ExplicitTracker, error) {
	if err := checkMemorySize(sizeBytes); err != nil {
		return nil, err
	}
	pages := int(sizeBytes / PageBytes)
	return &ExplicitTracker{
		sizeBytes: sizeBytes,
		pages:     pages,
		words:     make([]atomic.Uint64, (pages+63)/64),
	}, nil
}

// Pages implements Tracker.
func (t *ExplicitTracker) Pages() int { return t.pages }

// Mark records a write of lengthBytes at offsetBytes. Every page the range
// touches is marked. Call it after the write has landed: marked before, a
// Collect and the engine's copy could both run before the data is there. A range outside the tracked size is a caller bug and
// panics, as an out-of-range slice index would.
func (t *ExplicitTracker) Mark(offsetBytes, lengthBytes int64) {
	if offsetBytes < 0 || lengthBytes < 0 || offsetBytes > t.sizeBytes-lengthBytes {
		panic(fmt.Sprintf("migrate: Mark [%d,+%d) outside %d bytes", offsetBytes, lengthBytes, t.sizeBytes))
	}
	if lengthBytes == 0 {
		return
	}
	from := int(offsetBytes / PageBytes)
	to := int((offsetBytes + lengthBytes + PageBytes - 1) / PageBytes)
	for from < to {
		w, off := from/64, uint(from)%64
		n := min(64-int(off), to-from)
		mask := ^uint64(0)
		if n < 64 {
			mask = (1<<uint(n) - 1) << off
		}
		// Or only when a bit is missing: a hot page marked again and
		// again then costs a load, not a contended atomic write.
		if t.words[w].Load()&mask != mask {
			t.words[w].Or(mask)
		}
		from += n
	}
}

// MarkPage records a write to page i.
func (t *ExplicitTracker) MarkPage(i int) {
	if uint(i) >= uint(t.pages) {
		panic(fmt.Sprintf("migrate: MarkPage %d outside %d pages", i, t.pages))
	}
	w, bit := i/64, uint64(1)<<(uint(i)%64)
	if t.words[w].Load()&bit == 0 {
		t.words[w].Or(bit)
	}
}

// Start implements Tracker.
func (t *ExplicitTracker) Start() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	for i := range t.words {
		t.words[i].Store(0)
	}
	t.started = true
	return nil
}

// Collect implements Tracker. Each word is swapped with zero atomically, so
// a Mark racing with Collect lands in this round or the next.
func (t *ExplicitTracker) Collect(dst *Bitmap) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, ErrClosed
	}
	if !t.started {
		return 0, ErrNotStarted
	}
	if dst.Len() != t.pages {
		return 0, fmt.Errorf("migrate: Collect into a bitmap of %d bits, tracker has %d pages", dst.Len(), t.pages)
	}
	n := 0
	for i := range t.words {
		if t.words[i].Load() == 0 {
			continue
		}
		w := t.words[i].Swap(0)
		dst.words[i] |= w
		n += bits.OnesCount64(w)
	}
	return n, nil
}

// Close implements Tracker.
func (t *ExplicitTracker) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	return nil
}
