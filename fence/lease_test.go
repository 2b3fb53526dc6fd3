package fence

import (
	"math/rand/v2"
	"testing"

	"pgregory.net/rapid"
)

func TestLeaseDefaults(t *testing.T) {
	c := LeaseConfig{TokenTimeoutMs: 1000}.WithDefaults()
	if c.LeaseMs != 2000 || c.DriftPPM != 20000 || c.FenceDelayMs != 100 {
		t.Fatalf("defaults %+v", c)
	}
	// 1.02 * 2100/0.98 = 2185.71..., ceil 2186, +1.
	if w := c.SurvivorWaitMs(); w != 2187 {
		t.Fatalf("survivor wait %d; want 2187", w)
	}
	for _, bad := range []LeaseConfig{{}, {TokenTimeoutMs: -1}, {TokenTimeoutMs: 1000, DriftPPM: maxDriftPPM + 1}, {TokenTimeoutMs: maxLeaseTimeMs + 1}, {TokenTimeoutMs: 1000, FenceDelayMs: -1}} {
		if _, err := NewLease(bad); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}

// TestLeaseTable walks one node through its phases.
func TestLeaseTable(t *testing.T) {
	l, err := NewLease(LeaseConfig{TokenTimeoutMs: 1000}) // lease 2000
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		nowMs    int64
		quorate  bool
		anchorMs int64
		anchorOK bool
		phase    LeasePhase
		mayAck   bool
	}{
		{0, false, 0, false, LeaseNever, false},  // never quorate: no lease
		{100, true, 0, false, LeaseNever, false}, // quorate, but no echo yet
		{300, true, 250, true, LeaseHeld, true},
		{500, true, 400, true, LeaseHeld, true},
		{800, false, 0, false, LeaseGrace, true}, // inquorate: lease from 400 runs to 2400
		{2399, false, 0, false, LeaseGrace, true},
		{2400, false, 0, false, LeaseExpired, false}, // self-fenced
		{2700, true, 2600, true, LeaseHeld, true},    // quorate again: renewed
		{2600, true, 2650, true, LeaseHeld, true},    // time going back is no time
		{2900, true, 2500, true, LeaseHeld, true},    // an older anchor changes nothing: ends 4650
		// stalled for 10 s (SIGSTOP): wakes quorate on old echoes
		{12900, true, 2800, true, LeaseWaking, false},
		{13000, true, 12950, true, LeaseHeld, true},     // a fresh echo
		{13100, true, 20000, true, LeaseHeld, true},     // an anchor after now counts as now
		{15099, false, 0, false, LeaseGrace, true},      // 13100 + 2000
		{15100, false, 0, false, LeaseExpired, false},   // self-fenced
		{15200, true, 15150, false, LeaseWaking, false}, // no usable echo renews nothing
	} {
		st := l.Observe(step.nowMs, step.quorate, step.anchorMs, step.anchorOK)
		if st.Phase != step.phase || st.MayAck != step.mayAck {
			t.Fatalf("at %d quorate=%v anchor=%d/%v: %+v; want %s mayAck=%v", step.nowMs, step.quorate, step.anchorMs, step.anchorOK, st, step.phase, step.mayAck)
		}
		if st.MayAck != st.MayAckAt(step.nowMs) {
			t.Fatalf("at %d: MayAckAt disagrees with MayAck: %+v", step.nowMs, st)
		}
	}
}

// clock is a node's clock: local µs = offsetUs + realUs*ratePPM/1e6.
type clock struct{ offsetUs, ratePPM int64 }

func (c clock) ms(realUs int64) int64 { return (c.offsetUs + realUs*c.ratePPM/ppm) / 1000 }

// realUs is the first real µs at which the clock reads at least localMs.
func (c clock) realUs(localMs int64) int64 {
	r := (localMs*1000 - c.offsetUs) * ppm / c.ratePPM
	for c.ms(r) < localMs {
		r++
	}
	for r > 0 && c.ms(r-1) >= localMs {
		r--
	}
	return r
}

type hbMsg struct {
	atUs    int64 // real arrival
	seq     uint64
	echoSeq uint64 // from the survivor: the victim's seq it last accepted (0: none)
	heard   bool   // from the survivor: it hears the victim
}

