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
}

// MemberInfo is a member and the votequorum state it last announced.
type MemberInfo struct {
	ID            NodeID
	Flags         uint32
	ExpectedVotes uint32
}

// Tracker keeps the last heartbeat of every configured peer.
type Tracker struct {
	self       NodeID
	clusterTag uint64
	tokenMs    int64
	peers      map[NodeID]*peer
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
	for _, id := range hb.Heard {
		if id == t.self {
			p.heardUs = true
			break
		}
	}
	return Accepted
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
