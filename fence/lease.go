package fence

import (
	"fmt"
	"math/big"
)

// The self-fence lease.
//
// A node may acknowledge writes only while it holds its lease. The lease is
// renewed by every observation that the node is quorate and runs out LeaseMs
// (default 2x the token timeout) after the last one. A node cut off from the
// majority therefore stops acknowledging writes on its own, whether or not
// anyone can power it off (invariant 3).
//
// The other side of the bargain is SurvivorWaitMs: a quorate partition that
// cannot verify a power fence waits that long after it stopped counting the
// victim before it promotes a new primary. The wait covers, in the worst
// case allowed by the config:
//
//   - MaxMessageDelayMs: a heartbeat from the survivors, sent just before
//     they stopped counting the victim, still reaching it;
//   - StallMs: the victim's process pausing for less than StallMs (a GC
//     pause, a busy host) and taking that heartbeat in only then (longer
//     pauses are handled by the stall rule below);
//   - TokenTimeoutMs: the victim's membership counting that heartbeat for
//     one more token before it calls itself inquorate;
//   - LeaseMs: the lease after the victim's last quorate observation;
//   - clock rate drift: the victim measures token and lease on a clock that
//     may run slow by DriftPPM, the survivor measures its wait on one that
//     may run fast by DriftPPM. So the wait is
//     ceil((1+ρ) * (MaxMessageDelayMs + StallMs + (TokenTimeoutMs+LeaseMs)/(1-ρ))) + 1
//     with ρ = DriftPPM/1e6: its real length is always longer than the real
//     length of the victim's remaining time (the +1 pays for both clocks
//     being read in whole milliseconds).
//
// With the defaults (lease 2T, delay T, stall T/2, 2 %) the wait is about
// 4.65 T after the survivors stop counting the victim, which is itself about
// T after the victim was cut off.
//
// Why DriftPPM defaults to 20000 (2 %): a quartz oscillator is off by up to
// ~100 ppm and NTP's kernel discipline slews CLOCK_MONOTONIC by up to
// 500 ppm, but chrony corrects large offsets by changing the tick length
// (up to 83333 ppm by default, and ADJ_TICK allows 10 %). 2 % covers the
// first two with a factor of 40 and costs 4 % of a wait; hosts whose
// time daemon may slew faster must raise DriftPPM (or the daemon should
// measure leases on CLOCK_MONOTONIC_RAW, which no time daemon slews).
//
// What the wait relies on, and the daemon must provide:
//
//  1. After the survivors stop counting the victim (lostAtMs), nothing they
//     send renews the victim's quorate view: a peer's heartbeat counts for
//     the victim only while it lists the victim as heard.
//  2. Heartbeats are delivered within MaxMessageDelayMs or not at all,
//     except into a stalled receiver (a paused process, a VM stopped): see
//     the stall rule below.
//  3. The victim checks MayAck at the moment it acknowledges, on the same
//     clock it feeds to Observe. A write whose ack was decided before the
//     lease ended but sent after a pause is stopped by the storage epoch,
//     not by the lease: the lease is one fence among several.
//
// The stall rule: when Observe is not called for longer than StallMs (the
// process was paused, the host froze), the heartbeats queued in its socket
// during the stall are old, and a quorate verdict built from them says
// nothing about now. So after a stall, quorate observations renew the lease
// only once the node has been seen quorate for TokenTimeoutMs +
// MaxMessageDelayMs since it woke up: by then every stale heartbeat has aged
// out of the membership view. The daemon must therefore call Observe more
// often than every StallMs while it runs (every 100 ms, say).

// LeaseConfig is the lease's timing. Zero fields take defaults.
type LeaseConfig struct {
	TokenTimeoutMs    int64 `json:"token_timeout_ms"`     // membership's loss detection time
	LeaseMs           int64 `json:"lease_ms"`             // default 2 * TokenTimeoutMs
	MaxMessageDelayMs int64 `json:"max_message_delay_ms"` // default TokenTimeoutMs
	DriftPPM          int64 `json:"drift_ppm"`            // default 20000
	StallMs           int64 `json:"stall_ms"`             // default TokenTimeoutMs / 2
}

// Lease limits.
const (
	maxLeaseTimeMs  = 3_600_000 // one hour: any lease field
	maxDriftPPM     = 200_000   // 20 %: beyond that a clock is broken, not drifting
	defaultDriftPPM = 20_000
	ppm             = 1_000_000
)

// WithDefaults fills zero fields.
func (c LeaseConfig) WithDefaults() LeaseConfig {
	if c.LeaseMs == 0 {
		c.LeaseMs = 2 * c.TokenTimeoutMs
	}
	if c.MaxMessageDelayMs == 0 {
		c.MaxMessageDelayMs = c.TokenTimeoutMs
	}
	if c.DriftPPM == 0 {
		c.DriftPPM = defaultDriftPPM
	}
	if c.StallMs == 0 {
		c.StallMs = max(c.TokenTimeoutMs/2, 1)
	}
	return c
}

// Validate checks a config after WithDefaults.
func (c LeaseConfig) Validate() error {
	for _, f := range []struct {
		name string
		v    int64
		min  int64
	}{{"token_timeout_ms", c.TokenTimeoutMs, 1}, {"lease_ms", c.LeaseMs, 1}, {"max_message_delay_ms", c.MaxMessageDelayMs, 0}, {"stall_ms", c.StallMs, 1}} {
		if f.v < f.min || f.v > maxLeaseTimeMs {
			return fmt.Errorf("lease: %s = %d, want %d..%d", f.name, f.v, f.min, maxLeaseTimeMs)
		}
	}
	if c.DriftPPM < 0 || c.DriftPPM > maxDriftPPM {
		return fmt.Errorf("lease: drift_ppm = %d, want 0..%d", c.DriftPPM, maxDriftPPM)
	}
	return nil
}