// TestLeaseSurvivorWaitsOutVictim is the lease's safety property, on a
// simulation of a victim and a survivor exchanging heartbeats (the
// survivor stands for the partition that intersects every quorum of the
// victim): whatever the timing within the config's bounds (clock rates
// off by up to DriftPPM each way, any delay or loss of the survivor's
// heartbeats, delays of the victim's up to the token, lost packets, the
// victim stalled for any time at any point, the link cut at any time),
// every instant at which the victim may still acknowledge a write (until
// FenceDelayMs past its lease, on its clock) comes before the instant at
// which the survivor's clock reaches PromoteNotBeforeMs of the last time
// it heard the victim.
func TestLeaseSurvivorWaitsOutVictim(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		tok := rapid.Int64Range(20, 600).Draw(t, "tokenMs")
		cfg := LeaseConfig{
			TokenTimeoutMs: tok,
			LeaseMs:        rapid.Int64Range(1, 4*tok).Draw(t, "leaseMs"),
			DriftPPM:       rapid.Int64Range(1, maxDriftPPM).Draw(t, "driftPPM"),
			FenceDelayMs:   rapid.Int64Range(1, 200).Draw(t, "fenceDelayMs"),
		}.WithDefaults()
		l, err := NewLease(cfg)
		if err != nil {
			t.Fatal(err)
		}
		rho := cfg.DriftPPM
		victim := clock{rapid.Int64Range(0, 1e9).Draw(t, "victimOffUs"), rapid.Int64Range(ppm-rho, ppm+rho).Draw(t, "victimPPM")}
		surv := clock{rapid.Int64Range(0, 1e9).Draw(t, "survOffUs"), rapid.Int64Range(ppm-rho, ppm+rho).Draw(t, "survPPM")}
		rng := rand.New(rand.NewPCG(rapid.Uint64().Draw(t, "seed"), 1))
		intervalMs := max(tok/4, 1)
		cutMs := rapid.Int64Range(0, 20*tok).Draw(t, "cutMs") // real ms
		lossPct := rapid.IntRange(0, 60).Draw(t, "lossPct")
		maxDelayToSurvMs := rapid.Int64Range(0, tok).Draw(t, "maxDelayToSurvivorMs")
		maxDelayToVictimMs := rapid.Int64Range(0, 10*tok).Draw(t, "maxDelayToVictimMs")
		// Stalls of the victim: [start, end) in real ms.
		type span struct{ a, b int64 }
		var stalls []span
		for i := rapid.IntRange(0, 4).Draw(t, "stalls"); i > 0; i-- {
			a := rapid.Int64Range(0, cutMs+10*tok).Draw(t, "stallAt")
			stalls = append(stalls, span{a, a + rapid.Int64Range(1, 8*tok).Draw(t, "stallMs")})
		}
		stalled := func(ms int64) bool {
			for _, s := range stalls {
				if ms >= s.a && ms < s.b {
					return true
				}
			}
			return false
		}

		wait := cfg.SurvivorWaitMs()
		// Victim state.
		var vSeq uint64
		vSent := map[uint64]int64{} // seq -> victim clock ms at send
		vNextSendMs := victim.ms(0)
		var toVictim []hbMsg
		var vLastAcc uint64        // last accepted survivor seq
		var vLastRecvMs int64      // victim clock at that acceptance
		var vEcho uint64           // the echo it carried
		var vHeardByS bool         // and whether it listed the victim
		var maxAckEndMs int64 = -1 // victim clock: latest ExpiresAt + FenceDelay seen
		// Survivor state.
		var sSeq, sAccSeq uint64
		sLastHeardMs := surv.ms(0) // its start bounds what it heard before
		sHeardEver := false
		sNextSendMs := surv.ms(0)
		var toSurv []hbMsg
		promotedUs := int64(-1)

		endMs := cutMs + 40*tok + 10*cfg.LeaseMs
		for ms := int64(0); ms < endMs && promotedUs < 0; ms++ {
			us := ms * 1000
			// The survivor takes in the victim's heartbeats that arrived.
			keep := toSurv[:0]
			for _, m := range toSurv {
				if m.atUs <= us {
					if m.seq > sAccSeq {
						sAccSeq, sLastHeardMs, sHeardEver = m.seq, surv.ms(us), true
					}
				} else {
					keep = append(keep, m)
				}
			}
			toSurv = keep
			// It sends a heartbeat that echoes the victim, until the cut.
			if surv.ms(us) >= sNextSendMs {
				sNextSendMs += intervalMs
				sSeq++
				if ms < cutMs && rng.IntN(100) >= lossPct {
					heard := sHeardEver && surv.ms(us)-sLastHeardMs < tok
					toVictim = append(toVictim, hbMsg{atUs: us + rng.Int64N(maxDelayToVictimMs*1000+1), seq: sSeq, echoSeq: sAccSeq, heard: heard})
				}
			}
			// It decides.
			if surv.ms(us) >= cfg.PromoteNotBeforeMs(sLastHeardMs) {
				promotedUs = us
				break
			}
			if stalled(ms) {
				continue
			}
			// The victim runs: sends, takes in what arrived, observes.
			now := victim.ms(us)
			if now >= vNextSendMs {
				vNextSendMs = now + intervalMs
				vSeq++
				vSent[vSeq] = now // recorded before the send
				if ms < cutMs && rng.IntN(100) >= lossPct {
					toSurv = append(toSurv, hbMsg{atUs: us + rng.Int64N(maxDelayToSurvMs*1000+1), seq: vSeq})
				}
			}
			keep = toVictim[:0]
			for _, m := range toVictim {
				if m.atUs <= us {
					if m.seq > vLastAcc {
						vLastAcc, vLastRecvMs, vEcho, vHeardByS = m.seq, now, m.echoSeq, m.heard
					}
				} else {
					keep = append(keep, m)
				}
			}
			toVictim = keep
			quorate := vLastAcc > 0 && now-vLastRecvMs < tok && vHeardByS
			anchor, ok := vSent[vEcho]
			st := l.Observe(now, quorate, anchor, ok && vEcho > 0)
			if st.ExpiresAtMs != 0 {
				maxAckEndMs = max(maxAckEndMs, st.ExpiresAtMs+cfg.FenceDelayMs)
			}
		}
		if promotedUs < 0 || maxAckEndMs < 0 {
			return
		}
		if ackEndUs := victim.realUs(maxAckEndMs); ackEndUs > promotedUs {
			t.Fatalf("victim may ack until real %d µs (its clock %d ms), survivor promoted at real %d µs (its clock %d ms, last heard %d ms, wait %d ms)",
				ackEndUs, maxAckEndMs, promotedUs, surv.ms(promotedUs), sLastHeardMs, wait)
		}
	})
}

