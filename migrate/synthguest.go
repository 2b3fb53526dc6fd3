package migrate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// SynthGuest is a synthetic guest for tests, benchmarks and the CLI
// (`paddock guest run`): RAM in a memfd, a writer goroutine that dirties
// whole pages at a set rate, pausable and throttleable like a vCPU, and
// content that proves itself. Every live page holds its index, a version
// counter and a body derived from (seed, index, version); the device state
// holds the number of page writes so far, which equals the sum of
// (version - 1) over live pages. So after a migration Check proves that
// every page is the one last written, none was lost or duplicated, and the
// RAM and the device state belong to the same instant.
type SynthGuest struct {
	cfg SynthConfig
	mem *Memory
	ram []byte

	mu       sync.Mutex // held by the writer for each batch; Pause takes it
	cond     *sync.Cond
	paused   bool
	stopped  bool
	writes   uint64 // page writes since creation, across migrations
	rng      uint64 // page picker state
	throttle atomic.Int32
	explicit atomic.Pointer[ExplicitTracker]
	quit     chan struct{}
	wg       sync.WaitGroup
}

// SynthConfig describes a synthetic guest's workload.
type SynthConfig struct {
	RAMBytes            int64
	DirtyBytesPerSecond int64 // page writes x PageBytes per second; 0 = idle
	// Pattern: "uniform" (any live page alike), "hotset" (90 % of
	// writes in 10 % of the pages) or "sequential" (the live pages in
	// order, wrapping around: a guest zeroing or copying a large buffer).
	Pattern string
	Content string // "random" or "halfzero" (even pages stay zero)
	Seed    uint64
	// HugePages puts the RAM on 2 MiB huge pages (NewHugeMemory).
	HugePages bool
}

// SynthPatterns are the writer's patterns; the index is the pattern's code
// in the device state.
var SynthPatterns = []string{"uniform", "hotset", "sequential"}

func patternCode(p string) int { return slices.Index(SynthPatterns, p) }

// Limits of the synthetic workload.
const (
	maxSynthDirtyBytesPerSecond = 64 << 30
	// synthBatchPages bounds the pages written under one lock hold, so
	// that Pause waits at most that long.
	synthBatchPages  = 64
	synthTick        = time.Millisecond
	synthHeaderBytes = 24
	synthStateMagic  = 0x5044_4b47_5354_3031 // "PDKGST01"
	synthStateBytes  = 8 * 8
)

func (c SynthConfig) check() error {
	if err := checkMemorySize(c.RAMBytes); err != nil {
		return err
	}
	if c.DirtyBytesPerSecond < 0 || c.DirtyBytesPerSecond > maxSynthDirtyBytesPerSecond {
		return fmt.Errorf("migrate: dirty rate %d bytes/s, want 0..%d", c.DirtyBytesPerSecond, int64(maxSynthDirtyBytesPerSecond))
	}
	if patternCode(c.Pattern) < 0 {
		return fmt.Errorf("migrate: pattern %q, want %s", c.Pattern, strings.Join(SynthPatterns, ", "))
	}
	if c.Content != "random" && c.Content != "halfzero" {
		return fmt.Errorf("migrate: content %q, want random or halfzero", c.Content)
	}
	if c.RAMBytes/PageBytes < 2 {
		return errors.New("migrate: a synthetic guest needs at least 2 pages")
	}
	return nil
}

// NewSynthGuest creates the guest's RAM, writes version 1 of every live
// page (in parallel), and starts the writer paused: call Resume.
func NewSynthGuest(name string, cfg SynthConfig) (*SynthGuest, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	newMem := NewMemory
	if cfg.HugePages {
		newMem = NewHugeMemory
	}
	mem, err := newMem(name, cfg.RAMBytes)
	if err != nil {
		return nil, err
	}
	g := newSynth(cfg, mem)
	g.rng = cfg.Seed*0x9E3779B97F4A7C15 | 1
	live := g.livePages()
	const workers = 4
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := w; k < live; k += workers {
				g.writePage(g.pageOf(k), 1)
			}
		}()
	}
	wg.Wait()
	g.start()
	return g, nil
}

// RestoreSynthGuest rebuilds a guest from migrated RAM (mem, which it owns
// from then on) and device state, paused: call Resume.
func RestoreSynthGuest(mem *Memory, state []byte) (*SynthGuest, error) {
	if len(state) != synthStateBytes || binary.LittleEndian.Uint64(state) != synthStateMagic {
		return nil, fmt.Errorf("migrate: synthetic guest state of %d bytes is not one", len(state))
	}
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(state[8*i:]) }
	if u(3) >= uint64(len(SynthPatterns)) {
		return nil, fmt.Errorf("migrate: synthetic guest state names pattern %d, known 0..%d", u(3), len(SynthPatterns)-1)
	}
	cfg := SynthConfig{
		RAMBytes:            int64(u(1)),
		DirtyBytesPerSecond: int64(u(2)),
		Pattern:             SynthPatterns[u(3)],
		Content:             [...]string{"random", "halfzero"}[u(4)&1],
		Seed:                u(5),
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.RAMBytes != mem.SizeBytes() {
		return nil, fmt.Errorf("migrate: state says %d bytes of RAM, memory has %d", cfg.RAMBytes, mem.SizeBytes())
	}
	g := newSynth(cfg, mem)
	g.writes, g.rng = u(6), u(7)
	g.start()
	return g, nil
}

