package fence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Level is one level of a node's fencing topology: every device in it must
// succeed for the level to succeed (two PDUs feeding two power supplies,
// say). Devices run one after the other, in order, as Pacemaker does.
type Level struct {
	Devices []Device `json:"devices"`
}

// Plan is how to fence one node: its levels, tried in order until one
// succeeds, a total timeout over everything (delay included), and the
// fence-race delay.
//
// The delay is Pacemaker's pcmk_delay_base/pcmk_delay_max: wait DelayBaseMs
// plus a random part so that the total stays within DelayMaxMs (when
// DelayMaxMs > DelayBaseMs). In a two-node cluster with a split, both sides
// are quorate (two_node) and both want to shoot; put a delay on the plan
// that fences the node you prefer to survive, and the other side shoots
// first. The random part breaks ties when both have the same delay.
type Plan struct {
	Target         string  `json:"target"`
	Levels         []Level `json:"levels"`
	TotalTimeoutMs int64   `json:"total_timeout_ms"`
	DelayBaseMs    int64   `json:"delay_base_ms,omitempty"`
	DelayMaxMs     int64   `json:"delay_max_ms,omitempty"`
}

// Plan limits and defaults.
const (
	maxLevels             = 8
	maxDevicesPerLevel    = 8
	defaultTotalTimeoutMs = 120_000
	maxTotalTimeoutMs     = 1_800_000 // 30 min
	maxDelayMs            = 600_000
)

// Validate checks the plan and its devices.
func (p Plan) Validate() error {
	if p.Target == "" {
		return errors.New("fence plan: no target")
	}
	if len(p.Levels) == 0 {
		return fmt.Errorf("fence plan for %s: no levels", p.Target)
	}
	if len(p.Levels) > maxLevels {
		return fmt.Errorf("fence plan for %s: %d levels, at most %d", p.Target, len(p.Levels), maxLevels)
	}
	for i, l := range p.Levels {
		if len(l.Devices) == 0 || len(l.Devices) > maxDevicesPerLevel {
			return fmt.Errorf("fence plan for %s: level %d has %d devices, want 1..%d", p.Target, i+1, len(l.Devices), maxDevicesPerLevel)
		}
		for _, d := range l.Devices {
			if err := d.Validate(); err != nil {
				return fmt.Errorf("fence plan for %s: level %d: %w", p.Target, i+1, err)
			}
		}
	}
	if p.TotalTimeoutMs < 0 || p.TotalTimeoutMs > maxTotalTimeoutMs {
		return fmt.Errorf("fence plan for %s: total timeout %d ms out of range 0..%d", p.Target, p.TotalTimeoutMs, maxTotalTimeoutMs)
	}
	if p.DelayBaseMs < 0 || p.DelayMaxMs < 0 || p.DelayBaseMs > maxDelayMs || p.DelayMaxMs > maxDelayMs {
		return fmt.Errorf("fence plan for %s: delays %d/%d ms out of range 0..%d", p.Target, p.DelayBaseMs, p.DelayMaxMs, maxDelayMs)
	}
	// A delay that eats the whole timeout would make every fence fail.
	if d := max(p.DelayBaseMs, p.DelayMaxMs); d >= p.totalTimeoutMs() {
		return fmt.Errorf("fence plan for %s: delay up to %d ms is not shorter than the total timeout %d ms", p.Target, d, p.totalTimeoutMs())
	}
	return nil
}

func (p Plan) totalTimeoutMs() int64 {
	if p.TotalTimeoutMs > 0 {
		return p.TotalTimeoutMs
	}
	return defaultTotalTimeoutMs
}

// FenceDelayMs is the fence-race delay: baseMs, plus randMs(n) with n =
// maxMs-baseMs+1 when maxMs > baseMs, so the result is in [baseMs, maxMs].
// randMs must return a value in [0, n).
func FenceDelayMs(baseMs, maxMs int64, randMs func(n int64) int64) int64 {
	if maxMs <= baseMs {
		return baseMs
	}
	r := randMs(maxMs - baseMs + 1)
	if r < 0 || r > maxMs-baseMs {
		// A broken random source must not stretch or skip the delay.
		r = 0
	}
	return baseMs + r
}