func TestQuorumAnchor(t *testing.T) {
	for _, c := range []struct {
		self, quorum uint32
		sources      []VoteAnchor
		want         int64
		ok           bool
	}{
		{1, 2, []VoteAnchor{{1, 900}, {1, 400}}, 900, true},           // 3 nodes: the fresher peer is enough
		{1, 3, []VoteAnchor{{1, 900}, {1, 400}, {1, 700}}, 700, true}, // 5 nodes, 4 members: the 2nd freshest
		{1, 3, []VoteAnchor{{1, 900}}, 0, false},                      // not enough votes vouch
		{1, 1, nil, 1000, true},                                       // two_node: alone is enough
		{1, 2, []VoteAnchor{{0, 990}, {1, 300}}, 300, true},           // a 0-vote member vouches for nothing
		{1, 3, []VoteAnchor{{2, 500}, {1, 950}}, 500, true},           // weighted votes
		{1, 2, []VoteAnchor{{1, 5000}}, 1000, true},                   // never after now
	} {
		got, ok := QuorumAnchorMs(1000, c.self, c.quorum, c.sources)
		if got != c.want || ok != c.ok {
			t.Errorf("self %d quorum %d %v: %d %v, want %d %v", c.self, c.quorum, c.sources, got, ok, c.want, c.ok)
		}
	}
}