func newSynth(cfg SynthConfig, mem *Memory) *SynthGuest {
	g := &SynthGuest{cfg: cfg, mem: mem, ram: mem.Bytes(), paused: true, quit: make(chan struct{})}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// Config returns the workload.
func (g *SynthGuest) Config() SynthConfig { return g.cfg }

// Memory returns the guest's RAM.
func (g *SynthGuest) Memory() *Memory { return g.mem }

// RAM implements Guest.
func (g *SynthGuest) RAM() []byte { return g.ram }

// livePages: halfzero guests write odd pages only.
func (g *SynthGuest) livePages() int {
	n := int(g.cfg.RAMBytes / PageBytes)
	if g.cfg.Content == "halfzero" {
		return n / 2
	}
	return n
}

// pageOf maps the k-th live page to its page index.
func (g *SynthGuest) pageOf(k int) int {
	if g.cfg.Content == "halfzero" {
		return 2*k + 1
	}
	return k
}

func splitmix(x *uint64) uint64 {
	*x += 0x9E3779B97F4A7C15
	z := *x
	z = (z ^ z>>30) * 0xBF58476D1CE4E5B9
	z = (z ^ z>>27) * 0x94D049BB133111EB
	return z ^ z>>31
}

// fillPage writes what page p holds at version v into dst.
func (g *SynthGuest) fillPage(dst []byte, p int, v uint64) {
	binary.LittleEndian.PutUint64(dst[0:], uint64(p))
	binary.LittleEndian.PutUint64(dst[8:], v)
	binary.LittleEndian.PutUint64(dst[16:], g.cfg.Seed)
	x := g.cfg.Seed ^ uint64(p)*0xD6E8FEB86659FD93 ^ v*0xA0761D6478BD642F
	body := dst[synthHeaderBytes:PageBytes]
	for i := 0; i+8 <= len(body); i += 8 {
		binary.LittleEndian.PutUint64(body[i:], splitmix(&x))
	}
}

func (g *SynthGuest) writePage(p int, v uint64) {
	g.fillPage(g.ram[p*PageBytes:(p+1)*PageBytes], p, v)
	if t := g.explicit.Load(); t != nil {
		t.MarkPage(p)
	}
}

func (g *SynthGuest) start() {
	g.wg.Add(1)
	go g.writer()
}

// writer dirties pages at the configured rate, less the throttle, in
// batches of at most synthBatchPages under the lock.
func (g *SynthGuest) writer() {
	defer g.wg.Done()
	if g.cfg.DirtyBytesPerSecond == 0 {
		return
	}
	t := time.NewTicker(synthTick)
	defer t.Stop()
	last := time.Now()
	var credit float64 // pages owed
	live := g.livePages()
	hot := max(1, live/10)
	for {
		select {
		case <-g.quit:
			return
		case now := <-t.C:
			pct := float64(100 - g.throttle.Load())
			credit += now.Sub(last).Seconds() * float64(g.cfg.DirtyBytesPerSecond) / PageBytes * pct / 100
			last = now
			// A paused or slow writer does not catch up later.
			credit = min(credit, float64(g.cfg.DirtyBytesPerSecond)/PageBytes/10+synthBatchPages)
			for credit >= 1 {
				n := min(int(credit), synthBatchPages)
				if !g.writeBatch(n, live, hot) {
					credit = 0
					last = time.Now()
					break
				}
				credit -= float64(n)
			}
		}
	}
}

// writeBatch writes n pages; false if the guest was paused (after waiting
// for the resume) or stopped.
func (g *SynthGuest) writeBatch(n, live, hot int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.paused {
		for g.paused && !g.stopped {
			g.cond.Wait()
		}
		return false
	}
	if g.stopped {
		return false
	}
	for range n {
		var k int
		if g.cfg.Pattern == "sequential" {
			// The picker state is the cursor: it travels in the
			// device state, so the walk goes on where it stopped.
			k = int(g.rng % uint64(live))
			g.rng++
			p := g.pageOf(k)
			v := binary.LittleEndian.Uint64(g.ram[p*PageBytes+8:])
			g.writePage(p, v+1)
			g.writes++
			continue
		}
		r := splitmix(&g.rng)
		if g.cfg.Pattern == "hotset" && r%10 != 0 {
			k = int((r >> 8) % uint64(hot))
		} else {
			k = int((r >> 8) % uint64(live))
		}
		p := g.pageOf(k)
		v := binary.LittleEndian.Uint64(g.ram[p*PageBytes+8:])
		g.writePage(p, v+1)
		g.writes++
	}
	return true
}

// Pause implements Guest: it returns once no batch is being written.
func (g *SynthGuest) Pause() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return errors.New("migrate: guest stopped")
	}
	g.paused = true
	return nil
}

