package fence

import (
	"testing"

	"pgregory.net/rapid"
)

func TestLeaseDefaults(t *testing.T) {
	c := LeaseConfig{TokenTimeoutMs: 1000}.WithDefaults()
	if c.LeaseMs != 2000 || c.MaxMessageDelayMs != 1000 || c.DriftPPM != 20000 || c.StallMs != 500 {
		t.Fatalf("defaults %+v", c)
	}
	// 1.02 * (1000 + 500 + 3000/0.98) = 4652.2..., ceil 4653, +1.
	if w := c.SurvivorWaitMs(); w != 4654 {
		t.Fatalf("survivor wait %d; want 4654", w)
	}
	if w := (LeaseConfig{TokenTimeoutMs: 1000, DriftPPM: 0, MaxMessageDelayMs: 0, StallMs: 1}).WithDefaults(); w.DriftPPM != defaultDriftPPM {
		t.Fatalf("zero drift takes the default: %+v", w)
	}
	for _, bad := range []LeaseConfig{{}, {TokenTimeoutMs: -1}, {TokenTimeoutMs: 1000, DriftPPM: maxDriftPPM + 1}, {TokenTimeoutMs: maxLeaseTimeMs + 1}} {
		if _, err := NewLease(bad); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}

// TestLeaseTable walks one node through its phases.
func TestLeaseTable(t *testing.T) {
	l, err := NewLease(LeaseConfig{TokenTimeoutMs: 1000}) // lease 2000, stall 500
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		nowMs   int64
		quorate bool
		phase   LeasePhase
		mayAck  bool
	}{
		{0, false, LeaseNever, false}, // never quorate: no lease
		{100, true, LeaseHeld, true},
		{400, true, LeaseHeld, true},
		{800, false, LeaseGrace, true}, // inquorate: lease from 400 runs to 2400
		{1200, false, LeaseGrace, true},
		{1600, false, LeaseGrace, true},
		{2000, false, LeaseGrace, true},
		{2399, false, LeaseGrace, true},
		{2400, false, LeaseExpired, false}, // self-fenced
		{2700, true, LeaseHeld, true},      // quorate again: renewed
		{2600, true, LeaseHeld, true},      // time going back is no time
		{2900, true, LeaseHeld, true},
		// stalled for 10 s (SIGSTOP): wakes quorate on stale heartbeats
		{12900, true, LeaseWaking, false},
		{13300, true, LeaseWaking, false},
		{13700, true, LeaseWaking, false},
		{14100, true, LeaseWaking, false},
		{14500, true, LeaseWaking, false},
		{14901, true, LeaseHeld, true}, // quorate for > T + D since waking
		// a short stall inside the lease: the old renewal still counts
		{15501, true, LeaseWaking, true},
		{15901, true, LeaseWaking, true},
		{16301, true, LeaseWaking, true},
		{16701, false, LeaseGrace, true},
		{16901, false, LeaseExpired, false}, // 14901 + 2000
	} {
		st := l.Observe(step.nowMs, step.quorate)
		if st.Phase != step.phase || st.MayAck != step.mayAck {
			t.Fatalf("at %d quorate=%v: %+v; want %s mayAck=%v", step.nowMs, step.quorate, st, step.phase, step.mayAck)
		}
	}
}

// clock is a node's clock: local µs = offsetUs + realUs*ratePPM/1e6.
type clock struct{ offsetUs, ratePPM int64 }

func (c clock) ms(realUs int64) int64 { return (c.offsetUs + realUs*c.ratePPM/ppm) / 1000 }

