package node

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
)

// Limits of the configuration.
const (
	MaxNodes       = 32
	MaxVotes       = 255
	maxNameBytes   = 63
	DefaultTokenMs = 1000
	minTokenMs     = 200
	maxTokenMs     = 60000
	// defaultHeartbeatDivisor: a heartbeat every token/4, so three can
	// be lost before the node is.
	defaultHeartbeatDivisor = 4
)

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9._-]{0,62})$`)

// NodeConfig is one node of the cluster.
type NodeConfig struct {
	ID            uint32 `json:"id"`
	Name          string `json:"name"`
	Votes         uint32 `json:"votes"`
	ClusterAddr   string `json:"cluster_addr"`
	StorageAddr   string `json:"storage_addr,omitempty"`
	MigrationAddr string `json:"migration_addr,omitempty"`
}

// QuorumOptions are votequorum's options (votequorum(5)).
type QuorumOptions struct {
	ExpectedVotes           uint32   `json:"expected_votes,omitempty"`
	TwoNode                 bool     `json:"two_node,omitempty"`
	WaitForAll              *bool    `json:"wait_for_all,omitempty"`
	LastManStanding         bool     `json:"last_man_standing,omitempty"`
	LastManStandingWindowMs int64    `json:"last_man_standing_window_ms,omitempty"`
	AutoTieBreaker          bool     `json:"auto_tie_breaker,omitempty"`
	AutoTieBreakerNode      string   `json:"auto_tie_breaker_node,omitempty"` // lowest, highest, or a list "1 3"
	Witness                 *Witness `json:"witness,omitempty"`
}

// Witness is the tie-breaker vote: "paddock witness" on a third machine
// (corosync's qdevice with qnetd).
type Witness struct {
	Addr      string `json:"addr"`                // the witness's static IP:PORT
	Algorithm string `json:"algorithm,omitempty"` // ffsplit (default) or lms
}

// validate checks what the quorum rules do not: the address.
func (w *Witness) validate() error {
	ap, err := netip.ParseAddrPort(w.Addr)
	if err != nil || ap.Port() == 0 || ap.Addr().IsUnspecified() {
		return fmt.Errorf("witness address %q: want a static IP:PORT", w.Addr)
	}
	switch w.Algorithm {
	case "", "ffsplit", "lms":
	default:
		return fmt.Errorf("witness algorithm %q: use ffsplit or lms", w.Algorithm)
	}
	return nil
}

// ClusterConfig is the versioned configuration copied to every node.
type ClusterConfig struct {
	Version     uint64        `json:"version"`
	ClusterName string        `json:"cluster_name"`
	ClusterID   string        `json:"cluster_id"`
	TokenMs     int64         `json:"token_ms"`
	Nodes       []NodeConfig  `json:"nodes"`
	Quorum      QuorumOptions `json:"quorum"`
	// Volumes are the replicated volumes (node/volume_config.go).
	Volumes      []VolumeConfig `json:"volumes,omitempty"`
	LastVolumeID uint64         `json:"last_volume_id,omitempty"`
	// Fence holds the fence devices and levels (node/fence_config.go).
	Fence *FenceConfig `json:"fence,omitempty"`
}

// Identity is this node's own record.
type Identity struct {
	ID        uint32 `json:"id"`
	Name      string `json:"name"`
	ClusterID string `json:"cluster_id"`
}

// ClusterTag is the 64-bit tag heartbeats carry.
func (c *ClusterConfig) ClusterTag() uint64 {
	sum := sha256.Sum256([]byte(c.ClusterID))
	return binary.BigEndian.Uint64(sum[:8])
}

// HeartbeatMs is the heartbeat interval.
func (c *ClusterConfig) HeartbeatMs() int64 { return c.TokenMs / defaultHeartbeatDivisor }

// Node finds a node by id.
func (c *ClusterConfig) Node(id uint32) (NodeConfig, bool) {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return NodeConfig{}, false
}

// NodeByName finds a node by name.
func (c *ClusterConfig) NodeByName(name string) (NodeConfig, bool) {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return NodeConfig{}, false
}

// NextNodeID is the lowest unused id.
func (c *ClusterConfig) NextNodeID() uint32 {
	used := map[uint32]bool{}
	for _, n := range c.Nodes {
		used[n.ID] = true
	}
	for id := uint32(1); ; id++ {
		if !used[id] {
			return id
		}
	}
}

// Validate checks everything a node relies on; the errors say what to fix.
func (c *ClusterConfig) Validate() error {
	if c.Version == 0 {
		return fmt.Errorf("config version must be at least 1")
	}
	if !nameRE.MatchString(c.ClusterName) {
		return fmt.Errorf("cluster name %q: use 1-63 letters, digits, '.', '_' or '-'", c.ClusterName)
	}
	if len(c.ClusterID) != 32 {
		return fmt.Errorf("cluster id %q is not 32 hex digits", c.ClusterID)
	}
	if c.TokenMs < minTokenMs || c.TokenMs > maxTokenMs {
		return fmt.Errorf("token timeout %d ms is outside %d..%d ms", c.TokenMs, minTokenMs, maxTokenMs)
	}
	if len(c.Nodes) == 0 || len(c.Nodes) > MaxNodes {
		return fmt.Errorf("%d nodes: a cluster has 1 to %d", len(c.Nodes), MaxNodes)
	}
	ids, names, addrs := map[uint32]bool{}, map[string]bool{}, map[string]string{}
	for _, n := range c.Nodes {
		if n.ID == 0 {
			return fmt.Errorf("node %q has id 0; ids start at 1", n.Name)
		}
		if ids[n.ID] {
			return fmt.Errorf("node id %d is used twice", n.ID)
		}
		ids[n.ID] = true
		if !nameRE.MatchString(n.Name) {
			return fmt.Errorf("node name %q: use 1-63 letters, digits, '.', '_' or '-'", n.Name)
		}
		if names[n.Name] {
			return fmt.Errorf("node name %q is used twice", n.Name)
		}
		names[n.Name] = true
		if n.Votes > MaxVotes {
			return fmt.Errorf("node %q has %d votes; at most %d", n.Name, n.Votes, MaxVotes)
		}
		for kind, a := range map[string]string{"cluster": n.ClusterAddr, "storage": n.StorageAddr, "migration": n.MigrationAddr} {
			if a == "" && kind != "cluster" {
				continue
			}
			ap, err := netip.ParseAddrPort(a)
			if err != nil || ap.Port() == 0 || ap.Addr().IsUnspecified() {
				return fmt.Errorf("node %q %s address %q: want a static IP:PORT", n.Name, kind, a)
			}
			if other, ok := addrs[a]; ok {
				return fmt.Errorf("address %s is used by both %s", a, other+" and "+n.Name)
			}
			addrs[a] = n.Name + " (" + kind + ")"
		}
	}
	var total uint32
	for _, n := range c.Nodes {
		total += n.Votes
	}
	if total == 0 {
		return fmt.Errorf("no node has a vote")
	}
	if w := c.Quorum.Witness; w != nil {
		if err := w.validate(); err != nil {
			return err
		}
		if other, ok := addrs[w.Addr]; ok {
			return fmt.Errorf("witness address %s is used by %s", w.Addr, other)
		}
	}
	if err := c.validateVolumes(); err != nil {
		return err
	}
	return c.validateFence()
}

// sortedNodes returns the nodes ordered by id.
func (c *ClusterConfig) sortedNodes() []NodeConfig {
	out := append([]NodeConfig(nil), c.Nodes...)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
