package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/paddock-io/paddock/blockrep"
)

// VolumeCreateRequest is the body of POST /v1/volumes.
type VolumeCreateRequest struct {
	Name        string   `json:"name"`
	SizeBytes   int64    `json:"size_bytes"`
	Replicas    int      `json:"replicas"`
	Nodes       []string `json:"nodes,omitempty"` // names; chosen by the cluster when empty
	WriteQuorum int      `json:"write_quorum,omitempty"`
	OnNoQuorum  string   `json:"on_no_quorum,omitempty"`
	RegionBytes int64    `json:"region_bytes,omitempty"`
	// ScrubIntervalHours: between background scrubs; 0 means weekly.
	ScrubIntervalHours      int   `json:"scrub_interval_hours,omitempty"`
	ResyncMaxBytesPerSecond int64 `json:"resync_max_bytes_per_second,omitempty"`
	ResyncMinBytesPerSecond int64 `json:"resync_min_bytes_per_second,omitempty"`
}

// ScrubRequest asks for a verify (Repair false) or a scrub.
type ScrubRequest struct {
	Repair bool `json:"repair"`
}

// ResolveRequest names the replica whose data is thrown away.
type ResolveRequest struct {
	Discard string `json:"discard"`
}

// scrubTimeout bounds one scrub run from the CLI.
const scrubTimeout = 6 * time.Hour

// VolumePromoteRequest moves the primary role.
type VolumePromoteRequest struct {
	Node string `json:"node"`
}

// ReplicaReport is what one node says about its replica of a volume.
type ReplicaReport struct {
	Node       string                  `json:"node"`
	NodeID     uint32                  `json:"node_id"`
	Reachable  bool                    `json:"reachable"`
	Error      string                  `json:"error,omitempty"`
	Open       bool                    `json:"open"`
	Voter      *blockrep.VoterState    `json:"voter,omitempty"`
	Primary    *blockrep.PrimaryStatus `json:"primary,omitempty"`
	PromoteErr string                  `json:"promote_error,omitempty"`
	// RecoveringExtents: extents this replica re-verified after a crash,
	// or whose write failed here, that no primary has resent yet
	// (blockrep/recovered.go); until then it is not a complete copy.
	// RecoveringWholeVolume: all are (the record was lost, or an
	// fdatasync failed).
	RecoveringExtents     int  `json:"recovering_extents,omitempty"`
	RecoveringWholeVolume bool `json:"recovering_whole_volume,omitempty"`
}

// recovering says whether the replica waits for extents it may have lost
// in a crash.
func (r ReplicaReport) recovering() bool { return r.RecoveringExtents > 0 || r.RecoveringWholeVolume }

// recoveringDetail is the Detail of a recovering replica's row.
func recoveringDetail(extents int, whole bool) string {
	if whole {
		return "recovering after a crash or a failed flush: the whole volume is compared and what differs resent"
	}
	return fmt.Sprintf("recovering %d extents after a crash or a failed write (writes it may have lost are resent)", extents)
}

// ReplicaRow is one line of "volume status".
type ReplicaRow struct {
	Node           string `json:"node"`
	Role           string `json:"role"`  // primary or secondary
	State          string `json:"state"` // UpToDate, Outdated, Syncing, Diverged, Unknown
	Epoch          uint64 `json:"epoch"`
	Generation     string `json:"generation"`
	OutOfSyncBytes int64  `json:"out_of_sync_bytes,omitempty"`
	ResentBytes    int64  `json:"resent_bytes,omitempty"`
	// While it resyncs: the rate over the last seconds and the time left
	// at that rate, as the primary sees them.
	ResyncBytesPerSecond int64   `json:"resync_bytes_per_second,omitempty"`
	ResyncETASeconds     float64 `json:"resync_eta_seconds,omitempty"`
	// The last resync that brought it back into the generation, as the
	// serving primary saw it (blockrep.PeerStatus).
	LastResyncSeconds     float64 `json:"last_resync_seconds,omitempty"`
	LastResyncResentBytes int64   `json:"last_resync_resent_bytes,omitempty"`
	LastResyncEndedAgo    string  `json:"last_resync_ended_ago,omitempty"`
	Detail                string  `json:"detail,omitempty"`
}

