package node

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Volume hand-off: a live migration moves the primary role of the guest's
// volumes to the destination node inside the guest's pause (see
// migrate.SourceOptions.Handoff). POST /v1/handoff does it in one step:
// one configuration change names the destination primary of every listed
// volume, then the call waits until the destination serves each of them.
// If that does not happen in time, a second change names the old primaries
// again and the call waits for them: the answer is either "all moved and
// served there" or an error after which the volumes are back where they
// were (or, if even that failed, the error says so).
//
// Why the paused guest cannot write through its old primary afterwards:
// the destination promotes itself under a higher epoch, and every replica
// that promised it refuses writes tagged with an older epoch (blockrep's
// epoch rule, DESIGN.md invariant 2). A write quorum of the replicas
// promised before the destination serves, so the old primary cannot get a
// single write acknowledged after the hand-off returned; its node steps
// down when it reads the configuration, and its NBD export forwards to the
// new primary from then on.

// HandoffRequest is the body of POST /v1/handoff.
type HandoffRequest struct {
	Volumes []string `json:"volumes"`
	Node    string   `json:"node"` // the node that becomes primary of every volume
	// CheckOnly checks that the hand-off could be made (the volumes
	// exist, the node holds a replica of each) and changes nothing: a
	// migration asks it before it starts copying RAM.
	CheckOnly bool `json:"check_only,omitempty"`
	// TimeoutMs bounds waiting for the node to serve every volume; 0 =
	// DefaultHandoffTimeoutMs. Undoing a hand-off that timed out takes
	// at most as long again.
	TimeoutMs int64 `json:"timeout_ms,omitempty"`
}

// HandoffVolume is one volume of a hand-off.
type HandoffVolume struct {
	Name  string `json:"name"`
	From  string `json:"from"` // the configured primary before
	To    string `json:"to"`
	Epoch uint64 `json:"epoch,omitempty"` // the new primary's epoch
}

// HandoffResult says what a hand-off did and where its time went.
type HandoffResult struct {
	Node    string          `json:"node"`
	Volumes []HandoffVolume `json:"volumes"`
	// ConfigMs: committing the configuration change (a quorum round).
	ConfigMs float64 `json:"config_ms"`
	// PromoteMs: from the commit until the node serves every volume
	// (the configuration reaching it, its promotion: promises for a new
	// epoch, a new generation, waiting out the old primary's read
	// lease).
	PromoteMs float64 `json:"promote_ms"`
	TotalMs   float64 `json:"total_ms"`
}

// Limits of a hand-off.
const (
	maxHandoffVolumes       = 16
	DefaultHandoffTimeoutMs = 10_000
	maxHandoffTimeoutMs     = 120_000
	// handoffPollMs spaces the checks whether the new primary serves:
	// short, because the guest is paused meanwhile.
	handoffPollMs = 20
)

func (d *Daemon) handoffHandler(w http.ResponseWriter, r *http.Request) {
	var req HandoffRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	res, err := d.handoff(r.Context(), req)
	if err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	writeJSONResponse(w, http.StatusOK, res)
}

// handoffPlan checks a request against a configuration and says, per
// volume, where its primary is now.
func handoffPlan(cfg *ClusterConfig, req HandoffRequest) (NodeConfig, []HandoffVolume, []VolumeConfig, error) {
	if len(req.Volumes) == 0 || len(req.Volumes) > maxHandoffVolumes {
		return NodeConfig{}, nil, nil, fmt.Errorf("%d volumes: a hand-off moves 1..%d", len(req.Volumes), maxHandoffVolumes)
	}
	to, ok := cfg.NodeByName(req.Node)
	if !ok {
		return NodeConfig{}, nil, nil, fmt.Errorf("no node named %q", req.Node)
	}
	if cfg.netBlockedID(to.ID) {
		return NodeConfig{}, nil, nil, fmt.Errorf("node %q is network-fenced: run paddock unfence %s first", to.Name, to.Name)
	}
	var plan []HandoffVolume
	var vols []VolumeConfig
	for i, name := range req.Volumes {
		if slices.Contains(req.Volumes[:i], name) {
			return NodeConfig{}, nil, nil, fmt.Errorf("volume %q listed twice", name)
		}
		v, ok := cfg.Volume(name)
		if !ok {
			return NodeConfig{}, nil, nil, fmt.Errorf("no volume named %q", name)
		}
		if !slices.Contains(v.Replicas, to.ID) {
			return NodeConfig{}, nil, nil, fmt.Errorf("node %q holds no replica of volume %q: its primary role cannot move there (copying the volume is not supported)", to.Name, name)
		}
		from, _ := cfg.Node(v.Primary)
		plan = append(plan, HandoffVolume{Name: name, From: from.Name, To: to.Name})
		vols = append(vols, v)
	}
	return to, plan, vols, nil
}

