package membership

import (
	"fmt"
	"sort"
)

// DropReason says why an authenticated heartbeat was not accepted.
type DropReason string

const (
	Accepted    DropReason = ""
	DropCluster DropReason = "other cluster"
	DropUnknown DropReason = "unknown node"
	DropSelf    DropReason = "own id"
	DropReplay  DropReason = "replayed or stale"
)

type peer struct {
	incarnation   uint64
	seq           uint64
	lastHeardMs   int64
	heardUs       bool
	configVersion uint64
	flags         uint32
	expectedVotes uint32
	ever          bool
	// echoInc and echoSeq: our heartbeat this peer last accepted, as its
	// last heartbeat said; reports: that heartbeat's view of the others.
	echoInc, echoSeq uint64
	reports          []PeerReport
}

// sentRing is how many of our own heartbeats' send times are kept to
// measure the lease from (at a quarter of the token per heartbeat, 16
// tokens: an echo older than that renews nothing).
const sentRing = 64

type sentRecord struct {
	seq  uint64
	atMs int64
}

// MemberInfo is a member and the votequorum state it last announced.
type MemberInfo struct {
	ID            NodeID
	Flags         uint32
	ExpectedVotes uint32
}

// Tracker keeps the last heartbeat of every configured peer.
//
// Its clock (every nowMs) starts at 0 when the node starts: a peer never
// heard in this life is reported with the node's uptime as its age.
type Tracker struct {
	self       NodeID
	clusterTag uint64
	tokenMs    int64
	peers      map[NodeID]*peer
	// incarnation and sent: our own heartbeats, for Echo.
	incarnation uint64
	sent        [sentRing]sentRecord
}

// NewTracker tracks the given peers (self excluded) with a token timeout.
func NewTracker(self NodeID, clusterTag uint64, tokenMs int64, peers []NodeID) (*Tracker, error) {
	if tokenMs <= 0 {
		return nil, fmt.Errorf("token timeout %d ms must be positive", tokenMs)
	}
	if len(peers) >= MaxNodes {
		return nil, fmt.Errorf("%d peers: at most %d nodes in a cluster", len(peers), MaxNodes)
	}
	t := &Tracker{self: self, clusterTag: clusterTag, tokenMs: tokenMs, peers: map[NodeID]*peer{}}
	t.SetPeers(peers)
	return t, nil
}

// SetPeers changes the configured peers (after a configuration change),
// keeping what is known of the ones that stay.
func (t *Tracker) SetPeers(peers []NodeID) {
	next := map[NodeID]*peer{}
	for _, id := range peers {
		if id == t.self {
			continue
		}
		if p, ok := t.peers[id]; ok {
			next[id] = p
		} else {
			next[id] = &peer{}
		}
	}
	t.peers = next
}

// Receive accepts or drops an authenticated heartbeat received at nowMs.
func (t *Tracker) Receive(nowMs int64, hb *Heartbeat) DropReason {
	if hb.ClusterTag != t.clusterTag {
		return DropCluster
	}
	if hb.From == t.self {
		return DropSelf
	}
	p, ok := t.peers[hb.From]
	if !ok {
		return DropUnknown
	}
	// (incarnation, seq) must move forward: a replayed packet, or one
	// from an older life of the node, is no sign of life.
	if p.ever && (hb.Incarnation < p.incarnation || (hb.Incarnation == p.incarnation && hb.Seq <= p.seq)) {
		return DropReplay
	}
	p.ever = true
	p.incarnation, p.seq = hb.Incarnation, hb.Seq
	p.lastHeardMs = nowMs
	p.configVersion = hb.ConfigVersion
	p.flags, p.expectedVotes = hb.Flags, hb.ExpectedVotes
	p.heardUs = false
	p.echoInc, p.echoSeq = 0, 0
	p.reports = append(p.reports[:0], hb.Peers...)
	for _, r := range hb.Peers {
		if r.ID == t.self {
			p.heardUs = r.Heard
			p.echoInc, p.echoSeq = r.EchoIncarnation, r.EchoSeq
			break
		}
	}
	return Accepted
}

// Sent records that our heartbeat (incarnation, seq) left at nowMs. A new
// incarnation forgets the old one's records.
func (t *Tracker) Sent(incarnation, seq uint64, nowMs int64) {
	if incarnation != t.incarnation {
		t.incarnation = incarnation
		t.sent = [sentRing]sentRecord{}
	}
	t.sent[seq%sentRing] = sentRecord{seq: seq, atMs: nowMs}
}

