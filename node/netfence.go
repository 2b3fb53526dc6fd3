package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/paddock-io/paddock/fence"
	"github.com/paddock-io/paddock/fence/netfence"
	"github.com/paddock-io/paddock/node/confchange"
)

// The network fence in the daemon.
//
// A node started with --fence-interface IFACE attaches the eBPF filter of
// package netfence there (closed when the node stops). The addresses it
// drops are the blocked set of the cluster configuration
// (node/netfence_config.go) plus blocks a peer asked for that are not in
// the configuration yet ("direct" blocks: the configuration change may
// still be under way, or may not commit at all in a 2-node cluster).
// Every installed configuration reconciles the filter with that set, and
// a node that starts applies it before anything else, so blocks survive
// restarts.
//
// When the HA agent fences a node (after its levels, or when the lease
// was waited out), the acting node asks every member, itself included,
// over the authenticated peer API (POST /peer/v1/netfence) to block the
// victim's addresses now, and then commits the block into the
// configuration. `paddock unfence NODE` removes it from the
// configuration (quorum needed) and asks every member to unblock. Nodes
// without a filter answer that they have none; when no member has one,
// nothing is recorded in the configuration, so clusters that do not use
// the network fence behave as before.

// Limits of the network fence's node-to-node calls.
const (
	// netFencePeerTimeoutMs bounds one peer's block or unblock answer
	// (its filter update is a map write; the rest is one round trip).
	netFencePeerTimeoutMs = 5000
	// netFenceConfigWaitMs bounds how long a peer asked to unblock waits
	// for the configuration that removed the block.
	netFenceConfigWaitMs = 5000
	maxNetFenceBodyBytes = 4096
)

// netFenceState is the node's filter and what it applied.
type netFenceState struct {
	filter *netfence.Filter // nil without --fence-interface

	mu      sync.Mutex
	applied map[netip.Addr]bool
	// direct are blocks asked for by a peer, by node name, until the
	// configuration holds them (or an unfence removes them).
	direct map[string][]netip.Addr
}

// NetFencePeerRequest is POST /peer/v1/netfence: block or unblock a node.
// The addresses are not sent: each node derives them from its own
// configuration, so a peer cannot be told to drop a survivor's address.
type NetFencePeerRequest struct {
	Node  string `json:"node"`
	Block bool   `json:"block"`
	// MinConfigVersion, on an unblock, is the configuration that removed
	// the block: the peer waits (bounded) until it runs it, so it does
	// not put the block back from an older one.
	MinConfigVersion uint64 `json:"min_config_version,omitempty"`
}

// NetFencePeerReply says what one node did.
type NetFencePeerReply struct {
	Node   string   `json:"node"`
	Filter bool     `json:"filter"`          // the node runs a filter
	Addrs  []string `json:"addrs,omitempty"` // the victim's addresses it now blocks (block) or no longer blocks (unblock)
	Error  string   `json:"error,omitempty"`
}

// UnfenceRequest is POST /v1/fence/unfence.
type UnfenceRequest struct {
	Node string `json:"node"`
}

// UnfenceReply is what an unfence did on each member.
type UnfenceReply struct {
	Node          string              `json:"node"`
	ConfigVersion uint64              `json:"config_version,omitempty"`
	Members       []NetFencePeerReply `json:"members"`
}

// attachNetFence attaches the filter when the options name an interface
// and applies the configured blocks.
func (d *Daemon) attachNetFence() error {
	d.nf = &netFenceState{applied: map[netip.Addr]bool{}, direct: map[string][]netip.Addr{}}
	if d.opts.FenceInterface == "" {
		return nil
	}
	f, err := netfence.Attach(netfence.Options{Interface: d.opts.FenceInterface, Mode: netfence.Mode(d.opts.FenceMode)})
	if err != nil {
		return fmt.Errorf("--fence-interface: %w", err)
	}
	d.nf.filter = f
	d.log.Info("network fence attached", "interface", f.Interface(), "mode", f.Mode())
	return d.applyNetBlocks()
}