// Resume implements Guest.
func (g *SynthGuest) Resume() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return errors.New("migrate: guest stopped")
	}
	g.paused = false
	g.cond.Broadcast()
	return nil
}

// Throttle implements Guest.
func (g *SynthGuest) Throttle(percent int) {
	g.throttle.Store(int32(max(0, min(percent, ThrottleMaxPercent))))
}

// ThrottlePercent returns the current throttle.
func (g *SynthGuest) ThrottlePercent() int { return int(g.throttle.Load()) }

// State implements Guest: the workload and the writer's counters.
func (g *SynthGuest) State() ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.paused {
		return nil, errors.New("migrate: device state of a running guest")
	}
	b := make([]byte, 0, synthStateBytes)
	pattern, content := uint64(patternCode(g.cfg.Pattern)), uint64(0)
	if g.cfg.Content == "halfzero" {
		content = 1
	}
	for _, v := range []uint64{synthStateMagic, uint64(g.cfg.RAMBytes), uint64(g.cfg.DirtyBytesPerSecond), pattern, content, g.cfg.Seed, g.writes, g.rng} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b, nil
}

// Writes returns the page writes so far.
func (g *SynthGuest) Writes() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.writes
}

// Running reports whether the writer may write (not paused, not stopped).
func (g *SynthGuest) Running() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.paused && !g.stopped
}

// NewTracker returns a dirty tracker over the guest's RAM: userfaultfd
// where the kernel has it, else an ExplicitTracker the writer feeds. Close
// it (CloseTracker) after the migration.
func (g *SynthGuest) NewTracker() (Tracker, error) {
	t, err := NewUffdTracker(g.ram)
	if err == nil {
		return t, nil
	}
	var ue *UnsupportedError
	if !errors.As(err, &ue) {
		return nil, err
	}
	et, err := NewExplicitTracker(g.cfg.RAMBytes)
	if err != nil {
		return nil, err
	}
	g.explicit.Store(et)
	return et, nil
}

// CloseTracker closes t and stops feeding it.
func (g *SynthGuest) CloseTracker(t Tracker) error {
	if et, ok := t.(*ExplicitTracker); ok {
		g.explicit.CompareAndSwap(et, nil)
	}
	return t.Close()
}

// Stop ends the writer for good (the guest moved away) and frees nothing:
// Close does.
func (g *SynthGuest) Stop() {
	g.mu.Lock()
	if !g.stopped {
		g.stopped = true
		close(g.quit)
		g.cond.Broadcast()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

// Close stops the guest and frees its RAM.
func (g *SynthGuest) Close() error {
	g.Stop()
	return g.mem.Close()
}

// CheckResult says what Check found.
type CheckResult struct {
	LivePages   int    `json:"live_pages"`
	ZeroPages   int    `json:"zero_pages"`
	Writes      uint64 `json:"writes"`
	VersionSum  uint64 `json:"version_sum"` // sum of (version - 1); must equal Writes
	BadPages    int    `json:"bad_pages"`
	FirstBad    int    `json:"first_bad_page"`
	FirstReason string `json:"first_reason,omitempty"`
}

// OK reports whether the guest is consistent.
func (r CheckResult) OK() bool { return r.BadPages == 0 && r.VersionSum == r.Writes }

// Check pauses the guest, verifies every page and the write count, and
// resumes it if it was running.
func (g *SynthGuest) Check() CheckResult {
	g.mu.Lock()
	defer g.mu.Unlock()
	res := CheckResult{Writes: g.writes, FirstBad: -1}
	want := make([]byte, PageBytes)
	bad := func(p int, why string) {
		if res.BadPages == 0 {
			res.FirstBad, res.FirstReason = p, why
		}
		res.BadPages++
	}
	pages := int(g.cfg.RAMBytes / PageBytes)
	for p := range pages {
		page := g.ram[p*PageBytes : (p+1)*PageBytes]
		if g.cfg.Content == "halfzero" && p%2 == 0 {
			res.ZeroPages++
			if !isZero(page) {
				bad(p, "a page that must stay zero is not")
			}
			continue
		}
		res.LivePages++
		v := binary.LittleEndian.Uint64(page[8:])
		if v == 0 || binary.LittleEndian.Uint64(page[0:]) != uint64(p) {
			bad(p, fmt.Sprintf("header says page %d version %d", binary.LittleEndian.Uint64(page[0:]), v))
			continue
		}
		g.fillPage(want, p, v)
		if string(want) != string(page) {
			bad(p, fmt.Sprintf("body of version %d does not match", v))
			continue
		}
		res.VersionSum += v - 1
	}
	return res
}

func isZero(b []byte) bool {
	for len(b) >= PageBytes {
		if string(b[:PageBytes]) != string(zeroPage[:]) {
			return false
		}
		b = b[PageBytes:]
	}
	return true
}
