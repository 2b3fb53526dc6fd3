package fence

import (
	"sort"
	"sync"
)

// Method says how a node was (or was to be) fenced.
type Method string

// Fence methods. Only MethodAgent is run by this package; the daemon records
// the others (storage epoch raise, network filter, lease expiry) into the
// same History so that `paddock status` shows one list.
const (
	MethodAgent   Method = "agent"
	MethodStorage Method = "storage"
	MethodNetwork Method = "network"
	MethodLease   Method = "lease"
)

// Result is the end of one fence attempt.
type Result string

// Results. ResultTimeout is a failure (kept apart because it is the one an
// operator must look at differently: the device may still be working).
const (
	ResultOK      Result = "ok"
	ResultFailed  Result = "failed"
	ResultTimeout Result = "timeout"
	ResultSkipped Result = "skipped"
)

// HistoryEntry is one line of fence history.
type HistoryEntry struct {
	TimeMs     int64  `json:"time_ms"` // Unix milliseconds when the attempt started
	Target     string `json:"target"`  // the node being fenced
	Method     Method `json:"method"`
	Device     string `json:"device,omitempty"`
	Level      int    `json:"level,omitempty"` // 1-based topology level; 0 when not from a level
	Action     Action `json:"action,omitempty"`
	Result     Result `json:"result"`
	DurationMs int64  `json:"duration_ms"`
	Error      string `json:"error,omitempty"` // bounded, never holds a secret (errors from this package don't)
}

// History limits.
const (
	defaultHistoryEntries = 256
	maxHistoryEntries     = 4096
	maxHistoryErrorBytes  = 512
)

// History is a bounded ring of fence attempts, newest replacing oldest, and
// counters that never wrap (for Prometheus: fence attempts by method and
// result). Safe for concurrent use.
type History struct {
	mu      sync.Mutex
	ring    []HistoryEntry
	next    int
	full    bool
	counts  map[HistoryCount]uint64
	dropped uint64
}

// HistoryCount is a counter key with its value, as Counts returns them.
type HistoryCount struct {
	Method Method `json:"method"`
	Result Result `json:"result"`
	Count  uint64 `json:"count"`
}

// NewHistory keeps the last capacity entries (default 256, at most 4096).
func NewHistory(capacity int) *History {
	if capacity <= 0 {
		capacity = defaultHistoryEntries
	}
	capacity = min(capacity, maxHistoryEntries)
	return &History{ring: make([]HistoryEntry, capacity), counts: map[HistoryCount]uint64{}}
}

// Add records one attempt. A nil History records nothing, so callers need
// not check.
func (h *History) Add(e HistoryEntry) {
	if h == nil {
		return
	}
	e.Error = clip(e.Error, maxHistoryErrorBytes)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.full {
		h.dropped++
	}
	h.ring[h.next] = e
	h.next++
	if h.next == len(h.ring) {
		h.next, h.full = 0, true
	}
	h.counts[HistoryCount{Method: e.Method, Result: e.Result}]++
}

// Entries returns the kept entries, oldest first.
func (h *History) Entries() []HistoryEntry {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.full {
		return append([]HistoryEntry(nil), h.ring[:h.next]...)
	}
	out := make([]HistoryEntry, 0, len(h.ring))
	out = append(out, h.ring[h.next:]...)
	return append(out, h.ring[:h.next]...)
}

// Last returns the newest entry for target.
func (h *History) Last(target string) (HistoryEntry, bool) {
	es := h.Entries()
	for i := len(es) - 1; i >= 0; i-- {
		if es[i].Target == target {
			return es[i], true
		}
	}
	return HistoryEntry{}, false
}

// Counts returns every counter, sorted by method then result.
func (h *History) Counts() []HistoryCount {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	out := make([]HistoryCount, 0, len(h.counts))
	for k, v := range h.counts {
		k.Count = v
		out = append(out, k)
	}
	h.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Method != out[j].Method {
			return out[i].Method < out[j].Method
		}
		return out[i].Result < out[j].Result
	})
	return out
}

// Dropped is how many entries were pushed out of the ring.
func (h *History) Dropped() uint64 {
	if h == nil {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dropped
}