// VolumeStatus is the reply of GET /v1/volumes/{name}.
type VolumeStatus struct {
	Volume   VolumeConfig    `json:"volume"`
	Primary  string          `json:"primary"`
	Replicas []ReplicaRow    `json:"replicas"`
	Reports  []ReplicaReport `json:"reports"`
}

// VolumeListEntry is one line of "volume list".
type VolumeListEntry struct {
	Name      string   `json:"name"`
	SizeBytes int64    `json:"size_bytes"`
	Replicas  []string `json:"replicas"`
	Primary   string   `json:"primary"`
	URI       string   `json:"uri"`
}

const peerStatusTimeout = 3 * time.Second

func (d *Daemon) volumeHandlers(mux *http.ServeMux) {
	d.fenceHandlers(mux) // node/fence_handlers.go
	mux.HandleFunc("POST /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		var req VolumeCreateRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		cfg, err := d.conf.Propose(r.Context(), func(cur *ClusterConfig) (*ClusterConfig, error) {
			return d.buildVolume(cur, req)
		})
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		v, _ := cfg.Volume(req.Name)
		writeJSONResponse(w, http.StatusOK, v)
	})
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		cfg := d.config()
		out := []VolumeListEntry{}
		for _, v := range cfg.Volumes {
			e := VolumeListEntry{Name: v.Name, SizeBytes: v.SizeBytes}
			for _, id := range v.Replicas {
				n, _ := cfg.Node(id)
				e.Replicas = append(e.Replicas, n.Name)
			}
			p, _ := cfg.Node(v.Primary)
			e.Primary = p.Name
			if me, ok := cfg.Node(d.loaded.Identity.ID); ok && me.StorageAddr != "" {
				e.URI = "nbd://" + me.StorageAddr + "/" + v.Name
			}
			out = append(out, e)
		}
		writeJSONResponse(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		st, err := d.volumeStatus(r.Context(), r.PathValue("name"))
		if err != nil {
			writeError(w, http.StatusNotFound, err)
			return
		}
		writeJSONResponse(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/delete", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		_, err := d.conf.Propose(r.Context(), func(cur *ClusterConfig) (*ClusterConfig, error) {
			if _, ok := cur.Volume(name); !ok {
				return nil, fmt.Errorf("no volume named %q", name)
			}
			next := cloneConfig(cur)
			next.Volumes = slices.DeleteFunc(next.Volumes, func(v VolumeConfig) bool { return v.Name == name })
			return next, nil
		})
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSONResponse(w, http.StatusOK, map[string]string{"deleted": name})
	})
	mux.HandleFunc("POST /v1/volumes/{name}/scrub", func(w http.ResponseWriter, r *http.Request) {
		var req ScrubRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		rep, err := d.scrubVolume(r.Context(), r.PathValue("name"), req.Repair)
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSONResponse(w, http.StatusOK, rep)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/resolve", func(w http.ResponseWriter, r *http.Request) {
		var req ResolveRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if err := d.resolveVolume(r.Context(), r.PathValue("name"), req.Discard); err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSONResponse(w, http.StatusOK, map[string]string{"discarding": req.Discard})
	})
	mux.HandleFunc("POST /v1/handoff", d.handoffHandler) // node/handoff.go
	mux.HandleFunc("POST /v1/volumes/{name}/promote", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		var req VolumePromoteRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		cfg, err := d.conf.Propose(r.Context(), func(cur *ClusterConfig) (*ClusterConfig, error) {
			v, ok := cur.Volume(name)
			if !ok {
				return nil, fmt.Errorf("no volume named %q", name)
			}
			n, ok := cur.NodeByName(req.Node)
			if !ok {
				return nil, fmt.Errorf("no node named %q", req.Node)
			}
			if !slices.Contains(v.Replicas, n.ID) {
				return nil, fmt.Errorf("node %q holds no replica of %q", req.Node, name)
			}
			if cur.netBlockedID(n.ID) {
				// It would be named primary and refuse to promote: the
				// volume would stall.
				return nil, fmt.Errorf("node %q is network-fenced: run paddock unfence %s first", req.Node, req.Node)
			}
			next := cloneConfig(cur)
			for i := range next.Volumes {
				if next.Volumes[i].Name == name {
					next.Volumes[i].Primary = n.ID
				}
			}
			return next, nil
		})
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		v, _ := cfg.Volume(name)
		writeJSONResponse(w, http.StatusOK, v)
	})
}

