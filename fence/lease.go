package fence

import (
	"cmp"
	"fmt"
	"math/big"
	"slices"
)

// The self-fence lease.
//
// A node may acknowledge writes only while it holds its lease. The lease
// runs LeaseMs (default 2x the token timeout) from its anchor, and the
// anchor is measured on the node's own clock from its own heartbeats: when
// the node is quorate, the peers among its members echo its heartbeats
// (membership.Tracker.EchoAnchorsMs), and the anchor is the newest send
// time that a quorum of vote sources has echoed (QuorumAnchorMs; with
// fewer votes than the quorum present, as auto_tie_breaker's half of an
// even split, every vote present must vouch). A node cut off from the
// majority therefore stops acknowledging writes on its own, whether or not
// anyone can power it off (invariant 3).
//
// Anchoring on the node's own send times is what makes the lease short
// to wait out (Raft's leader lease is measured the same way): a heartbeat
// that reaches the node late, or is taken in after the process was paused,
// vouches only for a send time that came before it, so neither message
// delays nor stalls lengthen the lease, and no margin for them is needed.
//
// The other side of the bargain is SurvivorWaitMs: a quorate partition that
// cannot verify a power fence waits that long after the victim was last
// heard by any of its members (membership.Tracker.LastHeardBoundMs), on
// its own clock, before it promotes a new primary. Every echo the victim
// counts was sent by a peer after that peer heard the victim's heartbeat,
// so the victim's anchor came before that receipt in real time, and its
// lease ends at most LeaseMs of the victim's clock later. Clock rates may
// be off by DriftPPM each way (ρ = DriftPPM/1e6): the victim's LeaseMs
// lasts at most LeaseMs/(1-ρ) real ms, the survivor's wait of W lasts at
// least W/(1+ρ). FenceDelayMs pays for the daemon's reaction: from the
// lease's end to its primaries being fenced, on the victim's clock too.
// So the wait is
//
//	ceil((1+ρ) * (LeaseMs+FenceDelayMs)/(1-ρ)) + 1
//
// (the +1 pays for both clocks being read in whole milliseconds). With the
// defaults (lease 2T, 2 %, 100 ms) that is about 2.08 T + 0.1 s after the
// victim was last heard, where the old stop-counting rule cost 4.65 T
// after the survivors stopped counting it, itself a token after it was
// last heard.
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
//  1. The victim's quorate verdicts need a peer of the survivors'
//     partition among its members (two quorate memberships intersect), or
//     a witness vote whose grant moved to the survivors before they count
//     from it (the daemon takes the later of the two). A peer's vote
//     counts for the victim only while that peer's heartbeat lists it as
//     heard, and the anchor is that heartbeat's echo.
//  2. The survivors' bound covers what their members' heartbeats said
//     as far as the survivors received them. A member that hears the
//     victim again (a link that heals halfway) moves the bound at its
//     next heartbeat, but if that heartbeat is lost or late toward the
//     acting node while the member's echoes reach the victim, the victim
//     renews a lease the survivors count as over (found in review, with
//     a test). So the wait alone does not release the old primary's
//     epoch at the voters: the new primary still waits out its read
//     lease, and the storage epoch stops its writes (node/ha.go). A
//     protocol in which members withhold echoes from a node the acting
//     node suspects would close this; it is not built.
//  3. The victim acknowledges nothing after the lease's end, on the clock
//     its heartbeats were stamped with: every acknowledgement asks it
//     (blockrep PrimaryConfig.LeaseOK), and the next tick closes the
//     primaries too. FenceDelayMs covers an acknowledgement checked just
//     before the end and sent just after. One whose check passed before a
//     long pause is stopped by the storage epoch, not by the lease.
//  4. two_node: each node alone is quorate, so its lease never runs out
//     while it runs; the survivors' wait then rests on nothing but the
//     epoch and the read lease. Give two_node clusters a fence device.

// LeaseConfig is the lease's timing. Zero fields take defaults.
type LeaseConfig struct {
	TokenTimeoutMs int64 `json:"token_timeout_ms"` // membership's loss detection time
	LeaseMs        int64 `json:"lease_ms"`         // default 2 * TokenTimeoutMs
	DriftPPM       int64 `json:"drift_ppm"`        // default 20000
	FenceDelayMs   int64 `json:"fence_delay_ms"`   // default 100
}

// Lease limits.
const (
	maxLeaseTimeMs      = 3_600_000 // one hour: any lease field
	maxDriftPPM         = 200_000   // 20 %: beyond that a clock is broken, not drifting
	defaultDriftPPM     = 20_000
	defaultFenceDelayMs = 100
	ppm                 = 1_000_000
)

// WithDefaults fills zero fields.
func (c LeaseConfig) WithDefaults() LeaseConfig {
	if c.LeaseMs == 0 {
		c.LeaseMs = 2 * c.TokenTimeoutMs
	}
	if c.DriftPPM == 0 {
		c.DriftPPM = defaultDriftPPM
	}
	if c.FenceDelayMs == 0 {
		c.FenceDelayMs = defaultFenceDelayMs
	}
	return c
}

