package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/paddock-io/paddock/blockrep"
	"github.com/paddock-io/paddock/fence"
	"github.com/paddock-io/paddock/quorum/membership"
)

// HA: what a node does when a volume's primary is lost, and when it loses
// quorum itself.
//
//   - Self-fence. Every node runs the lease of package fence on its own
//     quorum: once inquorate past the lease (2 x token by default), it
//     closes every primary it holds, so it acknowledges no write and
//     serves no read (its NBD clients wait, then get EIO). With quorum
//     back it promotes itself again only if the configuration still
//     says so (a new epoch).
//   - Recovery. In a quorate partition one node acts: the member with the
//     lowest id. Two partitions cannot both be quorate, so two nodes never
//     act at once; and if they did, the epoch rule would still let only
//     one primary get writes acknowledged (this choice is for liveness,
//     not safety). For each volume whose primary is not a member, the
//     acting node fences that node through its levels (if it has any),
//     and once the fence is verified, or once the lost node's lease has
//     surely run out (fence.LeaseConfig.PromoteNotBeforeMs of the last
//     time any member heard it, with a margin for clock drift), it moves
//     the primary role to the replica with the
//     newest generation among the members. That node promotes itself
//     (epoch + 1 on a quorum of replicas), which is also the storage
//     fence: the old primary's epoch is refused from then on.
//   - An inquorate node never fences and never promotes.

// haTickMs is how often the lease is fed and recovery re-checked (the
// lease needs well under its stall time, token/2).
const haTickMs = 100

// failoverProposeMs bounds the configuration change of a failover; past
// it, the acting node takes over by itself if it is the choice.
const failoverProposeMs = 5000

// fenceRetryMs spaces attempts to fence a node whose fence failed.
const fenceRetryMs = 5000

type haAgent struct {
	m       *volumeManager
	log     *slog.Logger
	lease   *fence.Lease
	fencer  *fence.Fencer
	history *fence.History

	mu         sync.Mutex
	lost       lostNodes
	lostAt     map[uint32]int64 // ms, when this node first counted it lost (lost.lostAt)
	fenced     map[uint32]bool
	fencing    map[uint32]bool
	lastFence  map[uint32]int64
	proposing  map[string]bool
	leaseState fence.LeaseState
	// leaseEndMs is leaseState.ExpiresAtMs for leaseOK, which every
	// acknowledgement of a primary asks (no lock on that path).
	leaseEndMs atomic.Int64
	// netFencing and netDone: the network fence of a lost node runs once
	// per loss (node/netfence.go); forgotten when it is a member again
	// or unfenced.
	netFencing map[uint32]bool
	netDone    map[uint32]bool
	// staleCheckAt and staleSince: when the acting node last asked a
	// member primary whether it is stuck on an old generation, and when
	// it first found it so (see checkStalePrimary).
	staleCheckAt map[string]int64
	staleSince   map[string]int64
}

// staleCheckMs spaces the acting node's checks of a member primary that
// serves nothing; stalePrimaryMs is how long it must be found stuck on
// an old generation before the role moves.
const (
	staleCheckMs   = 2000
	stalePrimaryMs = 4000
)

func newHAAgent(m *volumeManager) (*haAgent, error) {
	lease, err := fence.NewLease(fence.LeaseConfig{TokenTimeoutMs: m.d.config().TokenMs})
	if err != nil {
		return nil, err
	}
	h := fence.NewHistory(0)
	a := &haAgent{m: m, log: m.log.With("part", "ha"), lease: lease, history: h,
		fenced: map[uint32]bool{}, fencing: map[uint32]bool{},
		lastFence: map[uint32]int64{}, proposing: map[string]bool{},
		netFencing: map[uint32]bool{}, netDone: map[uint32]bool{},
		staleCheckAt: map[string]int64{}, staleSince: map[string]int64{}}
	a.lost = newLostNodes()
	a.lostAt = a.lost.lostAt
	a.fencer = fence.NewFencer(&fence.AgentRunner{Logger: a.log}, h, a.log)
	return a, nil
}

func (a *haAgent) run(ctx context.Context) {
	t := time.NewTicker(haTickMs * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.tick(ctx)
		}
	}
}

func nowMs() int64 { return time.Now().UnixMilli() }