// buildVolume adds a volume to a configuration: it picks the nodes when
// none are named (this node first, then those with the fewest replicas).
func (d *Daemon) buildVolume(cur *ClusterConfig, req VolumeCreateRequest) (*ClusterConfig, error) {
	if _, ok := cur.Volume(req.Name); ok {
		return nil, fmt.Errorf("volume %q exists", req.Name)
	}
	count := req.Replicas
	if count == 0 {
		count = len(req.Nodes)
	}
	if len(req.Nodes) > 0 && len(req.Nodes) != count {
		return nil, fmt.Errorf("%d replicas but %d nodes named", count, len(req.Nodes))
	}
	var ids []uint32
	if len(req.Nodes) > 0 {
		for _, name := range req.Nodes {
			n, ok := cur.NodeByName(name)
			if !ok {
				return nil, fmt.Errorf("no node named %q", name)
			}
			ids = append(ids, n.ID)
		}
	} else {
		load := map[uint32]int{}
		for _, v := range cur.Volumes {
			for _, id := range v.Replicas {
				load[id]++
			}
		}
		var cands []NodeConfig
		for _, n := range cur.Nodes {
			if n.StorageAddr != "" {
				cands = append(cands, n)
			}
		}
		self := d.loaded.Identity.ID
		sort.SliceStable(cands, func(i, j int) bool {
			a, b := cands[i], cands[j]
			if (a.ID == self) != (b.ID == self) {
				return a.ID == self
			}
			if load[a.ID] != load[b.ID] {
				return load[a.ID] < load[b.ID]
			}
			return a.ID < b.ID
		})
		if count > len(cands) {
			return nil, fmt.Errorf("%d replicas asked, but only %d nodes have a storage address", count, len(cands))
		}
		for _, n := range cands[:count] {
			ids = append(ids, n.ID)
		}
	}
	if len(ids) == 0 {
		return nil, errors.New("a volume needs at least one replica")
	}
	next := cloneConfig(cur)
	id := next.NextVolumeID()
	next.LastVolumeID = id
	next.Volumes = append(next.Volumes, VolumeConfig{Name: req.Name, ID: id, SizeBytes: req.SizeBytes, Replicas: ids,
		WriteQuorum: req.WriteQuorum, OnNoQuorum: req.OnNoQuorum, Primary: ids[0], RegionBytes: req.RegionBytes, ScrubIntervalHours: req.ScrubIntervalHours,
		ResyncMaxBytesPerSecond: req.ResyncMaxBytesPerSecond, ResyncMinBytesPerSecond: req.ResyncMinBytesPerSecond})
	if err := next.Validate(); err != nil {
		return nil, err
	}
	return next, nil
}

// localReport is this node's view of its replica of a volume.
func (d *Daemon) localReport(id uint64) ReplicaReport {
	me, _ := d.config().Node(d.loaded.Identity.ID)
	rep := ReplicaReport{Node: me.Name, NodeID: me.ID, Reachable: true}
	if d.vols == nil {
		return rep
	}
	d.vols.mu.Lock()
	defer d.vols.mu.Unlock()
	for _, lv := range d.vols.vols {
		if lv.cfg.ID != id {
			continue
		}
		if lv.replica != nil {
			v := lv.replica.Voter()
			rep.Open, rep.Voter = true, &v
			es, whole := lv.replica.Store().Recovered()
			rep.RecoveringExtents, rep.RecoveringWholeVolume = len(es), whole
		}
		if lv.primary != nil {
			st := lv.primary.Status()
			rep.Primary = &st
		}
		rep.PromoteErr = lv.promoteErr
	}
	return rep
}

// peerVolumeHandler answers another node's question about a replica.
func (d *Daemon) peerVolumeHandler(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		http.Error(w, "a cluster certificate is required", http.StatusUnauthorized)
		return
	}
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		http.Error(w, "bad volume id", http.StatusBadRequest)
		return
	}
	writeJSONResponse(w, http.StatusOK, d.localReport(id))
}