// SurvivorWaitMs is how long, on the survivor's clock, the survivor waits
// after lostAtMs before it may treat the victim's lease as ended. See the
// comment at the top of this file for the formula and its assumptions.
func (c LeaseConfig) SurvivorWaitMs() int64 {
	c = c.WithDefaults()
	rho := big.NewInt(c.DriftPPM)
	one := big.NewInt(ppm)
	fast := new(big.Int).Add(one, rho) // survivor's clock rate bound, in ppm
	slow := new(big.Int).Sub(one, rho) // victim's clock rate bound, in ppm
	// (1+ρ) * (D+S + (T+L)/(1-ρ)) = fast*((D+S)*slow + (T+L)*ppm) / (slow*ppm)
	num := new(big.Int).Mul(big.NewInt(c.MaxMessageDelayMs+c.StallMs), slow)
	num.Add(num, new(big.Int).Mul(big.NewInt(c.TokenTimeoutMs+c.LeaseMs), one))
	num.Mul(num, fast)
	den := new(big.Int).Mul(slow, one)
	q, r := new(big.Int).QuoRem(num, den, new(big.Int))
	if r.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	return q.Int64() + 1
}

// PromoteNotBeforeMs is the survivor-clock time before which the victim
// may still hold its lease, given the survivor-clock time lostAtMs at which
// the survivors stopped counting it.
func (c LeaseConfig) PromoteNotBeforeMs(lostAtMs int64) int64 {
	return lostAtMs + c.SurvivorWaitMs()
}

// LeasePhase names where a node's lease is.
type LeasePhase string

// Lease phases.
const (
	LeaseNever   LeasePhase = "never"   // never quorate since start: no lease
	LeaseHeld    LeasePhase = "held"    // quorate now
	LeaseGrace   LeasePhase = "grace"   // inquorate, lease still running: may ack
	LeaseExpired LeasePhase = "expired" // inquorate past the lease: self-fenced
	LeaseWaking  LeasePhase = "waking"  // after a stall, quorate but not yet trusted
)

// LeaseState is the answer to one Observe.
type LeaseState struct {
	Phase       LeasePhase `json:"phase"`
	MayAck      bool       `json:"may_ack"`
	Quorate     bool       `json:"quorate"`
	ExpiresAtMs int64      `json:"expires_at_ms,omitempty"` // end of the lease; 0 when never held
	RemainingMs int64      `json:"remaining_ms"`
}

// Lease is the self-fence state machine of one node. It does no I/O and
// reads no clock: the daemon feeds it (nowMs, quorate) on every membership
// change and every tick (well under StallMs apart), and obeys MayAck.
// Not safe for concurrent use.
type Lease struct {
	cfg           LeaseConfig
	started       bool
	lastNowMs     int64
	lastRenewMs   int64
	held          bool  // renewed at least once
	wokeAtMs      int64 // when the last stall ended
	quorateSince  int64 // first quorate observation of the current quorate run
	wasQuorate    bool
	pendingWaking bool // a stall ended and quorate has not yet held long enough since
}

// NewLease returns a lease that is not held (a node may not ack before it
// has been quorate once).
func NewLease(cfg LeaseConfig) (*Lease, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Lease{cfg: cfg}, nil
}

// Config returns the config with defaults filled in.
func (l *Lease) Config() LeaseConfig { return l.cfg }

// Observe feeds one observation and returns the state at nowMs. Time that
// goes backwards is taken as no time passing (it never lengthens a lease).
func (l *Lease) Observe(nowMs int64, quorate bool) LeaseState {
	if l.started && nowMs < l.lastNowMs {
		nowMs = l.lastNowMs
	}
	if l.started && nowMs-l.lastNowMs > l.cfg.StallMs {
		// Stalled: what the membership says now may be built from old
		// heartbeats. Distrust quorate until it has held long enough.
		l.pendingWaking = true
		l.wokeAtMs = nowMs
		l.wasQuorate = false
	}
	l.started = true
	l.lastNowMs = nowMs

	if quorate {
		if !l.wasQuorate {
			l.quorateSince = nowMs
		}
		l.wasQuorate = true
		if l.pendingWaking && nowMs-l.quorateSince > l.cfg.TokenTimeoutMs+l.cfg.MaxMessageDelayMs && l.quorateSince >= l.wokeAtMs {
			l.pendingWaking = false
		}
		if !l.pendingWaking {
			l.lastRenewMs = nowMs
			l.held = true
		}
	} else {
		l.wasQuorate = false
	}
	return l.state(nowMs, quorate)
}

func (l *Lease) state(nowMs int64, quorate bool) LeaseState {
	st := LeaseState{Quorate: quorate}
	if !l.held {
		st.Phase = LeaseNever
		if l.pendingWaking && quorate {
			st.Phase = LeaseWaking
		}
		return st
	}
	st.ExpiresAtMs = l.lastRenewMs + l.cfg.LeaseMs
	st.RemainingMs = max(st.ExpiresAtMs-nowMs, 0)
	st.MayAck = nowMs < st.ExpiresAtMs
	switch {
	case quorate && !l.pendingWaking:
		st.Phase = LeaseHeld
	case quorate:
		// Waking: the lease renewed before the stall still counts (the
		// survivors' wait covers it); the quorate verdict does not renew.
		st.Phase = LeaseWaking
	case st.MayAck:
		st.Phase = LeaseGrace
	default:
		st.Phase = LeaseExpired
	}
	return st
}
