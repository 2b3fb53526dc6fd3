package node

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/paddock-io/paddock/quorum"
	"github.com/paddock-io/paddock/quorum/membership"
	"github.com/paddock-io/paddock/quorum/witness"
)

// The witness's timing, from the token timeout (default 1000 ms):
//
//   - The node reports its view every token/8 (125 ms) and at every
//     change; each report renews the lease.
//   - The lease is token*3/4 (750 ms), counted from when the node sent
//     the report the witness answered. Six reports fall in one lease, so
//     the vote survives a stall of the node, the witness or the network
//     of up to lease - interval (625 ms; measured under CPU load in
//     BENCHMARKS.md, a report every token/4 was not enough); and a node that
//     loses the witness stops counting its vote before a token timeout
//     has passed, that is before its peers could declare it lost and act
//     on their own view. The witness also stops counting a node whose
//     last report is older than its lease, so a node cut off from
//     everything drops out of the witness's decisions before its peers'
//     token runs out.
//   - After a membership change the node holds the old view back for at
//     most token/2 (500 ms) until the witness answered for the new one,
//     as votequorum's sync waits for the quorum device's poll: a pair
//     that loses one node goes from "2 nodes" straight to "1 node and the
//     witness" without a moment of lost quorum in between. The wait adds
//     the witness's round trip to the detection time, not more.
//
// Leases are bounded to witness.MinLeaseMs..MaxLeaseMs for extreme
// tokens.
func witnessTiming(tokenMs int64) (leaseMs, intervalMs, holdMs int64) {
	leaseMs = min(max(tokenMs*3/4, witness.MinLeaseMs), witness.MaxLeaseMs)
	intervalMs = min(tokenMs/8, leaseMs/2)
	return leaseMs, intervalMs, tokenMs / 2
}

// witnessLink runs the witness client of a daemon while the configuration
// has a witness, and decides which membership and witness vote the quorum
// engine sees.
type witnessLink struct {
	ctx         context.Context
	d           *Daemon
	incarnation uint64

	mu      sync.Mutex
	client  *witness.Client
	stop    func()
	addr    string
	tokenMs int64
	// fed is the membership the engine was last given; heldSinceMs is
	// when a newer one was first held back (-1: none is).
	fed         []membership.MemberInfo
	heldSinceMs int64
}

func newWitnessLink(ctx context.Context, d *Daemon, incarnation uint64) *witnessLink {
	return &witnessLink{ctx: ctx, d: d, incarnation: incarnation, heldSinceMs: -1}
}

// view takes the membership heard now and returns the membership and
// witness vote to give the quorum engine.
func (w *witnessLink) view(nowMs int64, members []membership.MemberInfo, cfg *ClusterConfig) ([]membership.MemberInfo, []quorum.NodeID) {
	if w == nil {
		return members, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ensureClient(cfg)
	if w.client == nil {
		w.fed, w.heldSinceMs = members, -1
		return members, nil
	}
	qc, _ := quorumConfig(cfg) // validated before it was committed
	ids := memberIDs(members)
	w.client.SetView(ids, cfg.Version, qc)
	answered, vote := w.client.Answer(nowMs)
	_, _, holdMs := witnessTiming(cfg.TokenMs)
	if w.fed != nil && !slices.Equal(ids, memberIDs(w.fed)) && !answered && w.client.Status(nowMs).Connected {
		if w.heldSinceMs < 0 {
			w.heldSinceMs = nowMs
		}
		if nowMs-w.heldSinceMs < holdMs {
			// The old view, with the vote granted for it while its
			// lease runs.
			var old []quorum.NodeID
			if g := w.client.Grant(nowMs); slices.Equal(g, memberIDs(w.fed)) {
				old = g
			}
			return w.fed, old
		}
		w.d.log.Warn("the witness did not answer for the new membership in time", "members", fmt.Sprint(ids), "waited_ms", nowMs-w.heldSinceMs)
	}
	w.fed, w.heldSinceMs = members, -1
	return members, vote
}

// ensureClient starts, restarts or stops the client to match cfg.
func (w *witnessLink) ensureClient(cfg *ClusterConfig) {
	addr := ""
	if cfg.Quorum.Witness != nil {
		addr = cfg.Quorum.Witness.Addr
	}
	if addr == w.addr && cfg.TokenMs == w.tokenMs {
		return
	}
	if w.stop != nil {
		w.stop()
		w.client, w.stop = nil, nil
	}
	w.addr, w.tokenMs = addr, cfg.TokenMs
	if addr == "" {
		return
	}
	leaseMs, intervalMs, _ := witnessTiming(cfg.TokenMs)
	l := w.d.loaded
	c, err := witness.NewClient(witness.ClientConfig{
		Addr:        addr,
		TLS:         witness.ClientTLS(l.PKI.CACert, l.PKI.NodeCert, cfg.ClusterID),
		ClusterID:   cfg.ClusterID,
		NodeID:      quorum.NodeID(l.Identity.ID),
		Incarnation: w.incarnation,
		LeaseMs:     leaseMs,
		IntervalMs:  intervalMs,
		NowMs:       w.d.hb.NowMs,
		Log:         w.d.log.With("witness", addr),
	})
	if err != nil {
		w.d.log.Error("witness client not started", "err", err)
		return
	}
	ctx, cancel := context.WithCancel(w.ctx)
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	w.client, w.stop = c, func() { cancel(); <-done }
	w.d.log.Info("witness configured", "addr", addr, "lease_ms", leaseMs, "report_interval_ms", intervalMs)
}

// evidence is the witness client's Evidence (ok false: no witness, or no
// grant).
func (w *witnessLink) evidence(nowMs int64) (anchorMs, grantedAtMs int64, ok bool) {
	if w == nil {
		return 0, 0, false
	}
	w.mu.Lock()
	c := w.client
	w.mu.Unlock()
	if c == nil {
		return 0, 0, false
	}
	return c.Evidence(nowMs)
}

// status is the client's state for "paddock status" (nil: no witness).
func (w *witnessLink) status(nowMs int64) *witness.ClientStatus {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client == nil {
		return nil
	}
	s := w.client.Status(nowMs)
	return &s
}

func memberIDs(members []membership.MemberInfo) []quorum.NodeID {
	ids := make([]quorum.NodeID, len(members))
	for i, m := range members {
		ids[i] = quorum.NodeID(m.ID)
	}
	slices.Sort(ids)
	return ids
}
