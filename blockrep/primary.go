package blockrep

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-io/paddock/internal/boottime"
	"github.com/paddock-io/paddock/nbd"
)

// OnNoQuorum is what a primary does with client I/O while it cannot reach
// a write quorum.
type OnNoQuorum string

const (
	// Suspend holds I/O until quorum returns (DRBD's on-no-quorum
	// suspend-io): the hypervisor sees a slow disk, not an error.
	Suspend OnNoQuorum = "suspend"
	// IOError fails I/O at once.
	IOError OnNoQuorum = "io-error"
)

// Defaults of a primary.
const (
	DefaultPeerTimeout = 2 * time.Second
	// DefaultReadLease is how long after its last quorum contact a
	// primary serves reads from its own copy without asking again. A new
	// primary waits this long (plus a margin) after its promise quorum
	// before it serves, so a deposed primary cannot serve old data.
	DefaultReadLease       = 500 * time.Millisecond
	readLeaseMarginPercent = 20
	dialTimeout            = 2 * time.Second
	// reconnectInterval is how often the out-of-sync bitmaps are saved
	// (what a crash of the primary can lose from them), maintainInterval
	// how often peers are checked: a returning replica is dialled within
	// it. Dials run in the background, one at a time per peer, so a dead
	// host's dial timeout holds nothing up; a refused dial costs nothing,
	// so there is no backoff beyond the interval (a backoff would delay
	// the resync of a replica that restarts after a long absence).
	reconnectInterval    = 500 * time.Millisecond
	maintainInterval     = 100 * time.Millisecond
	suspendRetryInterval = 200 * time.Millisecond
	maxPrepareAttempts   = 5
	// resyncChunkBytes is the most one resync message carries;
	// resyncWindow the messages in flight per peer.
	resyncChunkBytes = 1 << 20
	// maxStaleRetries bounds how often one write is resent because the
	// generation moved under it.
	maxStaleRetries = 8
	resyncWindow    = 8
	// compareRequestBytes is the span one digest request covers in a
	// comparison (whole regions; at least one), compareWindow the
	// requests in flight per peer: small enough that both sides digest
	// at once, large enough that a request costs little beside its
	// reading and hashing.
	compareRequestBytes = 16 << 20
	compareWindow       = 2
)

// PrimaryConfig describes the primary of one volume on this node.
type PrimaryConfig struct {
	Self     NodeID
	VolumeID uint64
	// Replicas are the volume's data replicas, this node among them;
	// they are the voters.
	Replicas []NodeID
	Local    *Replica
	// Dial opens an authenticated connection to a peer's replication
	// service.
	Dial func(ctx context.Context, peer NodeID) (net.Conn, error)
	// WitnessDial, when set, makes the witness a voter of the volume (for
	// 2 replicas: a write may then go on with one replica and the
	// witness's confirmation); it reaches the witness's voter service.
	WitnessDial func(ctx context.Context) (net.Conn, error)
	RegionBytes int64 // out-of-sync granularity; DefaultRegionBytes when 0
	// WriteQuorum is how many replicas must accept a write (0: a
	// majority, which is also the least allowed).
	WriteQuorum int
	PeerTimeout time.Duration
	ReadLease   time.Duration
	OnNoQuorum  OnNoQuorum
	// ResyncMaxBytesPerSecond caps resync; ResyncMinBytesPerSecond is
	// what it keeps while clients write (DRBD's c-max-rate and
	// c-min-rate). 0 means no cap.
	ResyncMaxBytesPerSecond int64
	ResyncMinBytesPerSecond int64
	Logger                  *slog.Logger
	// AwaitRelease is how long the candidate waits, before it raises the
	// epoch, for the serving primary to step down and release its epoch
	// (epoch.go, rule 5), so it need not wait out the read lease. The
	// node sets it for a planned move (every replica's node is up); 0
	// for a failover, where the old primary cannot answer.
	AwaitRelease time.Duration
	// LeaseOK, when set, is asked before every acknowledgement (a write,
	// zero, flush or read returning success): an error means this node
	// may no longer acknowledge (its self-fence lease ran out, node/ha.go)
	// and the primary steps down at once, without waiting for the node to
	// notice and close it. It must be cheap (an atomic read and a clock).
	LeaseOK func() error
}

// Peer states as the primary sees them.
const (
	PeerDown    = "down"
	PeerSyncing = "syncing"
	PeerMember  = "member"
	PeerVoter   = "voter" // the witness: votes, stores no data
)

type peer struct {
	id     NodeID
	noData bool // the witness
	link   *link
	state  string
	// missed marks what the peer lacks. digest says the primary does not
	// know what it lacks (it was away before this primary started) and
	// must compare digests first.
	missed *Bitmap
	digest bool
	// syncing says a resync goroutine runs for it.
	resyncing   bool
	saved       bool // missed is on disk as of its last Dirty clear
	resentBytes atomic.Int64
	missedBytes atomic.Int64
	syncStarted time.Time
	// syncResentFrom is resentBytes when the resync began (startSync);
	// lastSync what the last finished one took (status).
	syncResentFrom int64
	lastSync       lastResync
	// dialing: a background dial runs.
	dialing bool
	// rate samples resentBytes for the resync rate shown in status.
	rate resyncRate
	// recovering: the peer's promise said it re-verified extents after
	// a crash (recovered, or the whole volume) that must be resent and
	// resolved (MsgResolve) before it may be a member (recovered.go).
	recovering     bool
	recovered      []int64
	recoveredWhole bool
	// compare lists extents whose digests are compared with this
	// primary's before the resend (recovered extents: most of what a
	// crash leaves in them is intact, so only what differs is sent).
	compare []int64
	// resent marks the regions resent over resentLink and acknowledged:
	// the peer's copy there is this primary's, so an extent to compare
	// that lies wholly in them needs no comparison (a new link means the
	// peer restarted, and nothing it had is vouched for any more).
	resent     *Bitmap
	resentLink *link
	// comparedBytes counts the bytes compared by digests (tests).
	comparedBytes atomic.Int64
}