// Reports is our view of every configured peer, for our heartbeat sent
// at nowMs.
func (t *Tracker) Reports(nowMs int64) []PeerReport {
	out := make([]PeerReport, 0, len(t.peers))
	for id, p := range t.peers {
		r := PeerReport{ID: id, AgeMs: uint32(min(max(nowMs, 0), MaxAgeMs))}
		if p.ever {
			r.Heard = t.alive(nowMs, p)
			r.AgeMs = uint32(min(max(nowMs-p.lastHeardMs, 0), MaxAgeMs))
			r.EchoIncarnation, r.EchoSeq = p.incarnation, p.seq
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// EchoAnchorsMs is, for each peer among members, the lease anchor it
// vouches for: the send time of our heartbeat it last accepted, as its
// own last heartbeat says. A member that has echoed no heartbeat of this
// life recent enough to be in the ring vouches for nothing and is left
// out. Message delays and our own stalls cannot make an anchor newer
// than it is: it is our send time, on our clock (fence.QuorumAnchorMs
// picks the anchor a quorum of them vouches for).
func (t *Tracker) EchoAnchorsMs(members []NodeID) map[NodeID]int64 {
	out := map[NodeID]int64{}
	for _, id := range members {
		if id == t.self {
			continue
		}
		p, found := t.peers[id]
		if !found || !p.ever || p.echoInc != t.incarnation || p.echoSeq == 0 {
			continue
		}
		if rec := t.sent[p.echoSeq%sentRing]; rec.seq == p.echoSeq {
			out[id] = rec.atMs
		}
	}
	return out
}

// LastHeardBoundMs bounds, on our clock, when victim was last heard by
// this node or by any peer in via: our own last acceptance of its
// heartbeat (our start if none), and for each peer, the receipt of that
// peer's last heartbeat less the age it reported for victim (its receipt,
// when it reported nothing on victim). A node that heard victim at real
// time R had R no later than this bound's real time (ages are measured
// on the reporter's clock before its heartbeat was sent, and the
// heartbeat arrived after). It covers what those heartbeats told: a
// peer that hears victim again later moves the bound at its next
// heartbeat.
func (t *Tracker) LastHeardBoundMs(victim NodeID, via []NodeID) int64 {
	var bound int64
	if p, ok := t.peers[victim]; ok && p.ever {
		bound = p.lastHeardMs
	}
	for _, id := range via {
		if id == t.self || id == victim {
			continue
		}
		p, ok := t.peers[id]
		if !ok || !p.ever {
			continue
		}
		b := p.lastHeardMs
		for _, r := range p.reports {
			if r.ID == victim {
				b = p.lastHeardMs - int64(r.AgeMs)
				break
			}
		}
		bound = max(bound, b)
	}
	return bound
}

func (t *Tracker) alive(nowMs int64, p *peer) bool {
	return p.ever && nowMs-p.lastHeardMs < t.tokenMs
}

// Heard lists the peers heard within the token timeout, for our own
// heartbeats.
func (t *Tracker) Heard(nowMs int64) []NodeID {
	var out []NodeID
	for id, p := range t.peers {
		if t.alive(nowMs, p) {
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Members is this node plus every peer heard within the token timeout that
// also hears us, sorted.
func (t *Tracker) Members(nowMs int64) []NodeID {
	out := []NodeID{t.self}
	for id, p := range t.peers {
		if t.alive(nowMs, p) && p.heardUs {
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// MembersInfo is Members with what each peer last announced (self has
// none: the caller knows its own state).
func (t *Tracker) MembersInfo(nowMs int64) []MemberInfo {
	var out []MemberInfo
	for _, id := range t.Members(nowMs) {
		mi := MemberInfo{ID: id}
		if p, ok := t.peers[id]; ok {
			mi.Flags, mi.ExpectedVotes = p.flags, p.expectedVotes
		}
		out = append(out, mi)
	}
	return out
}

// PeerConfigVersion is the configuration version a peer last announced.
func (t *Tracker) PeerConfigVersion(id NodeID) (uint64, bool) {
	p, ok := t.peers[id]
	if !ok || !p.ever {
		return 0, false
	}
	return p.configVersion, true
}

// LastHeardMs is when a peer was last heard (ok false: never).
func (t *Tracker) LastHeardMs(id NodeID) (int64, bool) {
	p, ok := t.peers[id]
	if !ok || !p.ever {
		return 0, false
	}
	return p.lastHeardMs, true
}