// volumeStatus gathers every replica's report and derives each one's
// role and state.
func (d *Daemon) volumeStatus(ctx context.Context, name string) (VolumeStatus, error) {
	cfg := d.config()
	v, ok := cfg.Volume(name)
	if !ok {
		return VolumeStatus{}, fmt.Errorf("no volume named %q", name)
	}
	st := VolumeStatus{Volume: v}
	if p, ok := cfg.Node(v.Primary); ok {
		st.Primary = p.Name
	}
	reports := make([]ReplicaReport, len(v.Replicas))
	var wg sync.WaitGroup
	for i, id := range v.Replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reports[i] = d.fetchReport(ctx, cfg, id, v.ID)
		}()
	}
	wg.Wait()
	st.Reports = reports
	if p := replicaRows(v, reports, &st.Replicas); p != "" {
		st.Primary = p
	}
	return st, nil
}

// replicaRows derives each replica's row from the reports, and returns
// the node of the serving primary ("" when none serves).
func replicaRows(v VolumeConfig, reports []ReplicaReport, rows *[]ReplicaRow) (serving string) {
	var prim *blockrep.PrimaryStatus
	var primNode uint32
	for _, r := range reports {
		if r.Primary != nil && r.Primary.Deposed == "" {
			prim, primNode = r.Primary, r.NodeID
			// The serving primary, which differs from the configured
			// one after a takeover.
			serving = r.Node
		}
	}
	for _, r := range reports {
		row := ReplicaRow{Node: r.Node, Role: "secondary", State: "Unknown"}
		if r.Voter != nil {
			row.Epoch, row.Generation = uint64(r.Voter.Promised), r.Voter.Gen.String()
		}
		switch {
		case !r.Reachable:
			row.State, row.Detail = "Unknown", r.Error
		case prim != nil && r.NodeID == primNode:
			row.Role, row.State = "primary", "UpToDate"
		case prim != nil:
			row.State = "Outdated"
			for _, ps := range prim.Peers {
				if uint32(ps.Node) != r.NodeID {
					continue
				}
				row.OutOfSyncBytes, row.ResentBytes = ps.OutOfSyncBytes, ps.ResentBytes
				row.ResyncBytesPerSecond, row.ResyncETASeconds = ps.ResyncBytesPerSecond, ps.ResyncETASeconds
				row.LastResyncSeconds, row.LastResyncResentBytes, row.LastResyncEndedAgo = ps.LastResyncSeconds, ps.LastResyncResentBytes, ps.LastResyncEndedAgo
				switch {
				case ps.State == blockrep.PeerMember && ps.OutOfSyncBytes == 0:
					row.State = "UpToDate"
				case ps.State == blockrep.PeerMember || ps.State == blockrep.PeerSyncing:
					row.State = "Syncing"
					if ps.CompareDigests {
						row.Detail = "comparing digests"
					}
				}
				if ps.RecoveringExtents > 0 || ps.RecoveringWholeVolume {
					row.State, row.Detail = "Syncing", recoveringDetail(ps.RecoveringExtents, ps.RecoveringWholeVolume)
				}
			}
		default:
			// No primary serving: judge by the generations.
			row.State = "Outdated"
			if r.Voter != nil && slices.Contains(r.Voter.Members, blockrep.NodeID(r.NodeID)) {
				row.State = "UpToDate"
			}
			if r.recovering() {
				// Newest generation or not, it lacks what a crash may
				// have taken until a primary resends it.
				row.State, row.Detail = "Outdated", recoveringDetail(r.RecoveringExtents, r.RecoveringWholeVolume)
			}
			if r.NodeID == v.Primary && r.PromoteErr != "" {
				row.Detail = "promotion: " + r.PromoteErr
			}
		}
		*rows = append(*rows, row)
	}
	return serving
}

func (d *Daemon) fetchReport(ctx context.Context, cfg *ClusterConfig, nodeID uint32, volID uint64) ReplicaReport {
	n, _ := cfg.Node(nodeID)
	if nodeID == d.loaded.Identity.ID {
		return d.localReport(volID)
	}
	var rep ReplicaReport
	if err := d.peerJSON(ctx, n, "GET", "/peer/v1/volumes/"+strconv.FormatUint(volID, 10), nil, &rep, peerStatusTimeout, 1<<20); err != nil {
		rep = ReplicaReport{Error: err.Error()}
	}
	rep.Node, rep.NodeID = n.Name, nodeID
	return rep
}