// Validate checks a config after WithDefaults.
func (c LeaseConfig) Validate() error {
	for _, f := range []struct {
		name string
		v    int64
		min  int64
	}{{"token_timeout_ms", c.TokenTimeoutMs, 1}, {"lease_ms", c.LeaseMs, 1}, {"fence_delay_ms", c.FenceDelayMs, 1}} {
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
// after the victim was last heard (lastHeardMs) before it may treat the
// victim's lease as ended. See the comment at the top of this file for
// the formula and its assumptions.
func (c LeaseConfig) SurvivorWaitMs() int64 {
	c = c.WithDefaults()
	rho := big.NewInt(c.DriftPPM)
	one := big.NewInt(ppm)
	fast := new(big.Int).Add(one, rho) // survivor's clock rate bound, in ppm
	slow := new(big.Int).Sub(one, rho) // victim's clock rate bound, in ppm
	// (1+ρ) * (L+F)/(1-ρ) = fast*(L+F) / slow
	num := big.NewInt(c.LeaseMs + c.FenceDelayMs)
	num.Mul(num, fast)
	den := slow
	q, r := new(big.Int).QuoRem(num, den, new(big.Int))
	if r.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	return q.Int64() + 1
}

// PromoteNotBeforeMs is the survivor-clock time before which the victim
// may still hold its lease, given a survivor-clock bound lastHeardMs on
// when any member of the survivors' partition last heard it.
func (c LeaseConfig) PromoteNotBeforeMs(lastHeardMs int64) int64 {
	return lastHeardMs + c.SurvivorWaitMs()
}

// LeasePhase names where a node's lease is.
type LeasePhase string

// Lease phases.
const (
	LeaseNever   LeasePhase = "never"   // never renewed since start: no lease
	LeaseHeld    LeasePhase = "held"    // quorate now, lease running
	LeaseGrace   LeasePhase = "grace"   // inquorate, lease still running: may ack
	LeaseExpired LeasePhase = "expired" // inquorate past the lease: self-fenced
	// LeaseWaking: quorate, but the echoes behind the verdict are too old
	// to keep the lease running (after a stall, or while the peers'
	// heartbeats lag): self-fenced until fresh echoes arrive.
	LeaseWaking LeasePhase = "waking"
)

// LeaseState is the answer to one Observe.
type LeaseState struct {
	Phase       LeasePhase `json:"phase"`
	MayAck      bool       `json:"may_ack"`
	Quorate     bool       `json:"quorate"`
	AnchorMs    int64      `json:"anchor_ms,omitempty"`     // the newest anchor; 0 when never held
	ExpiresAtMs int64      `json:"expires_at_ms,omitempty"` // end of the lease; 0 when never held
	RemainingMs int64      `json:"remaining_ms"`
}

// MayAckAt says whether the lease runs at nowMs (for checks between
// observations: the state is only as fresh as its last Observe).
func (s LeaseState) MayAckAt(nowMs int64) bool {
	return s.ExpiresAtMs != 0 && nowMs < s.ExpiresAtMs
}

// Lease is the self-fence state machine of one node. It does no I/O and
// reads no clock: the daemon feeds it (nowMs, quorate, anchorMs) on every
// membership change and every tick, and obeys MayAck.
// Not safe for concurrent use.
type Lease struct {
	cfg       LeaseConfig
	started   bool
	lastNowMs int64
	anchorMs  int64
	held      bool // renewed at least once
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

// Observe feeds one observation and returns the state at nowMs. anchorMs
// is meaningful when quorate: the send time, on this node's clock, of the
// oldest heartbeat its members vouch for (anchorOK false: none recent
// enough, which renews nothing). An anchor after nowMs counts as nowMs,
// one before the current anchor changes nothing, and time that goes
// backwards is taken as no time passing: nothing lengthens a lease but a
// newer echo.
func (l *Lease) Observe(nowMs int64, quorate bool, anchorMs int64, anchorOK bool) LeaseState {
	if l.started && nowMs < l.lastNowMs {
		nowMs = l.lastNowMs
	}
	l.started = true
	l.lastNowMs = nowMs
	if quorate && anchorOK {
		anchorMs = min(anchorMs, nowMs)
		if !l.held || anchorMs > l.anchorMs {
			l.anchorMs = anchorMs
		}
		l.held = true
	}
	return l.state(nowMs, quorate)
}

func (l *Lease) state(nowMs int64, quorate bool) LeaseState {
	st := LeaseState{Quorate: quorate}
	if !l.held {
		st.Phase = LeaseNever
		return st
	}
	st.AnchorMs = l.anchorMs
	st.ExpiresAtMs = l.anchorMs + l.cfg.LeaseMs
	st.RemainingMs = max(st.ExpiresAtMs-nowMs, 0)
	st.MayAck = nowMs < st.ExpiresAtMs
	switch {
	case quorate && st.MayAck:
		st.Phase = LeaseHeld
	case quorate:
		st.Phase = LeaseWaking
	case st.MayAck:
		st.Phase = LeaseGrace
	default:
		st.Phase = LeaseExpired
	}
	return st
}

// VoteAnchor is one source of votes behind a quorate verdict (a member
// peer, the witness) and the anchor it vouches for: the send time, on
// this node's clock, of the newest heartbeat or report of this node it
// has answered.
type VoteAnchor struct {
	Votes    uint32
	AnchorMs int64
}

// QuorumAnchorMs is the newest anchor a quorum vouches for: the largest t
// such that selfVotes plus the votes of the sources whose anchor is at
// least t reach quorumVotes. A member that lags (its echoes old) then
// does not shorten the lease while the others make a quorum without it.
// With selfVotes alone enough (two_node), the anchor is nowMs; ok is
// false when all the sources together do not reach quorumVotes.
func QuorumAnchorMs(nowMs int64, selfVotes, quorumVotes uint32, sources []VoteAnchor) (int64, bool) {
	if selfVotes >= quorumVotes {
		return nowMs, true
	}
	sorted := slices.Clone(sources)
	slices.SortFunc(sorted, func(a, b VoteAnchor) int { return cmp.Compare(b.AnchorMs, a.AnchorMs) })
	votes := selfVotes
	for _, s := range sorted {
		votes += s.Votes
		if votes >= quorumVotes {
			return min(s.AnchorMs, nowMs), true
		}
	}
	return 0, false
}