// Primary serves one volume's client I/O on the node that holds its
// epoch. It implements nbd.Backend.
type Primary struct {
	cfg     PrimaryConfig
	voters  []NodeID // the replicas, and the witness when there is one
	log     *slog.Logger
	epoch   Epoch
	locks   rangeLocks
	barrier sync.RWMutex // writes share it; a member change takes it whole
	// genMu serializes generation changes: two writes that see the same
	// replica fail must not both try to store the same next generation.
	genMu sync.Mutex

	mu      sync.Mutex
	gen     Gen
	members []NodeID
	peers   map[NodeID]*peer
	deposed error
	closed  bool
	// lastAck is when a quorum last confirmed this epoch, on
	// CLOCK_BOOTTIME (internal/boottime): the read lease runs from it, and
	// a host that was suspended must not wake up with it still fresh.
	lastAck  time.Duration
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	writes   atomic.Int64 // client writes, for the resync throttle
	repaired atomic.Int64

	// leaseSkipped: the promotion did not wait out a read lease, the
	// previous primary had released its epoch (epoch.go, rule 5).
	leaseSkipped bool

	savedGen Gen // generation the bitmaps on disk were tracked through
	// cleanStart: this node was the last primary of the current
	// generation and stopped with nothing in flight.
	cleanStart bool

	rateSampleAt     time.Time
	rateSampleWrites int64
	clientBusy       bool
}

// PeerStatus is one replica as the primary sees it.
type PeerStatus struct {
	Node  NodeID `json:"node"`
	State string `json:"state"` // member, syncing, down
	// OutOfSyncBytes: what is marked to resend, plus the extents still
	// to compare by digests (they may differ); CompareDigests: a
	// comparison is pending (the whole volume, or those extents).
	OutOfSyncBytes   int64  `json:"out_of_sync_bytes"`
	CompareDigests   bool   `json:"compare_digests,omitempty"`
	ResentBytes      int64  `json:"resent_bytes"`
	MissedBytes      int64  `json:"missed_bytes"`
	ResyncStartedAgo string `json:"resync_started_ago,omitempty"`
	// The last resync that brought the peer back into the generation:
	// how long it took (from its start to the return), what it resent,
	// and how long ago it ended.
	LastResyncSeconds     float64 `json:"last_resync_seconds,omitempty"`
	LastResyncResentBytes int64   `json:"last_resync_resent_bytes,omitempty"`
	LastResyncEndedAgo    string  `json:"last_resync_ended_ago,omitempty"`
	// ResyncBytesPerSecond is the resync rate over the last few seconds
	// and ResyncETASeconds the time left at that rate (0: not known).
	ResyncBytesPerSecond int64   `json:"resync_bytes_per_second,omitempty"`
	ResyncETASeconds     float64 `json:"resync_eta_seconds,omitempty"`
	// RecoveringExtents counts the extents the replica re-verified after
	// a crash that are not yet resent and resolved (it stays syncing
	// until then); RecoveringWholeVolume: all of them are.
	RecoveringExtents     int  `json:"recovering_extents,omitempty"`
	RecoveringWholeVolume bool `json:"recovering_whole_volume,omitempty"`
}

// PrimaryStatus is what volume status shows of a primary.
type PrimaryStatus struct {
	Epoch          Epoch        `json:"epoch"`
	Gen            Gen          `json:"generation"`
	Members        []NodeID     `json:"members"`
	Peers          []PeerStatus `json:"peers"`
	Deposed        string       `json:"deposed,omitempty"`
	RepairedBlocks int64        `json:"repaired_blocks"`
}

// Status reports the primary's view.
func (p *Primary) Status() PrimaryStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := PrimaryStatus{Epoch: p.epoch, Gen: p.gen, Members: slices.Clone(p.members), RepairedBlocks: p.repaired.Load()}
	if p.deposed != nil {
		st.Deposed = p.deposed.Error()
	}
	for _, id := range p.voters {
		pe := p.peers[id]
		if pe == nil {
			continue
		}
		// Extents still to compare may differ: they count as out of
		// sync until compared (an upper bound), so a replica with a
		// comparison pending is never shown up to date.
		unsure := min(pe.missed.Count()*pe.missed.RegionBytes()+int64(len(pe.compare))*ExtentBytes, p.Size())
		ps := PeerStatus{Node: id, State: pe.state, OutOfSyncBytes: unsure,
			CompareDigests: pe.digest || len(pe.compare) > 0, ResentBytes: pe.resentBytes.Load(), MissedBytes: pe.missedBytes.Load()}
		if pe.recovering {
			ps.RecoveringExtents, ps.RecoveringWholeVolume = len(pe.recovered), pe.recoveredWhole
		}
		if pe.state == PeerSyncing && !pe.syncStarted.IsZero() {
			ps.ResyncStartedAgo = time.Since(pe.syncStarted).Round(time.Millisecond).String()
		}
		if !pe.lastSync.endedAt.IsZero() {
			ps.LastResyncSeconds = pe.lastSync.took.Seconds()
			ps.LastResyncResentBytes = pe.lastSync.resentBytes
			ps.LastResyncEndedAgo = time.Since(pe.lastSync.endedAt).Round(time.Millisecond).String()
		}
		if pe.resyncing || pe.state == PeerSyncing {
			ps.ResyncBytesPerSecond = pe.rate.observe(time.Now(), ps.ResentBytes)
			if ps.ResyncBytesPerSecond > 0 {
				ps.ResyncETASeconds = float64(ps.OutOfSyncBytes) / float64(ps.ResyncBytesPerSecond)
			}
		}
		st.Peers = append(st.Peers, ps)
	}
	return st
}

