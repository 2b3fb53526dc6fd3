package migrate

import (
	"fmt"
	"time"
)

// Convergence decides, after every round, whether the pre-copy goes on,
// switches over, or gives up, and how hard to throttle the guest. It is a
// pure state machine: the engine feeds it what it measured (no clock, no
// I/O), so its rules are table-tested.
//
// The rules are QEMU's:
//   - bandwidth = bytes put on the wire in the round / the round's time;
//   - switch over when remaining dirty bytes / bandwidth <= the downtime
//     limit (remaining counts raw pages: compression is a bonus, not
//     promised), plus one thing QEMU does not count: the time the last
//     dirty-page Collect took, since the final Collect runs inside the
//     pause (uffd re-protection costs 30-40 µs a written 2 MiB region, so
//     a guest writing all over 2 GiB spends tens of ms there; without it
//     such guests overshot a 50 ms limit by 5-10 ms);
//   - auto-converge: when the guest dirtied more than half the bytes sent
//     in a round, two rounds in a row, throttle it: 20 % first, then 10 %
//     more each time, at most 99 %;
//   - after MaxRounds rounds or the total timeout, cancel.
type Convergence struct {
	cfg ConvergenceConfig

	bandwidthBytesPerSecond float64
	highRounds              int // consecutive rounds dirtying > half the bandwidth
	throttlePercent         int
}

// ConvergenceConfig holds the limits.
type ConvergenceConfig struct {
	DowntimeLimit time.Duration // switch over when expected downtime <= this
	MaxRounds     int           // rounds (the bulk pass is round 0) before cancelling
	Timeout       time.Duration // total time before cancelling; 0 = none
	AutoConverge  bool
}

// Throttle steps of auto-converge, as QEMU's defaults
// (cpu-throttle-initial, cpu-throttle-increment, max-cpu-throttle).
const (
	ThrottleInitialPercent = 20
	ThrottleStepPercent    = 10
	ThrottleMaxPercent     = 99
)

// Limits on the configuration: a round count or timeout beyond these is a
// typo, not a plan.
const (
	MaxRoundsLimit       = 100000
	DefaultMaxRounds     = 1000
	DefaultDowntimeLimit = 100 * time.Millisecond
	DefaultTimeout       = 10 * time.Minute
)

// minMeasureBytes: a round that sent less than this says more about round
// trip latency than about bandwidth; the previous estimate is kept.
const minMeasureBytes = 1 << 20

// RoundMeasure is what the engine measured over one round.
type RoundMeasure struct {
	Round      int           // 0 for the bulk pass
	SentBytes  uint64        // wire bytes of the round (headers, payload)
	Duration   time.Duration // from the round's first byte to its acknowledgement
	DirtyBytes uint64        // dirty bytes collected after the round: what is left to send
	// CollectTime: how long collecting them took, the estimate of the
	// final Collect inside the pause.
	CollectTime time.Duration
	Elapsed     time.Duration // since the migration started
}

// Action is what to do next.
type Action uint8

const (
	ActionContinue   Action = iota // send another round
	ActionSwitchover               // pause the guest and send the rest
	ActionCancel                   // give up; resume the guest on the source
)

var actionNames = [...]string{"continue", "switchover", "cancel"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("action-%d", uint8(a))
}

// Decision is the outcome of one round.
type Decision struct {
	Action                  Action
	ThrottlePercent         int           // to apply to the guest now (0 = none)
	BandwidthBytesPerSecond float64       // current estimate
	ExpectedDowntime        time.Duration // remaining / bandwidth + collect time; -1 if unknown
	Reason                  string        // why, for cancel
}

// NewConvergence checks cfg and returns a state machine at round 0.
func NewConvergence(cfg ConvergenceConfig) (*Convergence, error) {
	if cfg.DowntimeLimit <= 0 || cfg.DowntimeLimit > time.Hour {
		return nil, fmt.Errorf("migrate: downtime limit %v, want (0, 1h]", cfg.DowntimeLimit)
	}
	if cfg.MaxRounds < 1 || cfg.MaxRounds > MaxRoundsLimit {
		return nil, fmt.Errorf("migrate: max rounds %d, want 1..%d", cfg.MaxRounds, MaxRoundsLimit)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("migrate: negative timeout %v", cfg.Timeout)
	}
	return &Convergence{cfg: cfg}, nil
}

// ThrottlePercent is the throttle currently asked of the guest.
func (c *Convergence) ThrottlePercent() int { return c.throttlePercent }

// Next takes one round's measurement and decides.
func (c *Convergence) Next(m RoundMeasure) Decision {
	if m.SentBytes >= minMeasureBytes && m.Duration > 0 {
		c.bandwidthBytesPerSecond = float64(m.SentBytes) / m.Duration.Seconds()
	}
	d := Decision{BandwidthBytesPerSecond: c.bandwidthBytesPerSecond, ExpectedDowntime: -1}
	if c.bandwidthBytesPerSecond > 0 {
		d.ExpectedDowntime = time.Duration(float64(m.DirtyBytes)/c.bandwidthBytesPerSecond*float64(time.Second)) + m.CollectTime
	}
	switch {
	case m.DirtyBytes == 0,
		d.ExpectedDowntime >= 0 && d.ExpectedDowntime <= c.cfg.DowntimeLimit:
		d.Action = ActionSwitchover
		d.ThrottlePercent = c.throttlePercent
		return d
	case c.cfg.Timeout > 0 && m.Elapsed >= c.cfg.Timeout:
		d.Action = ActionCancel
		d.Reason = fmt.Sprintf("timeout %v reached after %d rounds without converging", c.cfg.Timeout, m.Round+1)
		return d
	case m.Round+1 >= c.cfg.MaxRounds:
		d.Action = ActionCancel
		d.Reason = fmt.Sprintf("did not converge in %d rounds", c.cfg.MaxRounds)
		return d
	}
	// QEMU compares the bytes dirtied in the period with half of those
	// transferred. The bulk pass counts: a guest that dirties half the
	// link during it will not converge either.
	if c.cfg.AutoConverge && m.SentBytes > 0 && m.DirtyBytes > m.SentBytes/2 {
		c.highRounds++
		if c.highRounds >= 2 {
			c.highRounds = 0
			switch {
			case c.throttlePercent == 0:
				c.throttlePercent = ThrottleInitialPercent
			default:
				c.throttlePercent = min(c.throttlePercent+ThrottleStepPercent, ThrottleMaxPercent)
			}
		}
	} else {
		c.highRounds = 0
	}
	d.Action = ActionContinue
	d.ThrottlePercent = c.throttlePercent
	return d
}