// closeNetFence detaches the filter: every address passes again (the
// next start re-applies the configured blocks).
func (d *Daemon) closeNetFence() {
	if d.nf != nil && d.nf.filter != nil {
		d.nf.filter.Close()
	}
}

// applyNetBlocks makes the filter drop exactly the configured blocked
// addresses plus the direct blocks.
func (d *Daemon) applyNetBlocks() error {
	nf := d.nf
	if nf == nil || nf.filter == nil {
		return nil
	}
	cfg := d.config()
	self := d.loaded.Identity.ID
	nf.mu.Lock()
	defer nf.mu.Unlock()
	for name := range nf.direct {
		if _, ok := cfg.netBlock(name); ok {
			delete(nf.direct, name) // the configuration holds it now
		}
	}
	want := cfg.blockedAddrsFor(self)
	for _, as := range nf.direct {
		for _, a := range as {
			if !slices.Contains(want, a) {
				want = append(want, a)
			}
		}
	}
	block, unblock := addrDiff(nf.applied, want)
	var errs []error
	for _, a := range block {
		if err := nf.filter.Block(a); err != nil {
			errs = append(errs, err)
			continue
		}
		nf.applied[a] = true
		d.log.Warn("network fence: dropping packets from", "addr", a)
	}
	for _, a := range unblock {
		if err := nf.filter.Unblock(a); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(nf.applied, a)
		d.log.Warn("network fence: packets pass again from", "addr", a)
	}
	return errors.Join(errs...)
}

// localNetFence blocks (or unblocks) a node on this node's filter and
// says what it did.
func (d *Daemon) localNetFence(req NetFencePeerRequest) NetFencePeerReply {
	me, _ := d.config().Node(d.loaded.Identity.ID)
	rep := NetFencePeerReply{Node: me.Name}
	nf := d.nf
	if nf == nil || nf.filter == nil {
		return rep
	}
	rep.Filter = true
	if req.Node == me.Name {
		rep.Error = "a node does not fence itself"
		return rep
	}
	if !req.Block && req.MinConfigVersion > 0 {
		deadline := time.Now().Add(netFenceConfigWaitMs * time.Millisecond)
		for d.config().Version < req.MinConfigVersion && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	cfg := d.config()
	addrs, err := cfg.victimAddrs(req.Node)
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	nf.mu.Lock()
	if req.Block {
		nf.direct[req.Node] = addrs
	} else {
		delete(nf.direct, req.Node)
	}
	nf.mu.Unlock()
	if err := d.applyNetBlocks(); err != nil {
		rep.Error = err.Error()
		return rep
	}
	nf.mu.Lock()
	defer nf.mu.Unlock()
	for _, a := range addrs {
		if nf.applied[a] == req.Block {
			rep.Addrs = append(rep.Addrs, a.String())
		}
	}
	if !req.Block && len(rep.Addrs) < len(addrs) {
		rep.Error = fmt.Sprintf("configuration version %d still blocks %s; it passes once the unfence's configuration is installed", cfg.Version, req.Node)
	}
	return rep
}

// peerNetFenceHandler answers POST /peer/v1/netfence from another node
// (mutual TLS: the caller's certificate must chain to the cluster CA).
// Only a quorate node blocks or unblocks: an inquorate one acts on no
// one's word.
func (d *Daemon) peerNetFenceHandler(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		http.Error(w, "a cluster certificate is required", http.StatusUnauthorized)
		return
	}
	var req NetFencePeerRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, maxNetFenceBodyBytes)).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !d.quorate() {
		http.Error(w, "this node is not quorate: it changes no network fence", http.StatusConflict)
		return
	}
	// A node that is itself network-fenced asks for nothing: seen from a
	// node without a filter it may look like a quorate partition's
	// acting node, and it must not have a survivor fenced.
	if caller := r.TLS.PeerCertificates[0].Subject.CommonName; caller == "" || d.config().netBlockedCaller(caller) {
		http.Error(w, fmt.Sprintf("node %q is network-fenced: its fence requests are refused", caller), http.StatusForbidden)
		return
	}
	start := nowMs()
	rep := d.localNetFence(req)
	if rep.Filter {
		d.recordNetFence(req, start, []NetFencePeerReply{rep})
	}
	writeJSONResponse(w, http.StatusOK, rep)
}

