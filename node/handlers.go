package node

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ExpectedRequest is the body of POST /v1/expected.
type ExpectedRequest struct {
	Votes uint32 `json:"votes"`
}

// ExpectedReply says what changed and warns.
type ExpectedReply struct {
	Warning string     `json:"warning"`
	Quorum  QuorumView `json:"quorum"`
}

func (d *Daemon) controlHandler() http.Handler {
	mux := http.NewServeMux()
	d.volumeHandlers(mux) // node/volume_handlers.go
	// Guest receivers (node/guestrecv.go).
	mux.HandleFunc("POST /v1/guests/receive", d.guestReceiveHandler)
	mux.HandleFunc("GET /v1/guests", d.guestListHandler)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		s := d.status
		d.mu.Unlock()
		s.Fencing = d.fencingStatus()
		s.Lease = d.leaseStatus()
		writeJSONResponse(w, http.StatusOK, s)
	})
	mux.HandleFunc("POST /v1/expected", func(w http.ResponseWriter, r *http.Request) {
		var req ExpectedRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		d.mu.Lock()
		warning, err := d.q.SetExpected(d.hb.NowMs(), req.Votes)
		v := d.q.View(d.status.Quorum.Members)
		d.mu.Unlock()
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		d.log.Warn("expected votes set by hand", "votes", req.Votes)
		d.evaluate()
		writeJSONResponse(w, http.StatusOK, ExpectedReply{Warning: warning, Quorum: v})
	})
	mux.HandleFunc("POST /v1/tokens", func(w http.ResponseWriter, r *http.Request) {
		tok, exp, err := d.tokens.issue(Fingerprint(d.loaded.PKI.CACert))
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		me, _ := d.config().Node(d.loaded.Identity.ID)
		writeJSONResponse(w, http.StatusOK, TokenReply{Token: tok, ExpiresAt: exp, JoinAddr: me.ClusterAddr})
	})
	mux.HandleFunc("POST /v1/nodes/remove", func(w http.ResponseWriter, r *http.Request) {
		var req RemoveRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		cfg, err := d.conf.Propose(r.Context(), func(cur *ClusterConfig) (*ClusterConfig, error) {
			n, ok := cur.NodeByName(req.Name)
			if !ok {
				return nil, fmt.Errorf("no node named %q in the cluster", req.Name)
			}
			if n.ID == d.loaded.Identity.ID {
				return nil, fmt.Errorf("a node cannot remove itself; run this on another node")
			}
			next := cloneConfig(cur)
			next.Nodes = slices.DeleteFunc(next.Nodes, func(x NodeConfig) bool { return x.ID == n.ID })
			return next, nil
		})
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSONResponse(w, http.StatusOK, cfg)
	})
	mux.HandleFunc("POST /v1/quorum-options", func(w http.ResponseWriter, r *http.Request) {
		var req QuorumOptions
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		cfg, err := d.conf.Propose(r.Context(), func(cur *ClusterConfig) (*ClusterConfig, error) {
			next := cloneConfig(cur)
			next.Quorum = req
			return next, nil
		})
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSONResponse(w, http.StatusOK, cfg)
	})
	return controlMux{Handler: mux, d: d}
}

// TokenReply carries a join token.
type TokenReply struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	JoinAddr  string    `json:"join_addr"`
}

// RemoveRequest names the node to remove.
type RemoveRequest struct {
	Name string `json:"name"`
}

func (d *Daemon) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	view := func(f func(s *Status) float64) func() float64 {
		return func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			return f(&d.status)
		}
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	gauges := []struct {
		name, help string
		f          func(s *Status) float64
	}{
		{"paddock_quorate", "1 when this node's partition is quorate.", func(s *Status) float64 { return b2f(s.Quorum.Quorate) }},
		{"paddock_quorum_votes", "Votes needed for quorum.", func(s *Status) float64 { return float64(s.Quorum.Quorum) }},
		{"paddock_total_votes", "Votes of the nodes in this node's membership.", func(s *Status) float64 { return float64(s.Quorum.TotalVotes) }},
		{"paddock_expected_votes", "Expected votes.", func(s *Status) float64 { return float64(s.Quorum.ExpectedVotes) }},
		{"paddock_members", "Nodes in this node's membership.", func(s *Status) float64 { return float64(s.Nodes) }},
		{"paddock_config_version", "Version of the cluster configuration this node runs.", func(s *Status) float64 { return float64(s.ConfigVersion) }},
		{"paddock_witness_connected", "1 when this node is connected to the witness (0 also when none is configured).", func(s *Status) float64 { return b2f(s.Witness != nil && s.Witness.Connected) }},
		{"paddock_witness_vote", "1 when the witness's vote counts on this node now.", func(s *Status) float64 { return b2f(s.Quorum.Witness != nil && s.Quorum.Witness.Vote) }},
	}
	for _, g := range gauges {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: g.name, Help: g.help}, view(g.f)))
	}
	counters := []struct {
		name, help string
		f          func() int64
	}{
		{"paddock_heartbeats_sent_total", "Heartbeats sent.", d.hb.Stats.Sent.Load},
		{"paddock_heartbeats_accepted_total", "Heartbeats accepted.", d.hb.Stats.Accepted.Load},
		{"paddock_heartbeats_forged_total", "Heartbeats dropped: authentication or framing failed.", d.hb.Stats.Forged.Load},
		{"paddock_heartbeats_replayed_total", "Heartbeats dropped: replayed or stale.", d.hb.Stats.Replayed.Load},
		{"paddock_heartbeats_foreign_total", "Heartbeats dropped: other cluster or unknown node.", d.hb.Stats.Foreign.Load},
	}
	for _, c := range counters {
		f := c.f
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help}, func() float64 { return float64(f()) }))
	}
	reg.MustRegister(&fenceCollector{d: d})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// fenceCollector exports the fence history's counters, the number of
// fenced nodes and the network filter's drops, read at scrape time.
type fenceCollector struct{ d *Daemon }

var (
	fenceTotalDesc = prometheus.NewDesc("paddock_fence_total",
		"Fence attempts made or recorded by this node, by method (agent, storage, network, lease) and result (ok, failed, timeout, skipped).",
		[]string{"method", "result"}, nil)
	fencedNodesDesc = prometheus.NewDesc("paddock_fenced_nodes",
		"Nodes fenced now: network-fenced in the configuration, or power-fenced by this node and not back.", nil, nil)
	netfenceDroppedDesc = prometheus.NewDesc("paddock_netfence_dropped_packets_total",
		"Packets dropped by this node's network fence filter since it was attached (0 without --fence-interface).", nil, nil)
)

func (c *fenceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- fenceTotalDesc
	ch <- fencedNodesDesc
	ch <- netfenceDroppedDesc
}

func (c *fenceCollector) Collect(ch chan<- prometheus.Metric) {
	fs := c.d.fencingStatus()
	for _, k := range fs.Counts {
		ch <- prometheus.MustNewConstMetric(fenceTotalDesc, prometheus.CounterValue, float64(k.Count), string(k.Method), string(k.Result))
	}
	var fenced int
	for _, n := range fs.Nodes {
		if n.Fenced {
			fenced++
		}
	}
	ch <- prometheus.MustNewConstMetric(fencedNodesDesc, prometheus.GaugeValue, float64(fenced))
	var dropped uint64
	if fs.Filter != nil {
		dropped = fs.Filter.DroppedPackets
	}
	ch <- prometheus.MustNewConstMetric(netfenceDroppedDesc, prometheus.CounterValue, float64(dropped))
}