// TestLeaseSurvivorWaitsOutVictim is the lease's safety property: whatever
// the timing within the config's bounds (clock rates off by up to DriftPPM
// each way, heartbeat delays up to MaxMessageDelayMs, victim ticks and
// stalls of any length), every instant at which the victim may still
// acknowledge a write comes before the instant at which the survivor's
// clock reaches PromoteNotBeforeMs.
func TestLeaseSurvivorWaitsOutVictim(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		tok := rapid.Int64Range(20, 3000).Draw(t, "tokenMs")
		cfg := LeaseConfig{
			TokenTimeoutMs:    tok,
			LeaseMs:           rapid.Int64Range(1, 4*tok).Draw(t, "leaseMs"),
			MaxMessageDelayMs: rapid.Int64Range(0, tok).Draw(t, "delayMs"),
			DriftPPM:          rapid.Int64Range(1, maxDriftPPM).Draw(t, "driftPPM"),
		}.WithDefaults()
		l, err := NewLease(cfg)
		if err != nil {
			t.Fatal(err)
		}
		rho := cfg.DriftPPM
		victim := clock{rapid.Int64Range(0, 1e12).Draw(t, "victimOffUs"), rapid.Int64Range(ppm-rho, ppm+rho).Draw(t, "victimPPM")}
		surv := clock{rapid.Int64Range(0, 1e12).Draw(t, "survOffUs"), rapid.Int64Range(ppm-rho, ppm+rho).Draw(t, "survPPM")}

		// Real time in µs. Until lostAtUs the survivors count the victim;
		// their last heartbeat that counts reaches it lastArrivalUs.
		lostAtUs := rapid.Int64Range(0, 10*tok*1000).Draw(t, "lostAtUs")
		arrivalUs := lostAtUs + rapid.Int64Range(0, cfg.MaxMessageDelayMs*1000).Draw(t, "netDelayUs")
		promoteAt := cfg.PromoteNotBeforeMs(surv.ms(lostAtUs))

		// The victim's run: ticks while running (a real-time step short
		// enough to stay under StallMs on its clock), and stalls.
		maxTickUs := cfg.StallMs * 1000 * (ppm - rho) / ppm / 2
		nowUs := int64(0)
		lastHeardUs := int64(0)       // real time the membership last took in a counting heartbeat
		l.Observe(victim.ms(0), true) // running, and hearing the others, from the start
		endUs := lostAtUs + 20*(cfg.TokenTimeoutMs+cfg.LeaseMs+cfg.MaxMessageDelayMs+cfg.StallMs)*1000
		for steps := 0; nowUs < endUs && steps < 2000; steps++ {
			var stepUs int64
			switch rapid.IntRange(0, 9).Draw(t, "kind") {
			case 0:
				stepUs = rapid.Int64Range(1, 3*(cfg.TokenTimeoutMs+cfg.LeaseMs)*1000).Draw(t, "stallUs")
			case 1: // a pause just short of (or just over) the stall rule
				stepUs = rapid.Int64Range(cfg.StallMs*1000*(ppm-rho)/ppm-2000, cfg.StallMs*1000*(ppm+rho)/ppm+2000).Draw(t, "pauseUs")
				stepUs = max(stepUs, 1)
			default:
				stepUs = rapid.Int64Range(1, max(maxTickUs, 1)).Draw(t, "tickUs")
			}
			prevUs := nowUs
			nowUs += stepUs
			// Heartbeats kept arriving up to arrivalUs. While running the
			// victim takes them in as they come; after a gap it takes the
			// queued ones in now (a stall of any length, short ones too).
			switch {
			case nowUs <= arrivalUs:
				lastHeardUs = nowUs
			case prevUs < arrivalUs:
				// Taken in as it came, or only now: the victim was paused
				// (for less than StallMs, or longer) with it queued.
				lastHeardUs = arrivalUs
				if rapid.Bool().Draw(t, "queued") {
					lastHeardUs = nowUs
				}
			}
			quorate := victim.ms(nowUs)-victim.ms(lastHeardUs) <= cfg.TokenTimeoutMs
			st := l.Observe(victim.ms(nowUs), quorate)
			if st.MayAck && surv.ms(nowUs) >= promoteAt {
				t.Fatalf("victim may ack at real %d µs (its clock %d ms, %s), survivor's clock %d ms has reached promote time %d (lost at real %d µs)",
					nowUs, victim.ms(nowUs), st.Phase, surv.ms(nowUs), promoteAt, lostAtUs)
			}
		}
	})
}