// askNetFence runs req on every member (this node too) in parallel and
// collects the answers; an unreachable member is an answer with an error.
func (d *Daemon) askNetFence(ctx context.Context, members []uint32, req NetFencePeerRequest) []NetFencePeerReply {
	cfg := d.config()
	self := d.loaded.Identity.ID
	out := make([]NetFencePeerReply, len(members))
	var wg sync.WaitGroup
	for i, id := range members {
		n, ok := cfg.Node(id)
		if !ok {
			continue
		}
		if id == self {
			out[i] = d.localNetFence(req)
			continue
		}
		if n.Name == req.Node {
			out[i] = NetFencePeerReply{Node: n.Name, Error: "the target itself is not asked"}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = d.callNetFence(ctx, n, req)
		}()
	}
	wg.Wait()
	return slices.DeleteFunc(out, func(r NetFencePeerReply) bool { return r.Node == "" || r.Node == req.Node })
}

func (d *Daemon) callNetFence(ctx context.Context, n NodeConfig, req NetFencePeerRequest) NetFencePeerReply {
	var rep NetFencePeerReply
	if err := d.peerJSON(ctx, n, "POST", "/peer/v1/netfence", req, &rep, netFencePeerTimeoutMs*time.Millisecond, maxNetFenceBodyBytes); err != nil {
		rep = NetFencePeerReply{Error: err.Error()}
	}
	rep.Node = n.Name
	return rep
}

// recordNetFence writes one "network" line of fence history for what the
// members answered: ok when every member that has a filter did it (and
// at least one has), failed when one of them could not, skipped when no
// member runs a filter.
func (d *Daemon) recordNetFence(req NetFencePeerRequest, startMs int64, reps []NetFencePeerReply) fence.HistoryEntry {
	e := fence.HistoryEntry{TimeMs: startMs, Target: req.Node, Method: fence.MethodNetwork, Action: fence.ActionOff,
		Result: fence.ResultSkipped, DurationMs: nowMs() - startMs}
	if !req.Block {
		e.Action = fence.ActionOn
	}
	var filters int
	var errs, who []string
	for _, r := range reps {
		if r.Error != "" {
			errs = append(errs, r.Node+": "+r.Error)
		}
		if r.Filter {
			filters++
			who = append(who, r.Node)
		}
	}
	switch {
	case len(errs) > 0:
		e.Result, e.Error = fence.ResultFailed, strings.Join(errs, "; ")
	case filters > 0:
		e.Result = fence.ResultOK
	}
	e.Device = strings.Join(who, ",")
	d.history().Add(e)
	return e
}

