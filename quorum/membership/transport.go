package membership

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/paddock-io/paddock/internal/boottime"
)

// Peer is a configured node and where its heartbeats go.
type Peer struct {
	ID   NodeID
	Addr *net.UDPAddr
}

// Stats count what the transport saw; the node exports them as metrics.
type Stats struct {
	Sent       atomic.Int64
	Accepted   atomic.Int64
	Forged     atomic.Int64 // failed authentication or framing
	Replayed   atomic.Int64 // authentic but not newer than the last one
	Foreign    atomic.Int64 // another cluster, an unknown node, or our own id
	SendErrors atomic.Int64
}

// Config sets up a Transport.
type Config struct {
	Self        NodeID
	ClusterTag  uint64
	Key         []byte // AuthKeyBytes
	Incarnation uint64 // must grow at every start (the node persists it)
	TokenMs     int64
	IntervalMs  int64 // heartbeat interval; a fraction of TokenMs
	Listen      string
	Peers       []Peer
}

// Transport sends and receives heartbeats over UDP.
type Transport struct {
	cfg     Config
	conn    *net.UDPConn
	startMs int64 // bootMs at Listen
	mu      sync.Mutex
	tracker *Tracker
	peers   []Peer
	seq     uint64
	cfgVer  uint64
	flags   uint32
	expVote uint32
	Stats   Stats
	changed chan struct{}
}

// Listen binds the heartbeat socket.
func Listen(cfg Config) (*Transport, error) {
	if len(cfg.Key) != AuthKeyBytes {
		return nil, fmt.Errorf("authkey must be %d bytes, not %d", AuthKeyBytes, len(cfg.Key))
	}
	if cfg.IntervalMs <= 0 || cfg.IntervalMs >= cfg.TokenMs {
		return nil, fmt.Errorf("heartbeat interval %d ms must be positive and below the token timeout %d ms", cfg.IntervalMs, cfg.TokenMs)
	}
	ids := make([]NodeID, 0, len(cfg.Peers))
	for _, p := range cfg.Peers {
		ids = append(ids, p.ID)
	}
	tr, err := NewTracker(cfg.Self, cfg.ClusterTag, cfg.TokenMs, ids)
	if err != nil {
		return nil, err
	}
	addr, err := net.ResolveUDPAddr("udp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("heartbeat socket on %s: %w", cfg.Listen, err)
	}
	return &Transport{cfg: cfg, conn: conn, startMs: boottime.Ms(), tracker: tr, peers: cfg.Peers, changed: make(chan struct{}, 1)}, nil
}

// NowMs is the transport's clock, the virtual time the pure parts (the
// tracker, the quorum machine, the self-fence lease) are driven with: ms
// since Listen on CLOCK_BOOTTIME, which keeps counting while the system is
// suspended (internal/boottime).
func (t *Transport) NowMs() int64 { return boottime.Ms() - t.startMs }

// Addr is the bound address.
func (t *Transport) Addr() *net.UDPAddr { return t.conn.LocalAddr().(*net.UDPAddr) }

// SetPeers replaces the configured peers.
func (t *Transport) SetPeers(peers []Peer) {
	ids := make([]NodeID, 0, len(peers))
	for _, p := range peers {
		ids = append(ids, p.ID)
	}
	t.mu.Lock()
	t.peers = peers
	t.tracker.SetPeers(ids)
	t.mu.Unlock()
}

// SetConfigVersion sets the version announced in our heartbeats.
func (t *Transport) SetConfigVersion(v uint64) {
	t.mu.Lock()
	t.cfgVer = v
	t.mu.Unlock()
}

// SetLocalInfo sets the votequorum state announced in our heartbeats.
func (t *Transport) SetLocalInfo(flags, expectedVotes uint32) {
	t.mu.Lock()
	t.flags, t.expVote = flags, expectedVotes
	t.mu.Unlock()
}

// MembersInfo is Members with what each peer last announced.
func (t *Transport) MembersInfo() []MemberInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tracker.MembersInfo(t.NowMs())
}

// Members is this node and every peer that hears us and is heard.
func (t *Transport) Members() []NodeID {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tracker.Members(t.NowMs())
}

// EchoAnchorsMs is the tracker's EchoAnchorsMs.
func (t *Transport) EchoAnchorsMs(members []NodeID) map[NodeID]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tracker.EchoAnchorsMs(members)
}

// LastHeardBoundMs is the tracker's LastHeardBoundMs.
func (t *Transport) LastHeardBoundMs(victim NodeID, via []NodeID) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tracker.LastHeardBoundMs(victim, via)
}

// PeerConfigVersion is what a peer last announced.
func (t *Transport) PeerConfigVersion(id NodeID) (uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tracker.PeerConfigVersion(id)
}

// Changed is signalled (without blocking) whenever a heartbeat is
// accepted, so the node can re-evaluate membership at once.
func (t *Transport) Changed() <-chan struct{} { return t.changed }

// Run sends heartbeats every interval and receives until ctx ends.
func (t *Transport) Run(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		t.conn.Close()
	}()
	go t.sendLoop(ctx)
	buf := make([]byte, MaxPacketBytes+1)
	for {
		n, _, err := t.conn.ReadFromUDP(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			continue
		}
		hb, err := Decode(buf[:n], t.cfg.Key)
		if err != nil {
			t.Stats.Forged.Add(1)
			continue
		}
		t.mu.Lock()
		r := t.tracker.Receive(t.NowMs(), hb)
		t.mu.Unlock()
		switch r {
		case Accepted:
			t.Stats.Accepted.Add(1)
			select {
			case t.changed <- struct{}{}:
			default:
			}
		case DropReplay:
			t.Stats.Replayed.Add(1)
		default:
			t.Stats.Foreign.Add(1)
		}
	}
}

func (t *Transport) sendLoop(ctx context.Context) {
	tick := time.NewTicker(time.Duration(t.cfg.IntervalMs) * time.Millisecond)
	defer tick.Stop()
	var pkt []byte
	for {
		t.mu.Lock()
		t.seq++
		hb := &Heartbeat{
			ClusterTag:    t.cfg.ClusterTag,
			From:          t.cfg.Self,
			Incarnation:   t.cfg.Incarnation,
			Seq:           t.seq,
			ConfigVersion: t.cfgVer,
			Flags:         t.flags,
			ExpectedVotes: t.expVote,
			Peers:         t.tracker.Reports(t.NowMs()),
		}
		// Recorded before the send: the anchor may only be earlier
		// than the real send, never later.
		t.tracker.Sent(t.cfg.Incarnation, t.seq, t.NowMs())
		peers := t.peers
		t.mu.Unlock()
		var err error
		pkt, err = Encode(pkt[:0], hb, t.cfg.Key)
		if err == nil {
			for _, p := range peers {
				if p.ID == t.cfg.Self || p.Addr == nil {
					continue
				}
				if _, err := t.conn.WriteToUDP(pkt, p.Addr); err != nil {
					t.Stats.SendErrors.Add(1)
				} else {
					t.Stats.Sent.Add(1)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