// Attempt is one device run within a fence operation.
type Attempt struct {
	Level      int    `json:"level"` // 1-based
	Device     string `json:"device"`
	Agent      string `json:"agent"`
	Result     Result `json:"result"`
	DurationMs int64  `json:"duration_ms"`
	Error      string `json:"error,omitempty"`
}

// Outcome is the result of a fence operation. OK means a level succeeded:
// every device of Level verified the target off.
type Outcome struct {
	Target     string    `json:"target"`
	OK         bool      `json:"ok"`
	Level      int       `json:"level,omitempty"` // the level that succeeded, 1-based
	DelayMs    int64     `json:"delay_ms"`
	DurationMs int64     `json:"duration_ms"`
	Attempts   []Attempt `json:"attempts"`
	Error      string    `json:"error,omitempty"`
}

// ErrFenceFailed is wrapped by Fence's error when no level succeeded.
var ErrFenceFailed = errors.New("fence failed")

// ErrFenceInProgress is returned when the same target is already being
// fenced through this Fencer: two concurrent operations would double the
// power cycles and race each other's status checks.
var ErrFenceInProgress = errors.New("fence already in progress")

// ShootFunc fences target with one device and returns nil only when the
// target is verified off. AgentShooter is the real one.
type ShootFunc func(ctx context.Context, target string, dev Device) error

// AgentShooter shoots with r.PowerOff (off, then status until off).
func AgentShooter(r *AgentRunner) ShootFunc {
	return func(ctx context.Context, _ string, dev Device) error {
		_, err := r.PowerOff(ctx, dev)
		return err
	}
}

// Fencer runs Plans. All of its I/O and time is injected, so the level
// logic is tested with scripted devices and a fake clock; NewFencer fills in
// the real ones.
type Fencer struct {
	Shoot   ShootFunc
	NowMs   func() int64                              // Unix ms, for history and durations
	Sleep   func(ctx context.Context, ms int64) error // returns ctx's error if cut short
	RandMs  func(n int64) int64                       // uniform in [0, n)
	History *History                                  // may be nil
	Logger  *slog.Logger                              // may be nil

	mu       sync.Mutex
	inFlight map[string]bool
}

// NewFencer returns a Fencer that shoots through r with the real clock.
func NewFencer(r *AgentRunner, h *History, logger *slog.Logger) *Fencer {
	return &Fencer{
		Shoot:   AgentShooter(r),
		NowMs:   func() int64 { return time.Now().UnixMilli() },
		Sleep:   sleepCtx,
		RandMs:  func(n int64) int64 { return rand.Int64N(n) },
		History: h,
		Logger:  logger,
	}
}