func (a *haAgent) tick(ctx context.Context) {
	d := a.m.d
	d.mu.Lock()
	qv := d.status.Quorum
	qv.Members = slices.Clone(qv.Members)
	d.mu.Unlock()
	quorate, members := qv.Quorate, qv.Members
	now := nowMs()
	st := a.observeLease(qv)
	if !st.MayAck {
		a.m.selfFence(fmt.Sprintf("self-fenced: lease %s (inquorate)", st.Phase))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	cfg := d.config()
	back := a.lost.observe(now, quorate, members, cfg.Nodes, cfg.TokenMs)
	if !quorate {
		return // an inquorate node never acts
	}
	self := d.loaded.Identity.ID
	if cfg.netBlockedID(self) {
		// This node is network-fenced (it learnt so from a node
		// without a filter, or before its block took effect): it may
		// see a quorate partition with the nodes that do not drop its
		// packets, but it acts for no one until "paddock unfence".
		clear(a.lostAt)
		return
	}
	for _, id := range back {
		delete(a.fenced, id)
		delete(a.netDone, id)
		// A node that came back is fenced again at once if it is lost
		// again (the retry spacing is for failed fences of one loss;
		// before, a node killed within 5 s of its last fence was not
		// fenced and its lease was waited out).
		if !a.fencing[id] {
			delete(a.lastFence, id)
		}
	}
	// A takeover (made when no configuration change could commit) is
	// made final by the node that took over, once the node it was taken
	// from is a member again: now the change can commit, and until it
	// does the returning node's configuration still names it primary, so
	// it would promote itself and the two would depose each other in
	// turn (the fence race survivor of a two_node cluster, when the
	// fenced node is powered on again).
	for _, v := range cfg.Volumes {
		if !a.proposing[v.Name] && a.m.tookOver(v.Name) && slices.Contains(members, v.Primary) {
			a.proposing[v.Name] = true
			go a.confirmTakeover(ctx, v.Name, v.Primary)
		}
	}
	if len(members) == 0 || slices.Min(members) != self {
		return
	}
	// A node that has not caught up with the newest configuration a
	// member announces does not act on an old one.
	for _, v := range d.peerVersions() {
		if v > cfg.Version {
			return
		}
	}
	for _, v := range cfg.Volumes {
		if !slices.Contains(members, v.Primary) || a.proposing[v.Name] || a.m.tookOver(v.Name) || now-a.staleCheckAt[v.Name] < staleCheckMs {
			continue
		}
		a.staleCheckAt[v.Name] = now
		a.proposing[v.Name] = true
		go a.checkStalePrimary(ctx, v, members)
	}
	waitCfg := a.lease.Config()
	hbNow := d.hb.NowMs()
	for _, v := range cfg.Volumes {
		_, ok := a.lostAt[v.Primary]
		if !ok || a.proposing[v.Name] || a.m.tookOver(v.Name) {
			continue
		}
		victim, _ := cfg.Node(v.Primary)
		plan, _ := cfg.fencePlan(victim.Name, false)
		if len(plan.Levels) > 0 && !a.fenced[v.Primary] && !a.fencing[v.Primary] && now-a.lastFence[v.Primary] > fenceRetryMs {
			a.fencing[v.Primary], a.lastFence[v.Primary] = true, now
			go a.fence(ctx, v.Primary, plan)
		}
		if !a.fenced[v.Primary] && hbNow < waitCfg.PromoteNotBeforeMs(a.lastHeardBoundMs(v.Primary, members, hbNow)) {
			continue
		}
		// The node is fenced (verified) or its lease has run out: the
		// survivors' filters drop its packets too. This runs beside
		// the failover, not before it: the promotion rests on the
		// power fence or the lease (and the epoch), and the network
		// fence must not delay it by a slow peer.
		if !a.netDone[v.Primary] && !a.netFencing[v.Primary] {
			a.netFencing[v.Primary] = true
			go a.netFence(ctx, v.Primary, victim.Name, members)
		}
		a.proposing[v.Name] = true
		// The old primary's epoch is released at the voters (no wait for
		// its read lease) only after a verified power fence. A lease
		// waited out does not suffice: a member that hears the lost node
		// again may renew its lease through heartbeats this node has not
		// seen yet (a half-healed link), so the new primary waits out the
		// old one's read lease, and the epoch stops its writes.
		go a.failover(ctx, v, members, a.fenced[v.Primary])
	}
}

// observeLease feeds the self-fence lease. Its clock is the heartbeat
// transport's (monotonic, from the daemon's start), the one the anchors
// are measured on: the send times of this node's own heartbeats that the
// members echo (fence/lease.go), and of the witness reports behind a
// vote it holds. Its end is also published for leaseOK, which every
// acknowledgement asks.
func (a *haAgent) observeLease(qv QuorumView) fence.LeaseState {
	d := a.m.d
	quorate, members := qv.Quorate, qv.Members
	echoes := d.hb.EchoAnchorsMs(membershipIDs(members))
	now := d.hb.NowMs()
	cfg := d.config()
	self := d.loaded.Identity.ID
	var selfVotes, presentVotes uint32
	var sources []fence.VoteAnchor
	for _, n := range cfg.Nodes {
		if n.ID == self {
			selfVotes = n.Votes
			continue
		}
		if slices.Contains(members, n.ID) {
			presentVotes += n.Votes
		}
		if at, ok := echoes[membership.NodeID(n.ID)]; ok {
			sources = append(sources, fence.VoteAnchor{Votes: n.Votes, AnchorMs: at})
		}
	}
	if w := qv.Witness; w != nil && w.Vote {
		presentVotes += w.Votes
		if at, _, ok := d.wit.evidence(now); ok {
			sources = append(sources, fence.VoteAnchor{Votes: w.Votes, AnchorMs: at})
		}
	}
	// Quorate with fewer votes than the quorum (auto_tie_breaker's half
	// of an even split): every vote present must vouch.
	need := min(qv.Quorum, selfVotes+presentVotes)
	anchor, ok := fence.QuorumAnchorMs(now, selfVotes, need, sources)
	st := a.lease.Observe(now, quorate, anchor, ok)
	a.leaseEndMs.Store(st.ExpiresAtMs)
	a.mu.Lock()
	a.leaseState = st
	a.mu.Unlock()
	return st
}

// membershipIDs converts node ids for the membership package.
func membershipIDs(ids []uint32) []membership.NodeID {
	out := make([]membership.NodeID, len(ids))
	for i, id := range ids {
		out[i] = membership.NodeID(id)
	}
	return out
}

// leaseOK is blockrep.PrimaryConfig.LeaseOK: a primary asks it before
// every acknowledgement, so none goes out after the lease's end, whenever
// the next tick comes to close the primaries.
func (a *haAgent) leaseOK() error {
	end := a.leaseEndMs.Load()
	if now := a.m.d.hb.NowMs(); end == 0 || now >= end {
		return fmt.Errorf("self-fenced: this node's lease ended %d ms ago (no fresh echo from a quorum)", now-end)
	}
	return nil
}

// lastHeardBoundMs bounds, on the heartbeat clock, when a lost node was
// last heard by this node or any member (fence.LeaseConfig's survivor
// wait runs from it). With a witness vote, from when its grant arrived,
// if later: the lost node may have rested its lease on the vote until
// the witness moved it here (this is conservative: it only matters where
// the lost node with the witness could be quorate without any member).
func (a *haAgent) lastHeardBoundMs(victim uint32, members []uint32, nowMs int64) int64 {
	d := a.m.d
	bound := d.hb.LastHeardBoundMs(membership.NodeID(victim), membershipIDs(members))
	if _, grantedAt, ok := d.wit.evidence(nowMs); ok {
		bound = max(bound, grantedAt)
	}
	return bound
}

// fence runs a node's fence plan and remembers a success.
func (a *haAgent) fence(ctx context.Context, node uint32, plan fence.Plan) (fence.Outcome, error) {
	a.log.Warn("fencing a lost node", "target", plan.Target, "levels", len(plan.Levels))
	out, err := a.fencer.Fence(ctx, plan)
	a.mu.Lock()
	a.fencing[node] = false
	if err == nil && out.OK {
		a.fenced[node] = true
	}
	a.mu.Unlock()
	if err != nil {
		a.log.Error("fence failed; the lease will be waited out instead", "target", plan.Target, "err", err)
	} else {
		a.log.Warn("fenced", "target", plan.Target, "level", out.Level, "duration_ms", out.DurationMs)
	}
	return out, err
}

// netFence runs the network fence of a lost node once.
func (a *haAgent) netFence(ctx context.Context, node uint32, name string, members []uint32) {
	e, err := a.m.d.netFenceNode(ctx, name, members)
	a.mu.Lock()
	a.netFencing[node] = false
	a.netDone[node] = true
	a.mu.Unlock()
	if err != nil {
		a.log.Error("network fence failed on some members", "target", name, "err", err)
	} else if e.Result == fence.ResultOK {
		a.log.Warn("network-fenced", "target", name, "by", e.Device, "duration_ms", e.DurationMs)
	}
}

// failover moves a volume's primary role to the member replica with the
// newest generation.
// The old primary's promises are released at the voters only when its
// power is verified off (releaseOld).
func (a *haAgent) failover(ctx context.Context, v VolumeConfig, members []uint32, releaseOld bool) {
	defer func() {
		a.mu.Lock()
		delete(a.proposing, v.Name)
		a.mu.Unlock()
	}()
	d := a.m.d
	cfg := d.config()
	var best uint32
	var bestGen blockrep.Gen
	bestRecovering := false
	for _, id := range v.Replicas {
		if id == v.Primary || !slices.Contains(members, id) || cfg.netBlockedID(id) {
			continue // a network-fenced node is given no primary role until unfenced
		}
		rep := d.fetchReport(ctx, cfg, id, v.ID)
		if rep.Voter == nil || !slices.Contains(rep.Voter.Members, blockrep.NodeID(id)) {
			continue // not up to date: it cannot become primary
		}
		// Newest generation first; at equal generations, a replica that
		// is not recovering from a crash (a recovering one would first
		// fetch its suspect extents from another copy: safe, slower).
		better := best == 0 || bestGen.Less(rep.Voter.Gen) ||
			(rep.Voter.Gen == bestGen && bestRecovering && !rep.recovering())
		if better {
			best, bestGen, bestRecovering = id, rep.Voter.Gen, rep.recovering()
		}
	}
	if best == 0 {
		a.log.Error("no up-to-date replica among the members; the volume waits for its primary", "volume", v.Name, "lost_primary", v.Primary)
		time.Sleep(time.Second)
		return
	}
	// The old primary's node is fenced (power verified off): it serves
	// nothing, so its promises are released and the new primary need not
	// wait out its read lease (blockrep epoch.go, rule 5).
	if releaseOld {
		if n := a.m.releaseFenced(ctx, v, v.Primary); n > 0 {
			a.log.Info("released the fenced primary's epoch at the voters", "volume", v.Name, "node", v.Primary, "voters", n)
		}
	}
	pctx, cancel := context.WithTimeout(ctx, failoverProposeMs*time.Millisecond)
	defer cancel()
	_, err := d.conf.Propose(pctx, func(cur *ClusterConfig) (*ClusterConfig, error) {
		cv, ok := cur.Volume(v.Name)
		if !ok || cv.Primary != v.Primary {
			return nil, fmt.Errorf("volume %s changed meanwhile", v.Name)
		}
		next := cloneConfig(cur)
		for i := range next.Volumes {
			if next.Volumes[i].Name == v.Name {
				next.Volumes[i].Primary = best
			}
		}
		return next, nil
	})
	n, _ := cfg.Node(best)
	if err != nil {
		if best == d.loaded.Identity.ID {
			// The cluster is quorate (votequorum, perhaps with the
			// witness's vote) but cannot commit a configuration
			// change (2 nodes: its Paxos needs both). Safety does not
			// rest on the configuration: this node takes over; the
			// epoch rule keeps any other primary from acknowledging.
			a.m.takeOver(v.Name, v.Primary)
			return
		}
		a.log.Error("failover: configuration change failed", "volume", v.Name, "to", n.Name, "err", err)
		return
	}
	a.log.Warn("failover: primary role moved", "volume", v.Name, "from", v.Primary, "to", n.Name, "generation", bestGen)
}

// checkStalePrimary moves the primary role away from a member that
// cannot promote because it lacks the newest generation (it was named
// primary while cut off from the replicas that took writes after it,
// say): it would retry forever and the volume would serve nothing. The
// role goes to the member with the newest generation, as in a failover.
func (a *haAgent) checkStalePrimary(ctx context.Context, v VolumeConfig, members []uint32) {
	rep := a.m.d.fetchReport(ctx, a.m.d.config(), v.Primary, v.ID)
	stale := rep.Reachable && rep.Primary == nil && strings.Contains(rep.PromoteErr, blockrep.NotUpToDate)
	a.mu.Lock()
	since, seen := a.staleSince[v.Name]
	switch {
	case !stale:
		delete(a.staleSince, v.Name)
	case !seen:
		a.staleSince[v.Name], since = nowMs(), nowMs()
	}
	move := stale && nowMs()-since >= stalePrimaryMs
	if !move {
		delete(a.proposing, v.Name)
	}
	a.mu.Unlock()
	if move {
		a.log.Warn("the volume's primary cannot promote: it lacks the newest generation; moving the role", "volume", v.Name, "primary", v.Primary, "error", rep.PromoteErr)
		a.mu.Lock()
		delete(a.staleSince, v.Name)
		a.mu.Unlock()
		a.failover(ctx, v, members, false) // clears proposing
	}
}

// confirmTakeover names this node the volume's primary in the
// configuration, in place of the node it took the role over from.
func (a *haAgent) confirmTakeover(ctx context.Context, name string, from uint32) {
	defer func() {
		a.mu.Lock()
		delete(a.proposing, name)
		a.mu.Unlock()
	}()
	d := a.m.d
	self := d.loaded.Identity.ID
	pctx, cancel := context.WithTimeout(ctx, failoverProposeMs*time.Millisecond)
	defer cancel()
	_, err := d.conf.Propose(pctx, func(cur *ClusterConfig) (*ClusterConfig, error) {
		cv, ok := cur.Volume(name)
		if !ok || cv.Primary != from {
			return nil, fmt.Errorf("volume %s changed meanwhile", name)
		}
		next := cloneConfig(cur)
		for i := range next.Volumes {
			if next.Volumes[i].Name == name {
				next.Volumes[i].Primary = self
			}
		}
		return next, nil
	})
	if err != nil {
		a.log.Warn("cannot yet record the takeover in the configuration; retrying", "volume", name, "from", from, "err", err)
		time.Sleep(time.Second) // the next tick retries; not 10 times a second
		return
	}
	a.log.Warn("takeover recorded: this node is the volume's primary in the configuration", "volume", name, "from", from)
}

// HAStatus is what "paddock fence history" and status show.
type HAStatus struct {
	Lease   fence.LeaseState     `json:"lease"`
	Lost    map[uint32]int64     `json:"lost_since_ms,omitempty"`
	Fenced  []uint32             `json:"fenced,omitempty"`
	History []fence.HistoryEntry `json:"history"`
	Counts  []fence.HistoryCount `json:"counts"`
}

func (a *haAgent) status() HAStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := HAStatus{Lease: a.leaseState, Lost: map[uint32]int64{}, History: a.history.Entries(), Counts: a.history.Counts()}
	for k, v := range a.lostAt {
		st.Lost[k] = v
	}
	for k, ok := range a.fenced {
		if ok {
			st.Fenced = append(st.Fenced, k)
		}
	}
	slices.Sort(st.Fenced)
	return st
}

// selfFence closes every primary this node holds.
func (m *volumeManager) selfFence(why string) {
	var toClose []*blockrep.Primary
	m.mu.Lock()
	for _, lv := range m.vols {
		if lv.primary != nil {
			m.log.Error("self-fence: closing the primary; it acknowledges nothing more", "volume", lv.cfg.Name, "why", why)
			// Fence first (nothing more is acknowledged from now on),
			// then close outside the lock.
			lv.primary.Fence(errors.New(why))
			toClose = append(toClose, lv.primary)
			lv.primary = nil
			lv.promoteErr = why
		}
	}
	m.mu.Unlock()
	for _, p := range toClose {
		p.Close()
	}
}

// mayPromote says whether this node's own lease allows it to hold a
// primary role now.
// A node that the configuration says is network-fenced does not promote
// either, until "paddock unfence" (it may learn of its own block when a
// filter-less path still carries the configuration to it).
func (a *haAgent) mayPromote() bool {
	d := a.m.d
	if d.config().netBlockedID(d.loaded.Identity.ID) {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.leaseState.MayAckAt(d.hb.NowMs())
}