// Promote makes this node the volume's primary: it collects promises for
// a new epoch from a quorum of the replicas, checks that this node holds
// the newest generation, starts a new generation with the replicas that
// promised, and waits out the old primary's read lease. See epoch.go for
// the rule.
func Promote(ctx context.Context, cfg PrimaryConfig) (*Primary, error) {
	if cfg.RegionBytes == 0 {
		cfg.RegionBytes = DefaultRegionBytes
	}
	if cfg.PeerTimeout == 0 {
		cfg.PeerTimeout = DefaultPeerTimeout
	}
	if cfg.ReadLease == 0 {
		cfg.ReadLease = DefaultReadLease
	}
	if cfg.OnNoQuorum == "" {
		cfg.OnNoQuorum = Suspend
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if !slices.Contains(cfg.Replicas, cfg.Self) {
		return nil, fmt.Errorf("node %d holds no replica of volume %d", cfg.Self, cfg.VolumeID)
	}
	p := &Primary{cfg: cfg, log: cfg.Logger.With("volume", cfg.VolumeID), peers: map[NodeID]*peer{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	size := cfg.Local.Store().Size()
	for _, id := range cfg.Replicas {
		if id == cfg.Self {
			continue
		}
		bm, err := NewBitmap(size, cfg.RegionBytes)
		if err != nil {
			return nil, err
		}
		p.peers[id] = &peer{id: id, state: PeerDown, missed: bm, digest: true}
	}
	p.voters = slices.Clone(cfg.Replicas)
	if cfg.WitnessDial != nil {
		bm, _ := NewBitmap(size, cfg.RegionBytes)
		p.peers[WitnessID] = &peer{id: WitnessID, noData: true, state: PeerDown, missed: bm}
		p.voters = append(p.voters, WitnessID)
	}
	p.loadBitmaps()
	p.connectAll(ctx)

	// Pre-vote: ask what the voters hold first, without a promise. A
	// candidate that cannot reach a majority, or that is not up to date,
	// stops here, before it raises the epoch and so deposes a serving
	// primary for nothing.
	if err := p.preVote(ctx); err != nil {
		p.Close()
		return nil, fmt.Errorf("volume %d: cannot promote node %d: %w", cfg.VolumeID, cfg.Self, err)
	}
	e := cfg.Local.Voter().Promised + 1
	var promises []Promise
	hot := map[NodeID][]int64{}
	rec := map[NodeID]recoveredInfo{}
	for attempt := 0; ; attempt++ {
		if attempt == maxPrepareAttempts {
			p.Close()
			return nil, fmt.Errorf("volume %d: epochs kept being refused after %d attempts", cfg.VolumeID, attempt)
		}
		promises, hot, rec = promises[:0], map[NodeID][]int64{}, map[NodeID]recoveredInfo{}
		highest := Epoch(0)
		pr, ref, err := cfg.Local.Prepare(e, cfg.Self)
		switch {
		case err != nil:
			p.Close()
			return nil, err
		case ref != nil:
			highest = ref.Promised
		default:
			promises = append(promises, pr)
			hot[cfg.Self] = cfg.Local.Store().HotExtents()
			if es, whole := cfg.Local.Store().Recovered(); whole || len(es) > 0 {
				rec[cfg.Self] = recoveredInfo{extents: es, whole: whole}
			}
		}
		for _, a := range p.broadcast(&Message{Type: MsgPrepare, Epoch: e}) {
			switch a.Type {
			case MsgPromise:
				promises = append(promises, Promise{From: a.From, Epoch: e, Gen: a.Gen, Members: a.Members,
					Blank: a.Flags&FlagBlank != 0, Released: a.Flags&FlagReleased != 0})
				h, es, whole := PromiseExtents(a)
				hot[a.From] = h
				if a.Flags&FlagRecovering != 0 {
					rec[a.From] = recoveredInfo{extents: es, whole: whole}
				}
			case MsgRefuse:
				highest = max(highest, a.Epoch)
			}
		}
		if highest < e {
			break
		}
		e = highest + 1
	}
	d, err := Decide(cfg.Self, p.voters, e, promises)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("volume %d: cannot promote node %d: %w", cfg.VolumeID, cfg.Self, err)
	}
	p.epoch = e
	// A peer that is recovering (it crashed, and its recovered extents
	// were not resent yet) is not a complete copy: it starts out
	// syncing, out of the first generation's set, until they are
	// (issue 4). This node, when recovering, fetches its own below.
	complete := slices.Clone(d.Members) // up to date but for hot and recovered extents
	d.Members = slices.DeleteFunc(d.Members, func(id NodeID) bool {
		_, r := rec[id]
		return r && id != cfg.Self
	})
	promised, blank := map[NodeID]bool{}, map[NodeID]bool{}
	for _, pr := range promises {
		promised[pr.From] = true
		blank[pr.From] = pr.Blank
	}
	// Writes in flight when the old primary stopped may have reached
	// some replicas and not others; they live in the hot extents of the
	// replicas' activity logs. This primary's copy of them wins.
	var hotUnion []int64
	for _, es := range hot {
		if !p.cleanStart {
			hotUnion = append(hotUnion, es...)
		}
	}
	// A peer's recovered extents were hot when it crashed: if it was
	// the primary then, writes it had in flight may sit on some copies
	// and not others, and a copy that restarted cleanly since no longer
	// names them hot. So every copy is compared there, by digests.
	var recUnion []int64
	for id, r := range rec {
		if id != cfg.Self && !p.cleanStart {
			recUnion = append(recUnion, r.extents...)
		}
	}
	slices.Sort(hotUnion)
	hotUnion = slices.Compact(hotUnion)
	for id, pe := range p.peers {
		switch {
		case !promised[id]:
			p.dropLink(pe)
		case pe.noData:
			pe.state, pe.digest = PeerVoter, false
			continue
		case slices.Contains(d.Members, id):
			pe.state, pe.digest = PeerMember, false
		default:
			pe.state = PeerSyncing
			pe.startSync()
			if slices.Contains(complete, id) {
				// A member of the newest set that is recovering:
				// like a member it differs only in the extents
				// named below, no comparison needed.
				pe.digest = false
			}
			if blank[id] {
				// It lost its data: a saved bitmap says nothing
				// about it (epoch.go, rule 4).
				pe.digest = true
			}
		}
		// A peer whose digests will be compared needs no marks: the
		// comparison finds every difference.
		// The hot extents are compared by digests too, not resent
		// whole: a clean restart keeps them hot (activitylog.go), so a
		// replica may name up to its log's capacity of them while
		// only the regions a write in flight reached differ.
		if !pe.digest {
			pe.compare = normExtents(append(append(pe.compare, hotUnion...), recUnion...))
		}
		if r, ok := rec[id]; ok && promised[id] {
			// Its own recovered extents, whatever cleanStart says:
			// they are about this peer's crash, not a primary's.
			p.noteRecovered(pe, r)
		}
	}
	p.members = d.Members
	next := Gen{Epoch: e, Seq: 1}
	if err := p.storeGen(next, d.Members); err != nil {
		p.Close()
		return nil, fmt.Errorf("volume %d: first generation of epoch %d: %w", cfg.VolumeID, e, err)
	}
	p.lastAck = boottime.Now()
	// Wait out the previous primary's read lease (with a margin for
	// clock rate differences) so it cannot serve reads of data this
	// primary is about to change; unless it released its epoch (rule 5).
	leaseWait := cfg.ReadLease * (100 + readLeaseMarginPercent) / 100
	if d.LeaseReleased {
		leaseWait, p.leaseSkipped = 0, true
	}
	// A candidate that crashed may lack writes it acknowledged in the
	// extents it re-verified: it fetches them from members that are not
	// recovering them before it serves, meanwhile the lease runs out
	// (nothing here changes another copy).
	fetched := make(chan error, 1)
	// From the newest generation's whole set, not only the members that
	// promised: one that did not may hold what this copy lost.
	go func() { fetched <- p.fetchOwnRecovered(d.NewestMembers, rec) }()
	select {
	case <-time.After(leaseWait):
	case <-ctx.Done():
		p.Close()
		<-fetched
		return nil, ctx.Err()
	}
	if err := <-fetched; err != nil {
		p.Close()
		return nil, fmt.Errorf("volume %d: cannot promote node %d: %w", cfg.VolumeID, cfg.Self, err)
	}
	p.log.Info("promoted", "epoch", e, "generation", next, "members", fmt.Sprint(d.Members), "newest_before", d.Newest,
		"lease_wait", leaseWait)
	p.wg.Add(1)
	go p.maintain()
	return p, nil
}

// preVote checks, without changing any voter, that a majority answers
// and that this node is a member of the newest generation they report.
// With AwaitRelease it asks again, every releasePollInterval, until the
// voters say the serving primary released its epoch or the time is up.
func (p *Primary) preVote(ctx context.Context) error {
	deadline := time.Now().Add(p.cfg.AwaitRelease)
	for {
		local := p.cfg.Local.Voter()
		answers := []Promise{{From: p.cfg.Self, Epoch: 1, Gen: local.Gen, Members: local.Members, Blank: local.Blank, Released: local.ReleasedNow()}}
		for _, a := range p.broadcast(&Message{Type: MsgPrepare, Flags: FlagQuery, Epoch: 1}) {
			if a.Type == MsgPromise {
				answers = append(answers, Promise{From: a.From, Epoch: 1, Gen: a.Gen, Members: a.Members,
					Blank: a.Flags&FlagBlank != 0, Released: a.Flags&FlagReleased != 0})
			}
		}
		d, err := Decide(p.cfg.Self, p.voters, 1, answers)
		if err != nil || d.LeaseReleased || !time.Now().Before(deadline) {
			return err
		}
		select {
		case <-time.After(releasePollInterval):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// releasePollInterval spaces the pre-votes of a candidate awaiting a
// release.
const releasePollInterval = 10 * time.Millisecond

// releaseTimeout bounds the release a stepping-down primary sends each
// voter: a voter that does not answer in time only costs the next
// primary the read-lease wait.
const releaseTimeout = 500 * time.Millisecond

// LeaseSkipped says whether the promotion skipped the read-lease wait
// because the previous primary released its epoch.
func (p *Primary) LeaseSkipped() bool { return p.leaseSkipped }

func decodeExtents(b []byte) []int64 {
	var out []int64
	for i := 0; i+8 <= len(b); i += 8 {
		out = append(out, int64(uint64(b[i])<<56|uint64(b[i+1])<<48|uint64(b[i+2])<<40|uint64(b[i+3])<<32|
			uint64(b[i+4])<<24|uint64(b[i+5])<<16|uint64(b[i+6])<<8|uint64(b[i+7])))
	}
	return out
}

// Epoch is the primary's epoch.
func (p *Primary) Epoch() Epoch { return p.epoch }

// connectAsync starts a background dial of every peer that has no link
// and none running; it does not wait for them.
func (p *Primary) connectAsync() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pe := range p.peers {
		if (pe.link != nil && pe.link.alive()) || pe.dialing {
			continue
		}
		pe.dialing = true
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			conn, err := p.dial(p.ctx, pe)
			p.mu.Lock()
			defer p.mu.Unlock()
			pe.dialing = false
			if err != nil {
				return
			}
			if p.closed || (pe.link != nil && pe.link.alive()) {
				conn.Close()
				return
			}
			// A new link means the peer may have restarted since the
			// last one (its link died after maintain's sweep): it
			// rejoins (promise, hot and recovered extents) before it
			// takes member writes again, never slips back in.
			p.dropLink(pe)
			pe.link = newLink(pe.id, conn)
		}()
	}
}

func (p *Primary) dial(ctx context.Context, pe *peer) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if pe.noData {
		return p.cfg.WitnessDial(dctx)
	}
	return p.cfg.Dial(dctx, pe.id)
}

// connectAll dials every peer that has no link and waits for the dials
// (a promotion needs to know who it can reach), but not for the slowest:
// once a quorum of the voters (this node counted) is connected it waits
// connectGrace more and goes on. A dead or cut-off node's dial only ends
// at dialTimeout (its SYNs go unanswered), which added 2 s to every
// failover after a partition; a dial that ends later still leaves its
// link for the maintenance loop (the peer rejoins and resyncs).
func (p *Primary) connectAll(ctx context.Context) {
	done := make(chan bool, len(p.peers))
	dials := 0
	connected := 1 // this node
	p.mu.Lock()
	for _, pe := range p.peers {
		if pe.link != nil && pe.link.alive() {
			connected++
			continue
		}
		if pe.dialing {
			continue
		}
		pe.dialing = true
		dials++
		go func() {
			conn, err := p.dial(p.ctx, pe)
			p.mu.Lock()
			pe.dialing = false
			ok := err == nil && !p.closed && (pe.link == nil || !pe.link.alive())
			if ok {
				pe.link = newLink(pe.id, conn)
			} else if err == nil {
				conn.Close()
			}
			p.mu.Unlock()
			done <- ok
		}()
	}
	p.mu.Unlock()
	var grace <-chan time.Time
	for ; dials > 0; dials-- {
		if grace == nil && connected >= Quorum(len(p.voters)) {
			grace = time.After(connectGrace)
		}
		select {
		case ok := <-done:
			if ok {
				connected++
			}
		case <-grace:
			return
		case <-ctx.Done():
			return
		}
	}
}

// connectGrace is how long a promotion waits for the other peers' dials
// once a quorum of voters is connected.
const connectGrace = 300 * time.Millisecond

// release tells every voter it reaches, and this node's own replica,
// that this primary's epoch is released. Called with writes drained and
// nothing served any more.
func (p *Primary) release() {
	p.mu.Lock()
	var links []*link // taken under the lock: dropLink clears pe.link
	for _, pe := range p.peers {
		if pe.link != nil && pe.link.alive() {
			links = append(links, pe.link)
		}
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	var released atomic.Int32
	for _, l := range links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := &Message{Type: MsgRelease, Volume: p.cfg.VolumeID, From: p.cfg.Self, Epoch: p.epoch}
			if a, err := l.call(m, releaseTimeout); err == nil && a.Type == MsgReleaseOK {
				released.Add(1)
			}
		}()
	}
	wg.Wait()
	if p.cfg.Local.Release(p.epoch, p.cfg.Self) {
		released.Add(1)
	}
	p.log.Info("stepped down and released the epoch", "epoch", p.epoch, "voters_told", released.Load(), "voters", len(p.voters))
}

// broadcast sends a copy of m to every peer with a live link and returns
// the answers that came.
func (p *Primary) broadcast(m *Message) []*Message {
	return p.sendTo(m, func(*peer) bool { return true })
}

func (p *Primary) sendTo(m *Message, which func(*peer) bool) []*Message {
	type res struct{ a *Message }
	p.mu.Lock()
	// The links are taken under the lock: dropLink clears pe.link, and a
	// goroutine reading it later found nil (a paused primary crashed at
	// its self-fence).
	var targets []*link
	for _, pe := range p.peers {
		if pe.link != nil && pe.link.alive() && which(pe) {
			targets = append(targets, pe.link)
		}
	}
	p.mu.Unlock()
	out := make(chan *Message, len(targets))
	for _, l := range targets {
		go func() {
			c := *m
			c.Volume, c.From = p.cfg.VolumeID, p.cfg.Self
			a, err := l.call(&c, p.cfg.PeerTimeout)
			if err != nil {
				a = nil
			}
			out <- a
		}()
	}
	var answers []*Message
	for range targets {
		if a := <-out; a != nil {
			answers = append(answers, a)
		}
	}
	return answers
}

// storeGen makes g with members the current generation: it must be stored
// by every member and by a quorum of the voters (GenCommitted).
func (p *Primary) storeGen(g Gen, members []NodeID) error {
	stored := map[NodeID]bool{}
	ref, err := p.cfg.Local.StoreGen(p.epoch, g, members)
	if err != nil {
		return err
	}
	if ref != nil {
		if ref.Promised > p.epoch {
			p.depose(ref)
			return p.Deposed()
		}
		return ref
	}
	stored[p.cfg.Self] = true
	for _, a := range p.sendTo(&Message{Type: MsgStoreGen, Epoch: p.epoch, Gen: g, Members: members}, func(pe *peer) bool { return pe.state != PeerDown }) {
		switch a.Type {
		case MsgStoreGenOK:
			stored[a.From] = true
		case MsgRefuse:
			if a.Epoch > p.epoch {
				p.depose(&Refusal{From: a.From, Promised: a.Epoch, Reason: string(a.Payload)})
				return p.Deposed()
			}
		}
	}
	if !GenCommitted(p.voters, members, stored) {
		return fmt.Errorf("generation %v stored by %v: not every member of %v and a quorum of %v", g, keys(stored), members, p.voters)
	}
	p.mu.Lock()
	p.gen, p.members = g, slices.Clone(members)
	p.mu.Unlock()
	if err := p.saveBitmaps(); err != nil {
		p.log.Warn("cannot save the out-of-sync bitmaps", "err", err)
	}
	return nil
}

func keys(m map[NodeID]bool) []NodeID {
	var out []NodeID
	for k, v := range m {
		if v {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// depose records that a newer epoch exists: this primary serves nothing
// from now on.
func (p *Primary) depose(ref *Refusal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.deposed == nil {
		p.deposed = fmt.Errorf("volume %d: this primary (epoch %d) was superseded: %w", p.cfg.VolumeID, p.epoch, ref)
		p.log.Warn("deposed: a newer epoch exists; refusing all I/O", "epoch", p.epoch, "newer", ref.Promised)
	}
}

// abandon stops this primary after a generation change that did not
// commit: the replicas may disagree on the generation, which only a new
// epoch settles. The node promotes itself again (a higher epoch).
func (p *Primary) abandon(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.deposed == nil {
		p.deposed = fmt.Errorf("volume %d: primary of epoch %d stepped down: %w", p.cfg.VolumeID, p.epoch, err)
		p.log.Warn("stepping down; a new epoch is needed", "epoch", p.epoch, "err", err)
	}
}

// lostLocalWrite handles a write that failed on this node's own replica
// (an I/O error, a block that failed its checksum and that no replica
// could supply) while the peers may have taken it: this copy of its
// extents may now be older than theirs, which is what the recovered
// record says of a crashed replica (recovered.go). The extents go into
// it and this primary steps down: the next promotion, here or elsewhere,
// sees them in this replica's promise and fetches them from a copy that
// holds the write before this one serves again.
func (p *Primary) lostLocalWrite(off, length int64, err error) {
	var extents []int64
	for x := off / ExtentBytes; x <= (off+length-1)/ExtentBytes; x++ {
		extents = append(extents, x)
	}
	if rerr := p.Store().rec.add(extents); rerr != nil {
		p.log.Error("cannot record the extents of a failed local write", "offset", off, "length", length, "err", rerr)
	}
	p.abandon(fmt.Errorf("the write of %d+%d failed on this node's replica: %w", off, length, err))
}

// Fence stops this primary from acknowledging anything from now on (the
// node lost quorum past its lease): every request fails with EIO.
func (p *Primary) Fence(why error) { p.abandon(why) }

// Deposed says whether a newer primary exists (and why).
func (p *Primary) Deposed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.deposed
}

func (p *Primary) dropLink(pe *peer) {
	if pe.link != nil {
		pe.link.close()
		pe.link = nil
	}
	pe.state = PeerDown
}

// ioErr is what a client sees when the primary cannot serve.
func ioErr(err error) error { return fmt.Errorf("%w: %v", unix.EIO, err) }

// Size implements nbd.Backend.
func (p *Primary) Size() int64 { return p.cfg.Local.Store().Size() }

// Features implements nbd.Backend. CanMultiConn holds: a flush reaches
// every replica's whole file whichever connection it came on.
func (p *Primary) Features() nbd.Features {
	return nbd.Features{CanTrim: true, CanZero: true, CanMultiConn: true}
}

// Cache implements nbd.Backend (a hint; nothing to do).
func (p *Primary) Cache(off, length int64) error { return nil }

// WriteAt implements nbd.Backend: the write reaches every member and a
// quorum of the replicas under this primary's epoch before it returns.
func (p *Primary) WriteAt(b []byte, off int64, fua bool) error {
	if err := p.repairEdges(off, int64(len(b))); err != nil {
		return err
	}
	return p.acked(p.replicate(off, int64(len(b)), fua, func(e Epoch, g Gen, sync bool) (*Refusal, error) {
		return p.cfg.Local.Write(e, g, sync, b, off, fua)
	}, func(sync bool) *Message {
		t := MsgWrite
		if sync {
			t = MsgSyncWrite
		}
		return &Message{Type: t, Offset: uint64(off), Length: uint32(len(b)), Payload: b}
	}))
}

// acked passes err on, or, for a success, asks the node whether it may
// still acknowledge (PrimaryConfig.LeaseOK); if not, this primary steps
// down and the request fails (its effect may stand: an unknown outcome,
// as for any I/O error).
func (p *Primary) acked(err error) error {
	if err != nil || p.cfg.LeaseOK == nil {
		return err
	}
	if lerr := p.cfg.LeaseOK(); lerr != nil {
		p.abandon(lerr)
		return ioErr(p.Deposed())
	}
	return nil
}

// Zero implements nbd.Backend; every replica punches or writes zeroes.
func (p *Primary) Zero(off, length int64, noHole, fast, fua bool) error {
	if length <= 0 {
		return nil
	}
	if err := p.repairEdges(off, length); err != nil {
		return err
	}
	for pos := off; pos < off+length; pos += MaxPayloadBytes {
		n := min(MaxPayloadBytes, off+length-pos)
		err := p.replicate(pos, n, fua, func(e Epoch, g Gen, sync bool) (*Refusal, error) {
			return p.cfg.Local.Zero(e, g, sync, pos, n, fua)
		}, func(sync bool) *Message {
			m := &Message{Type: MsgZero, Offset: uint64(pos), Length: uint32(n)}
			if sync {
				m.Flags |= FlagSync
			}
			return m
		})
		if err != nil {
			return err
		}
	}
	return p.acked(nil)
}

// Trim implements nbd.Backend as a zero: replicas must stay identical, so
// a trimmed range reads as zeroes everywhere.
func (p *Primary) Trim(off, length int64, fua bool) error {
	return p.Zero(off, length, false, false, fua)
}

// replicate runs one write on this node and every peer and decides when it
// may be acknowledged.
func (p *Primary) replicate(off, length int64, fua bool, local func(Epoch, Gen, bool) (*Refusal, error), msg func(sync bool) *Message) error {
	if err := p.Store().checkRange(off, length); err != nil {
		return fmt.Errorf("%w: %v", unix.ENOSPC, err)
	}
	p.writes.Add(1)
	unlock := p.locks.lock(off, length)
	defer unlock()
	p.barrier.RLock()
	defer p.barrier.RUnlock()
	staleRetries := 0
	for {
		if err := p.Deposed(); err != nil {
			return ioErr(err)
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return ioErr(errors.New("volume closed on this node"))
		}
		e, g, members := p.epoch, p.gen, slices.Clone(p.members)
		type target struct {
			pe     *peer
			link   *link // taken under the lock: dropLink clears pe.link
			member bool
		}
		var targets []target
		var lost []NodeID // members without a link: they miss this write
		// The witness confirms a write only when the members alone are
		// not a quorum of the voters (one of two replicas away).
		needWitness := len(members) < Quorum(len(p.voters))
		for _, pe := range p.peers {
			member := slices.Contains(members, pe.id)
			if pe.noData {
				if needWitness && pe.link != nil && pe.link.alive() && pe.state != PeerDown {
					targets = append(targets, target{pe, pe.link, false})
				}
				continue
			}
			if pe.link != nil && pe.link.alive() && pe.state != PeerDown {
				targets = append(targets, target{pe, pe.link, member})
			} else if member {
				lost = append(lost, pe.id)
			} else {
				pe.missed.Mark(off, length)
				pe.missedBytes.Add(length)
			}
		}
		p.mu.Unlock()
		accepted := map[NodeID]bool{}
		failed := lost
		type res struct {
			id  NodeID
			ok  bool
			ref *Refusal
		}
		out := make(chan res, len(targets))
		for _, t := range targets {
			go func() {
				m := msg(!t.member)
				if t.pe.noData {
					m = &Message{Type: MsgConfirm}
				}
				m.Volume, m.From, m.Epoch, m.Gen = p.cfg.VolumeID, p.cfg.Self, e, g
				if fua {
					m.Flags |= FlagFUA
				}
				a, err := t.link.call(m, p.cfg.PeerTimeout)
				switch {
				case err != nil:
					out <- res{id: t.pe.id}
				case a.Type == MsgWriteOK:
					out <- res{id: t.pe.id, ok: true}
				case a.Type == MsgRefuse:
					out <- res{id: t.pe.id, ref: &Refusal{From: a.From, Promised: a.Epoch, Reason: string(a.Payload)}}
				default:
					out <- res{id: t.pe.id}
				}
			}()
		}
		// A refusal under this very epoch means the generation moved on
		// while the write was on its way (a replica was dropped or
		// joined): the write is simply sent again in the new one.
		stale := false
		ref, err := local(e, g, false)
		if ref != nil && ref.Promised > e {
			p.depose(ref)
		} else if ref != nil {
			stale = true
		} else if err != nil {
			// The local disk failed: the data is not here, so this
			// node cannot stay primary (the others hold it).
			for range targets {
				<-out
			}
			p.lostLocalWrite(off, length, err)
			return ioErr(fmt.Errorf("local replica: %w", err))
		} else {
			accepted[p.cfg.Self] = true
		}
		for range targets {
			r := <-out
			switch {
			case r.ok:
				accepted[r.id] = true
			case r.ref != nil && r.ref.Promised > e:
				p.depose(r.ref)
			case r.ref != nil && r.ref.Promised == e:
				stale = true
			default:
				failed = append(failed, r.id)
			}
		}
		if err := p.Deposed(); err != nil {
			return ioErr(err)
		}
		// Whoever did not take the write misses it.
		p.mu.Lock()
		for _, id := range failed {
			pe := p.peers[id]
			if pe.noData {
				continue // the witness misses no data; its link reconnects
			}
			pe.missed.Mark(off, length)
			pe.missedBytes.Add(length)
			p.dropLink(pe)
		}
		p.mu.Unlock()
		var droppedMembers []NodeID
		for _, id := range failed {
			if slices.Contains(members, id) {
				droppedMembers = append(droppedMembers, id)
			}
		}
		if len(droppedMembers) > 0 {
			if err := p.dropMembers(droppedMembers); err != nil {
				p.log.Warn("cannot drop unreachable replicas from the generation", "replicas", fmt.Sprint(droppedMembers), "err", err)
			}
			p.mu.Lock()
			members = slices.Clone(p.members)
			p.mu.Unlock()
		}
		if stale {
			if staleRetries++; staleRetries > maxStaleRetries {
				p.abandon(errors.New("replicas keep refusing this primary's generation"))
			}
			continue
		}
		p.mu.Lock()
		acked := p.enough(members, accepted) && p.gen.Epoch == e
		if acked {
			p.lastAck = boottime.Now()
		}
		p.mu.Unlock()
		if acked {
			return nil
		}
		if len(droppedMembers) > 0 && p.Deposed() == nil {
			// The set shrank: send again in the new generation (the
			// witness may now be needed). Sets only shrink here, so
			// this repeats at most once per replica.
			continue
		}
		if err := p.noQuorum(fmt.Sprintf("write accepted by %v; members %v, replicas %v", keys(accepted), members, p.voters)); err != nil {
			return err
		}
	}
}

// enough says whether a write (or flush) may be acknowledged: the epoch
// rule (every member and a majority) and the configured write quorum.
func (p *Primary) enough(members []NodeID, accepted map[NodeID]bool) bool {
	return WriteAcked(p.voters, members, accepted) && len(keys(accepted)) >= p.cfg.WriteQuorum
}

// noQuorum applies on-no-quorum: io-error fails now, suspend waits and
// lets the caller retry (the maintainer reconnects peers meanwhile).
func (p *Primary) noQuorum(why string) error {
	if p.cfg.OnNoQuorum == IOError {
		return ioErr(fmt.Errorf("volume %d has no write quorum: %s", p.cfg.VolumeID, why))
	}
	select {
	case <-p.ctx.Done():
		return ioErr(errors.New("volume closed on this node"))
	case <-time.After(suspendRetryInterval):
		return nil
	}
}

// dropMembers takes unreachable replicas out of the generation so writes
// can go on with the others (they resync when they return).
func (p *Primary) dropMembers(ids []NodeID) error {
	p.genMu.Lock()
	defer p.genMu.Unlock()
	p.mu.Lock()
	next := slices.DeleteFunc(slices.Clone(p.members), func(id NodeID) bool { return slices.Contains(ids, id) })
	if len(next) == len(p.members) {
		p.mu.Unlock()
		return nil
	}
	g := Gen{Epoch: p.epoch, Seq: p.gen.Seq + 1}
	p.mu.Unlock()
	if err := p.storeGen(g, next); err != nil {
		p.abandon(fmt.Errorf("dropping %v: %w", ids, err))
		return err
	}
	p.log.Warn("replicas left the generation; they will resync", "dropped", fmt.Sprint(ids), "generation", g, "members", fmt.Sprint(next))
	return nil
}

// Flush implements nbd.Backend: every member and a quorum of replicas
// make what they acknowledged durable before the client hears back.
func (p *Primary) Flush() error { return p.acked(p.flush()) }

func (p *Primary) flush() error {
	for {
		if err := p.Deposed(); err != nil {
			return ioErr(err)
		}
		p.mu.Lock()
		e, members := p.epoch, slices.Clone(p.members)
		p.mu.Unlock()
		flushed := map[NodeID]bool{}
		answers := p.sendTo(&Message{Type: MsgFlush, Epoch: e}, func(pe *peer) bool { return pe.noData || slices.Contains(members, pe.id) })
		if err := p.Store().Flush(); err != nil {
			// Writes this primary acknowledged may not be on its disk
			// (the store recorded its whole copy as suspect); the
			// members that flushed have them. It steps down: the next
			// promotion, here or elsewhere, compares this copy with
			// theirs before it serves.
			p.abandon(fmt.Errorf("a flush failed on this node's replica: %w", err))
			return ioErr(fmt.Errorf("local replica: %w", err))
		}
		flushed[p.cfg.Self] = true
		for _, a := range answers {
			switch {
			case a.Type == MsgFlushOK:
				flushed[a.From] = true
			case a.Type == MsgRefuse && a.Epoch > e:
				p.depose(&Refusal{From: a.From, Promised: a.Epoch, Reason: string(a.Payload)})
			}
		}
		if err := p.Deposed(); err != nil {
			return ioErr(err)
		}
		var missing []NodeID
		for _, m := range members {
			if !flushed[m] {
				missing = append(missing, m)
			}
		}
		if len(missing) > 0 {
			// A member that cannot flush may have lost what it
			// acknowledged: it must resync from scratch.
			p.mu.Lock()
			for _, id := range missing {
				if pe := p.peers[id]; pe != nil {
					pe.digest = true
					p.dropLink(pe)
				}
			}
			p.mu.Unlock()
			p.barrier.Lock()
			err := p.dropMembers(missing)
			p.barrier.Unlock()
			if err != nil {
				p.log.Warn("flush: cannot drop replicas that failed it", "replicas", fmt.Sprint(missing), "err", err)
			}
			p.mu.Lock()
			members = slices.Clone(p.members)
			p.mu.Unlock()
		}
		if p.enough(members, flushed) {
			p.mu.Lock()
			p.lastAck = boottime.Now()
			p.mu.Unlock()
			return nil
		}
		if err := p.noQuorum(fmt.Sprintf("flushed by %v", keys(flushed))); err != nil {
			return err
		}
	}
}

// Store is the local replica's data.
func (p *Primary) Store() *Store { return p.cfg.Local.Store() }

// ReadAt implements nbd.Backend. Reads come from the local copy while the
// read lease holds; a block whose checksum fails is read from a member
// that has it right and repaired here.
func (p *Primary) ReadAt(b []byte, off int64) error {
	if err := p.confirm(); err != nil {
		return err
	}
	err := p.Store().ReadAt(b, off)
	var ce *ChecksumError
	if !errors.As(err, &ce) {
		return p.acked(err)
	}
	for _, blk := range ce.Blocks {
		good, rerr := p.repairBlock(blk)
		if rerr != nil {
			return ioErr(fmt.Errorf("block %d is corrupt here and no replica could supply it: %v", blk, rerr))
		}
		// Copy the good block's overlap with the request.
		bs, be := blk*BlockBytes, (blk+1)*BlockBytes
		s, e := max(bs, off), min(be, off+int64(len(b)))
		copy(b[s-off:e-off], good[s-bs:e-bs])
	}
	return p.acked(nil)
}

// confirm makes sure this primary still holds its epoch before serving a
// read: within the read lease of the last quorum answer it does; after it
// a flush round asks the members again. A closed primary serves nothing
// (StepDown releases its epoch right after closing).
func (p *Primary) confirm() error {
	p.mu.Lock()
	dep, closed, fresh := p.deposed, p.closed, boottime.Now()-p.lastAck < p.cfg.ReadLease
	p.mu.Unlock()
	if dep != nil {
		return ioErr(dep)
	}
	if closed {
		return ioErr(errors.New("volume closed on this node"))
	}
	if fresh {
		return nil
	}
	return p.Flush()
}

// repairEdges repairs from a replica the blocks that a write of
// [off, off+length) covers only in part and that fail their checksum
// here: the store refuses to merge a write into such a block
// (Store.writeLockedSums). A block no replica can supply fails the write
// here, before any replica is sent it: failing it in the local write
// instead would count as a lost local write and make this primary step
// down on every such write a guest retries (found in review), while
// nothing is wrong with this copy beyond that block (a whole-block write
// still replaces it).
func (p *Primary) repairEdges(off, length int64) error {
	if length <= 0 || (off%BlockBytes == 0 && (off+length)%BlockBytes == 0) {
		return nil
	}
	for _, blk := range []int64{off / BlockBytes, (off + length - 1) / BlockBytes} {
		start := blk * BlockBytes
		if start >= off && start+BlockBytes <= off+length {
			continue // whole
		}
		if bad, err := p.Store().VerifyBlocks(start, BlockBytes); err == nil && len(bad) > 0 {
			if _, err := p.repairBlock(blk); err != nil {
				p.log.Warn("a block a write covers in part is corrupt here and no replica could supply it; the write fails", "block", blk, "err", err)
				return ioErr(fmt.Errorf("block %d, which the write of %d+%d covers in part, fails its checksum and no replica could supply it: %w", blk, off, length, err))
			}
		}
		if off/BlockBytes == (off+length-1)/BlockBytes {
			return nil // one block
		}
	}
	return nil
}

// repairBlock reads a block from a member whose copy passes its checksum,
// writes it here and returns it.
func (p *Primary) repairBlock(blk int64) ([]byte, error) {
	off := blk * BlockBytes
	unlock := p.locks.lock(off, BlockBytes)
	defer unlock()
	p.mu.Lock()
	e, members, deposed, closed := p.epoch, slices.Clone(p.members), p.deposed, p.closed
	p.mu.Unlock()
	// A deposed or fenced primary writes nothing more here: its node may
	// be a newer primary's replica already, and this write would not
	// pass the replica's epoch gate (found in review).
	if deposed != nil {
		return nil, deposed
	}
	if closed {
		return nil, errors.New("volume closed on this node")
	}
	var lastErr error = errors.New("no member reachable")
	for _, a := range p.sendTo(&Message{Type: MsgRead, Epoch: e, Offset: uint64(off), Length: BlockBytes}, func(pe *peer) bool { return slices.Contains(members, pe.id) }) {
		if a.Type != MsgReadOK || len(a.Payload) != BlockBytes {
			lastErr = fmt.Errorf("node %d: %s", a.From, a.Payload)
			continue
		}
		if err := p.Store().WriteAt(a.Payload, off, true); err != nil {
			// This node's disk failed the repair (after a failed
			// fdatasync its copy is suspect as a whole): as for any
			// local write that fails, it steps down (found in review).
			p.lostLocalWrite(off, BlockBytes, err)
			return nil, err
		}
		p.repaired.Add(1)
		p.log.Warn("repaired a corrupt block from a replica", "block", blk, "from", a.From)
		return a.Payload, nil
	}
	return nil, lastErr
}

// Close stops serving; the replica stays open (the caller owns it).
func (p *Primary) Close() error { return p.shutdown(false) }

// StepDown closes the primary for a planned move of the role and then
// releases its epoch (epoch.go, rule 5): once the voters heard it, the
// next primary need not wait out this one's read lease. Nothing is served
// after the release: reads and writes see closed first, and the writes
// in flight are drained before it is sent.
func (p *Primary) StepDown() error { return p.shutdown(true) }

func (p *Primary) shutdown(release bool) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	// Drain: writes in flight finish (or give up on their quorum) before
	// the links close, so the bitmaps saved below are complete.
	p.cancel()
	p.barrier.Lock()
	if release && p.epoch != 0 && p.Deposed() == nil {
		p.release()
	}
	p.mu.Lock()
	for _, pe := range p.peers {
		if pe.link != nil {
			pe.link.close()
			pe.link = nil
		}
	}
	p.mu.Unlock()
	// New writes see closed and fail; a resync waiting to join sees its
	// link gone.
	p.barrier.Unlock()
	p.wg.Wait()
	if p.epoch != 0 && p.Deposed() == nil {
		if err := p.saveBitmapsClean(true); err != nil {
			p.log.Warn("cannot save the out-of-sync bitmaps", "err", err)
		}
	}
	return nil
}
