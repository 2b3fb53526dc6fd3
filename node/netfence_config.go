package node

import (
	"fmt"
	"net/netip"
	"slices"
)

// The network fence's part of the cluster configuration: which nodes are
// blocked (their packets dropped by every node that runs the eBPF filter)
// and since when.
//
// The blocked set lives in the cluster configuration, not in a file of
// each node's data directory, because every node must agree on who is
// fenced: a survivor that restarts re-applies exactly the committed set,
// a node that was away learns it with the next configuration, an unfence
// is one committed change that every node follows, and "is this node
// blocked" (a blocked node is never chosen as a primary) has one answer.
// A local file could disagree between nodes after a restart during an
// unfence.

// NetBlock is one network-fenced node.
type NetBlock struct {
	Node string `json:"node"`
	// Addrs are the victim's own IP addresses (no ports) that are
	// dropped: every address of its cluster, storage and migration
	// addresses that no other node and no witness uses.
	Addrs []string `json:"addrs"`
	// SinceMs is when the block was decided (Unix milliseconds), By the
	// node that decided it.
	SinceMs int64  `json:"since_ms"`
	By      string `json:"by,omitempty"`
}

// maxNetBlockAddrs bounds one node's blocked addresses: a node has three
// addresses (cluster, storage, migration).
const maxNetBlockAddrs = 3

// victimAddrs is the set of IP addresses to drop to fence node name: the
// IPs of its cluster, storage and migration addresses, without any that
// another node or the witness also uses (blocking a shared address would
// fence a survivor too: nodes on one host in tests, a NAT). An error when
// the node is unknown or has no address of its own.
func (c *ClusterConfig) victimAddrs(name string) ([]netip.Addr, error) {
	victim, ok := c.NodeByName(name)
	if !ok {
		return nil, fmt.Errorf("no node named %q", name)
	}
	others := map[netip.Addr]bool{}
	for _, n := range c.Nodes {
		if n.ID == victim.ID {
			continue
		}
		for _, a := range nodeIPs(n) {
			others[a] = true
		}
	}
	if w := c.Quorum.Witness; w != nil {
		if ap, err := netip.ParseAddrPort(w.Addr); err == nil {
			others[ap.Addr().Unmap()] = true
		}
	}
	var out []netip.Addr
	for _, a := range nodeIPs(victim) {
		if !others[a] {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("node %q has no address of its own (other nodes or the witness share its IPs): there is nothing a network fence could drop", name)
	}
	return out, nil
}

// nodeIPs is a node's distinct IPs, sorted, in their unmapped form.
func nodeIPs(n NodeConfig) []netip.Addr {
	var out []netip.Addr
	for _, s := range []string{n.ClusterAddr, n.StorageAddr, n.MigrationAddr} {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			continue // empty (storage, migration are optional); Validate checks the rest
		}
		a := ap.Addr().Unmap()
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// netBlock returns the block of node name, if it is network-fenced.
func (c *ClusterConfig) netBlock(name string) (NetBlock, bool) {
	if c.Fence == nil {
		return NetBlock{}, false
	}
	for _, b := range c.Fence.Blocked {
		if b.Node == name {
			return b, true
		}
	}
	return NetBlock{}, false
}

// netBlockedCaller says whether a peer, named by its certificate, is
// network-fenced.
func (c *ClusterConfig) netBlockedCaller(name string) bool {
	_, ok := c.netBlock(name)
	return ok
}

// netBlockedID says whether the node with this id is network-fenced.
func (c *ClusterConfig) netBlockedID(id uint32) bool {
	n, ok := c.Node(id)
	if !ok {
		return false
	}
	_, blocked := c.netBlock(n.Name)
	return blocked
}

// withNetBlock is cur with node name network-fenced (a new
// configuration, validated; cur is not changed). An error when the node
// is unknown, already blocked, or has no address of its own.
func withNetBlock(cur *ClusterConfig, name, by string, nowMs int64) (*ClusterConfig, error) {
	if _, ok := cur.NodeByName(name); !ok {
		return nil, fmt.Errorf("no node named %q", name)
	}
	if _, ok := cur.netBlock(name); ok {
		return nil, fmt.Errorf("node %q is already network-fenced", name)
	}
	addrs, err := cur.victimAddrs(name)
	if err != nil {
		return nil, err
	}
	next := cloneConfig(cur)
	if next.Fence == nil {
		next.Fence = &FenceConfig{}
	}
	b := NetBlock{Node: name, SinceMs: nowMs, By: by}
	for _, a := range addrs {
		b.Addrs = append(b.Addrs, a.String())
	}
	next.Fence.Blocked = append(next.Fence.Blocked, b)
	return next, next.Validate()
}

// withoutNetBlock is cur with node name's block removed. An error when
// the node is unknown or not network-fenced.
func withoutNetBlock(cur *ClusterConfig, name string) (*ClusterConfig, error) {
	if _, ok := cur.NodeByName(name); !ok {
		return nil, fmt.Errorf("no node named %q", name)
	}
	if _, ok := cur.netBlock(name); !ok {
		return nil, fmt.Errorf("node %q is not fenced", name)
	}
	next := cloneConfig(cur)
	next.Fence.Blocked = slices.DeleteFunc(next.Fence.Blocked, func(b NetBlock) bool { return b.Node == name })
	return next, next.Validate()
}

// validateNetBlocks checks the blocked set: known nodes, each once, a few
// valid addresses that belong to that node and to no other node nor the
// witness (a block must never drop a survivor's packets).
func (c *ClusterConfig) validateNetBlocks() error {
	if c.Fence == nil {
		return nil
	}
	if len(c.Fence.Blocked) > MaxNodes {
		return fmt.Errorf("%d network-fenced nodes: at most %d", len(c.Fence.Blocked), MaxNodes)
	}
	seen := map[string]bool{}
	for _, b := range c.Fence.Blocked {
		n, ok := c.NodeByName(b.Node)
		if !ok {
			return fmt.Errorf("network fence of %q: no such node (a fenced node stays in the configuration until \"paddock unfence %s\")", b.Node, b.Node)
		}
		if seen[b.Node] {
			return fmt.Errorf("network fence of %q is listed twice", b.Node)
		}
		seen[b.Node] = true
		if len(b.Addrs) == 0 || len(b.Addrs) > maxNetBlockAddrs {
			return fmt.Errorf("network fence of %q: %d addresses, want 1 to %d", b.Node, len(b.Addrs), maxNetBlockAddrs)
		}
		own, err := c.victimAddrs(n.Name)
		if err != nil {
			return fmt.Errorf("network fence of %q: %w", b.Node, err)
		}
		for _, s := range b.Addrs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return fmt.Errorf("network fence of %q: address %q: %w", b.Node, s, err)
			}
			if !slices.Contains(own, a.Unmap()) {
				return fmt.Errorf("network fence of %q: address %s is not one of its own (another node or the witness uses it, or it is not the node's)", b.Node, s)
			}
		}
	}
	return nil
}