// setPrimaries proposes a change that names primary[i] the primary of
// vols[i], checking again against the configuration it changes.
func (d *Daemon) setPrimaries(ctx context.Context, vols []VolumeConfig, primary []string) error {
	_, err := d.conf.Propose(ctx, func(cur *ClusterConfig) (*ClusterConfig, error) {
		next := cloneConfig(cur)
		for i, v := range vols {
			n, ok := cur.NodeByName(primary[i])
			if !ok {
				return nil, fmt.Errorf("no node named %q", primary[i])
			}
			j := slices.IndexFunc(next.Volumes, func(x VolumeConfig) bool { return x.Name == v.Name && x.ID == v.ID })
			if j < 0 {
				return nil, fmt.Errorf("volume %q is gone from the configuration", v.Name)
			}
			if !slices.Contains(next.Volumes[j].Replicas, n.ID) {
				return nil, fmt.Errorf("node %q holds no replica of volume %q", n.Name, v.Name)
			}
			next.Volumes[j].Primary = n.ID
		}
		return next, nil
	})
	return err
}

// waitServing polls until node serves every volume of vols as an
// undeposed primary (its epochs go into epochs when not nil), or until
// the deadline.
func (d *Daemon) waitServing(ctx context.Context, vols []VolumeConfig, node []string, epochs []uint64, deadline time.Time) error {
	for {
		cfg := d.config()
		var missing []string
		for i, v := range vols {
			n, ok := cfg.NodeByName(node[i])
			if !ok {
				return fmt.Errorf("no node named %q", node[i])
			}
			rep := d.fetchReport(ctx, cfg, n.ID, v.ID)
			if rep.Primary == nil || rep.Primary.Deposed != "" {
				why := rep.Error
				if why == "" {
					why = rep.PromoteErr
				}
				if why != "" {
					why = " (" + why + ")"
				}
				missing = append(missing, v.Name+why)
				continue
			}
			if epochs != nil {
				epochs[i] = uint64(rep.Primary.Epoch)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not serving %s yet", strings.Join(missing, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(handoffPollMs * time.Millisecond):
		}
	}
}

// handoff moves the primary role of req.Volumes to req.Node, or leaves it
// where it was (see the comment at the top).
func (d *Daemon) handoff(ctx context.Context, req HandoffRequest) (*HandoffResult, error) {
	start := time.Now()
	if req.TimeoutMs == 0 {
		req.TimeoutMs = DefaultHandoffTimeoutMs
	}
	if req.TimeoutMs < 0 || req.TimeoutMs > maxHandoffTimeoutMs {
		return nil, fmt.Errorf("timeout %d ms: want 1..%d", req.TimeoutMs, maxHandoffTimeoutMs)
	}
	to, plan, vols, err := handoffPlan(d.config(), req)
	if err != nil {
		return nil, err
	}
	res := &HandoffResult{Node: to.Name, Volumes: plan}
	if req.CheckOnly {
		return res, nil
	}
	timeout := time.Duration(req.TimeoutMs) * time.Millisecond
	// The caller's going away must not leave the volumes half moved:
	// the hand-off and its undo run to their own deadline.
	ctx = context.WithoutCancel(ctx)
	targets := make([]string, len(vols))
	origins := make([]string, len(vols))
	for i := range vols {
		targets[i], origins[i] = to.Name, plan[i].From
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	err = d.setPrimaries(pctx, vols, targets)
	cancel()
	res.ConfigMs = ms(time.Since(start))
	committedAt := time.Now()
	if err == nil {
		epochs := make([]uint64, len(vols))
		err = d.waitServing(ctx, vols, targets, epochs, start.Add(timeout))
		res.PromoteMs = ms(time.Since(committedAt))
		if err == nil {
			for i := range res.Volumes {
				res.Volumes[i].Epoch = epochs[i]
			}
			res.TotalMs = ms(time.Since(start))
			d.log.Info("volume hand-off done", "node", to.Name, "volumes", strings.Join(req.Volumes, ","),
				"config_ms", res.ConfigMs, "promote_ms", res.PromoteMs)
			return res, nil
		}
		err = fmt.Errorf("node %s did not take the volumes over within %v: %w", to.Name, timeout, err)
	} else {
		err = fmt.Errorf("configuration change: %w", err)
	}
	// Undo. A change that failed by timeout may still commit, so the
	// old primaries are named again in every case; the change is a
	// no-op where nothing moved.
	d.log.Warn("volume hand-off failed; giving the volumes back to their primaries", "node", to.Name, "err", err)
	undoStart := time.Now()
	uctx, ucancel := context.WithTimeout(ctx, timeout)
	uerr := d.setPrimaries(uctx, vols, origins)
	ucancel()
	if uerr == nil {
		uerr = d.waitServing(ctx, vols, origins, nil, undoStart.Add(timeout))
	}
	if uerr != nil {
		return nil, fmt.Errorf("volume hand-off to %s failed: %v; and giving the volumes back to %s failed too: %v (see paddock volume status)",
			to.Name, err, strings.Join(origins, ","), uerr)
	}
	return nil, fmt.Errorf("volume hand-off to %s failed, the volumes are served by their old primaries again: %w", to.Name, err)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