func sleepCtx(ctx context.Context, ms int64) error {
	if ms <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// Fence runs plan: the fence-race delay, then level after level until every
// device of one level succeeded, all within the plan's total timeout. It
// records every attempt in History. The error is nil only when Outcome.OK.
//
// Only a verified-off counts: a device error, a timeout, a cancelled ctx
// all make the level fail. When the total timeout ends in the middle of a
// level, the remaining levels are not tried (and are not recorded).
func (f *Fencer) Fence(ctx context.Context, plan Plan) (out Outcome, err error) {
	out = Outcome{Target: plan.Target}
	if f.Shoot == nil {
		err := errors.New("fence: Fencer has no Shoot function")
		out.Error = err.Error()
		return out, err
	}
	f.fillDefaults()
	if err := plan.Validate(); err != nil {
		out.Error = err.Error()
		return out, err
	}
	if !f.claim(plan.Target) {
		err := fmt.Errorf("fence %s: %w", plan.Target, ErrFenceInProgress)
		out.Error = err.Error()
		return out, err
	}
	defer f.release(plan.Target)

	ctx, cancel := context.WithTimeoutCause(ctx, time.Duration(plan.totalTimeoutMs())*time.Millisecond,
		fmt.Errorf("fence %s: total timeout of %d ms: %w", plan.Target, plan.totalTimeoutMs(), ErrTimeout))
	defer cancel()
	startMs := f.NowMs()
	defer func() { out.DurationMs = max(f.NowMs()-startMs, 0) }()

	out.DelayMs = FenceDelayMs(plan.DelayBaseMs, plan.DelayMaxMs, f.RandMs)
	if out.DelayMs > 0 {
		f.log(slog.LevelInfo, "fence delay", "target", plan.Target, "delay_ms", out.DelayMs)
		if serr := f.Sleep(ctx, out.DelayMs); serr != nil {
			err = fmt.Errorf("fence %s: during the %d ms fence delay: %w: %w", plan.Target, out.DelayMs, ErrFenceFailed, serr)
			out.Error = err.Error()
			return out, err
		}
	}

	var lastErr error
	for li, level := range plan.Levels {
		if ctx.Err() != nil {
			break
		}
		levelOK := true
		for _, dev := range level.Devices {
			a, err := f.shootOne(ctx, plan.Target, li+1, dev)
			out.Attempts = append(out.Attempts, a)
			if err != nil {
				lastErr = err
				levelOK = false
				// The level has failed; its other devices cannot make it
				// succeed, so go on to the next level.
				break
			}
		}
		if levelOK {
			out.OK, out.Level = true, li+1
			f.log(slog.LevelInfo, "fenced", "target", plan.Target, "level", li+1)
			return out, nil
		}
	}
	if lastErr == nil {
		lastErr = context.Cause(ctx)
	}
	err = fmt.Errorf("fence %s: %w: no level of %d succeeded; last: %w", plan.Target, ErrFenceFailed, len(plan.Levels), lastErr)
	out.Error = err.Error()
	f.log(slog.LevelError, "fence failed", "target", plan.Target, "err", out.Error)
	return out, err
}

func (f *Fencer) shootOne(ctx context.Context, target string, level int, dev Device) (Attempt, error) {
	startMs := f.NowMs()
	err := f.Shoot(ctx, target, dev)
	if err == nil && ctx.Err() != nil {
		// A device that says yes after the total timeout still counts as a
		// timeout: the caller has already been told the fence failed.
		err = context.Cause(ctx)
	}
	a := Attempt{Level: level, Device: dev.Name, Agent: dev.Agent, Result: ResultOK, DurationMs: max(f.NowMs()-startMs, 0)}
	if err != nil {
		a.Result = ResultFailed
		if errors.Is(err, ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
			a.Result = ResultTimeout
		}
		// Errors from this package never hold secret values; a ShootFunc
		// from elsewhere might, so scrub them anyway.
		a.Error = redactValues(err.Error(), dev.Secrets)
	}
	f.History.Add(HistoryEntry{
		TimeMs: startMs, Target: target, Method: MethodAgent, Device: dev.Name, Level: level,
		Action: ActionOff, Result: a.Result, DurationMs: a.DurationMs, Error: a.Error,
	})
	return a, err
}

// fillDefaults gives a hand-built Fencer the real clock, sleep and random
// source for whatever it left nil.
func (f *Fencer) fillDefaults() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.NowMs == nil {
		f.NowMs = func() int64 { return time.Now().UnixMilli() }
	}
	if f.Sleep == nil {
		f.Sleep = sleepCtx
	}
	if f.RandMs == nil {
		f.RandMs = func(n int64) int64 { return rand.Int64N(n) }
	}
}

func (f *Fencer) claim(target string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inFlight == nil {
		f.inFlight = map[string]bool{}
	}
	if f.inFlight[target] {
		return false
	}
	f.inFlight[target] = true
	return true
}

func (f *Fencer) release(target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.inFlight, target)
}

func (f *Fencer) log(level slog.Level, msg string, args ...any) {
	if f.Logger != nil {
		f.Logger.Log(context.Background(), level, msg, args...)
	}
}