// scrubVolume runs a verify or scrub on the volume's primary: here, or on
// the primary's node over the peer API.
func (d *Daemon) scrubVolume(ctx context.Context, name string, repair bool) (blockrep.ScrubReport, error) {
	var rep blockrep.ScrubReport
	err := d.onPrimary(ctx, name, "scrub", ScrubRequest{Repair: repair}, &rep, func(p *blockrep.Primary) error {
		var err error
		rep, err = p.Scrub(ctx, repair, 0)
		return err
	})
	return rep, err
}

// resolveVolume has the primary discard a replica's data.
func (d *Daemon) resolveVolume(ctx context.Context, name, discard string) error {
	cfg := d.config()
	v, ok := cfg.Volume(name)
	if !ok {
		return fmt.Errorf("no volume named %q", name)
	}
	n, ok := cfg.NodeByName(discard)
	if !ok || !slices.Contains(v.Replicas, n.ID) {
		return fmt.Errorf("no replica of %q on a node named %q", name, discard)
	}
	return d.onPrimary(ctx, name, "discard", ResolveRequest{Discard: discard}, nil, func(p *blockrep.Primary) error {
		return p.Discard(blockrep.NodeID(n.ID))
	})
}

// onPrimary runs op on the volume's primary: here when this node serves
// it, else by POST /peer/v1/volumes/{id}/{action} to the primary's node,
// whose answer is decoded into out.
func (d *Daemon) onPrimary(ctx context.Context, name, action string, req, out any, op func(*blockrep.Primary) error) error {
	cfg := d.config()
	v, ok := cfg.Volume(name)
	if !ok {
		return fmt.Errorf("no volume named %q", name)
	}
	if v.Primary == d.loaded.Identity.ID {
		p := d.vols.primaryOf(v.ID)
		if p == nil {
			return fmt.Errorf("volume %q has no serving primary on this node yet", name)
		}
		return op(p)
	}
	n, _ := cfg.Node(v.Primary)
	status, data, err := d.peerCall(ctx, n, "POST", "/peer/v1/volumes/"+strconv.FormatUint(v.ID, 10)+"/"+action, req, scrubTimeout, 4<<20)
	if err != nil {
		return fmt.Errorf("asking the primary %s: %w", n.Name, err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("primary %s: %s", n.Name, peerError(status, data))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

// peerPrimaryHandler answers another node's onPrimary: it checks the
// caller's cluster certificate, decodes the request into req and runs op
// on this node's primary of the volume; op's result is the answer.
func (d *Daemon) peerPrimaryHandler(req func() any, op func(p *blockrep.Primary, r *http.Request, req any) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "a cluster certificate is required", http.StatusUnauthorized)
			return
		}
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			http.Error(w, "bad volume id", http.StatusBadRequest)
			return
		}
		body := req()
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		p := d.vols.primaryOf(id)
		if p == nil {
			http.Error(w, "this node is not serving the volume as primary", http.StatusConflict)
			return
		}
		out, err := op(p, r, body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		writeJSONResponse(w, http.StatusOK, out)
	}
}

// peerScrubHandler runs a scrub for another node's CLI.
func (d *Daemon) peerScrubHandler() http.HandlerFunc {
	return d.peerPrimaryHandler(func() any { return &ScrubRequest{} }, func(p *blockrep.Primary, r *http.Request, req any) (any, error) {
		return p.Scrub(r.Context(), req.(*ScrubRequest).Repair, 0)
	})
}

// peerDiscardHandler runs a discard for another node's CLI.
func (d *Daemon) peerDiscardHandler() http.HandlerFunc {
	return d.peerPrimaryHandler(func() any { return &ResolveRequest{} }, func(p *blockrep.Primary, r *http.Request, req any) (any, error) {
		name := req.(*ResolveRequest).Discard
		n, ok := d.config().NodeByName(name)
		if !ok {
			return nil, fmt.Errorf("no node named %q", name)
		}
		return map[string]string{"discarding": name}, p.Discard(blockrep.NodeID(n.ID))
	})
}