// history is the node's fence history: the HA agent's, or (a node
// without a storage address runs no HA agent) the daemon's own.
func (d *Daemon) history() *fence.History {
	if d.vols != nil && d.vols.ha != nil {
		return d.vols.ha.history
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hist == nil {
		d.hist = fence.NewHistory(0)
	}
	return d.hist
}

// netFenceNode is the network fence of a lost node, run by the acting
// node: every member blocks the victim's addresses now, then the block is
// committed into the configuration (so restarts and late nodes apply it).
// When no member has a filter, nothing is committed.
func (d *Daemon) netFenceNode(ctx context.Context, victim string, members []uint32) (fence.HistoryEntry, error) {
	req := NetFencePeerRequest{Node: victim, Block: true}
	start := nowMs()
	reps := d.askNetFence(ctx, members, req)
	var filters int
	for _, r := range reps {
		if r.Filter && r.Error == "" {
			filters++
		}
	}
	if filters > 0 {
		if _, ok := d.config().netBlock(victim); !ok {
			me, _ := d.config().Node(d.loaded.Identity.ID)
			_, err := d.proposeRetry(ctx, func(cur *ClusterConfig) (*ClusterConfig, error) {
				if _, ok := cur.netBlock(victim); ok {
					return nil, errAlreadyBlocked
				}
				return withNetBlock(cur, victim, me.Name, start)
			})
			if err != nil && !errors.Is(err, errAlreadyBlocked) {
				// The survivors drop its packets all the same (direct
				// blocks), until they restart.
				reps = append(reps, NetFencePeerReply{Node: me.Name, Filter: true, Error: "recording the block in the configuration: " + err.Error()})
			}
		}
	}
	e := d.recordNetFence(req, start, reps)
	if e.Result == fence.ResultFailed {
		return e, errors.New(e.Error)
	}
	return e, nil
}

var errAlreadyBlocked = errors.New("already blocked")

// Bounds of proposeRetry: the failover of the same lost node proposes
// its own change at the same moment, and a node runs one proposal at a
// time (confchange.ErrBusy), so the fence's change waits its turn.
const (
	netFenceProposeMs      = 20000
	netFenceProposeRetryMs = 200
)

// proposeRetry is Propose, tried again while this node has another
// proposal in flight, for at most netFenceProposeMs.
func (d *Daemon) proposeRetry(ctx context.Context, build func(cur *ClusterConfig) (*ClusterConfig, error)) (*ClusterConfig, error) {
	ctx, cancel := context.WithTimeout(ctx, netFenceProposeMs*time.Millisecond)
	defer cancel()
	for {
		next, err := d.conf.Propose(ctx, build)
		if err == nil || !errors.Is(err, confchange.ErrBusy) {
			return next, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(netFenceProposeRetryMs * time.Millisecond):
		}
	}
}

// unfence removes a node's network fence everywhere: from the
// configuration (needs quorum), then from every member's filter.
func (d *Daemon) unfence(ctx context.Context, name string) (UnfenceReply, error) {
	rep := UnfenceReply{Node: name}
	cfg := d.config()
	n, ok := cfg.NodeByName(name)
	if !ok {
		return rep, fmt.Errorf("no node named %q", name)
	}
	if !d.quorate() {
		return rep, errors.New("this node's partition is not quorate: it unfences no one (an unfence is a configuration change)")
	}
	_, inConfig := cfg.netBlock(name)
	direct := false
	if d.nf != nil {
		d.nf.mu.Lock()
		_, direct = d.nf.direct[name]
		d.nf.mu.Unlock()
	}
	if !inConfig && !direct {
		return rep, fmt.Errorf("node %q is not fenced (no network block in force)", name)
	}
	start := nowMs()
	req := NetFencePeerRequest{Node: name}
	if inConfig {
		next, err := d.proposeRetry(ctx, func(cur *ClusterConfig) (*ClusterConfig, error) {
			return withoutNetBlock(cur, name)
		})
		if err != nil {
			return rep, fmt.Errorf("unfence %s: %w", name, err)
		}
		req.MinConfigVersion, rep.ConfigVersion = next.Version, next.Version
	}
	members := d.members()
	rep.Members = d.askNetFence(ctx, members, req)
	d.recordNetFence(req, start, rep.Members)
	if d.vols != nil && d.vols.ha != nil {
		a := d.vols.ha
		a.mu.Lock()
		delete(a.fenced, n.ID)
		delete(a.netDone, n.ID)
		a.mu.Unlock()
	}
	d.log.Warn("unfenced", "target", name, "config_version", rep.ConfigVersion)
	return rep, nil
}

// NetFilterStatus is this node's filter as status shows it.
type NetFilterStatus struct {
	Interface      string             `json:"interface"`
	Mode           string             `json:"mode"`
	Blocked        []netfence.Blocked `json:"blocked"`
	DroppedPackets uint64             `json:"dropped_packets"`
	Error          string             `json:"error,omitempty"`
}

func (d *Daemon) netFilterStatus() *NetFilterStatus {
	if d.nf == nil || d.nf.filter == nil {
		return nil
	}
	f := d.nf.filter
	st := &NetFilterStatus{Interface: f.Interface(), Mode: string(f.Mode()), Blocked: []netfence.Blocked{}}
	bs, err := f.List()
	if err != nil {
		st.Error = err.Error()
		return st
	}
	st.Blocked = append(st.Blocked, bs...)
	st.DroppedPackets, _ = f.DroppedTotal()
	return st
}