// blockedAddrsFor is every address node self must drop: the addresses of
// every blocked node but itself (a node never drops its own packets; a
// fenced node that learns of its own block keeps its filter open).
func (c *ClusterConfig) blockedAddrsFor(self uint32) []netip.Addr {
	if c.Fence == nil {
		return nil
	}
	me, _ := c.Node(self)
	mine := nodeIPs(me)
	var out []netip.Addr
	for _, b := range c.Fence.Blocked {
		if b.Node == me.Name {
			continue
		}
		for _, s := range b.Addrs {
			if a, err := netip.ParseAddr(s); err == nil && !slices.Contains(mine, a.Unmap()) && !slices.Contains(out, a.Unmap()) {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}

// addrDiff is what to block and unblock to go from the applied set to the
// wanted one.
func addrDiff(applied map[netip.Addr]bool, want []netip.Addr) (block, unblock []netip.Addr) {
	w := map[netip.Addr]bool{}
	for _, a := range want {
		w[a] = true
		if !applied[a] {
			block = append(block, a)
		}
	}
	for a := range applied {
		if !w[a] {
			unblock = append(unblock, a)
		}
	}
	slices.SortFunc(block, func(a, b netip.Addr) int { return a.Compare(b) })
	slices.SortFunc(unblock, func(a, b netip.Addr) int { return a.Compare(b) })
	return block, unblock
}
