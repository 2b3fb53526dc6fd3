package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/paddock-io/paddock/fence"
	"github.com/paddock-io/paddock/quorum/membership"
)

// Options of the daemon.
type Options struct {
	MetricsAddr string
	Logger      *slog.Logger
	// FenceInterface, when set, is where the network fence's eBPF filter
	// is attached (node/netfence.go); FenceMode is "xdp" (default) or
	// "tcx". Without it the node drops no one's packets.
	FenceInterface string
	FenceMode      string
}

// tickMs is how often the daemon re-evaluates quorum even when nothing was
// received (a lost node shows up as silence).
const tickMs = 50

// Daemon is one running node.
type Daemon struct {
	dir    DataDir
	opts   Options
	log    *slog.Logger
	hb     *membership.Transport
	mu     sync.Mutex
	loaded *Loaded
	q      *quorumEngine
	status Status
	conf   *confDriver
	tokens *tokenStore
	vols   *volumeManager
	wit    *witnessLink // the witness client, while the configuration has a witness
	nf     *netFenceState
	hist   *fence.History // fence history of a node without an HA agent (no storage address)
	// peerTr is the connection pool of peerCall (node/peercall.go).
	peerOnce sync.Once
	peerTr   *http.Transport
}

// Run starts the node of a data directory and runs until ctx ends.
func Run(ctx context.Context, dir DataDir, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	l, err := Load(dir)
	if err != nil {
		return err
	}
	inc, err := dir.NextIncarnation()
	if err != nil {
		return err
	}
	me, _ := l.Config.Node(l.Identity.ID)
	d := &Daemon{dir: dir, opts: opts, loaded: l, log: opts.Logger.With("node", me.Name)}
	// The network fence first: the blocks in force are applied before
	// this node sends or serves anything.
	if err := d.attachNetFence(); err != nil {
		return err
	}
	defer d.closeNetFence()
	if d.q, err = newQuorumEngine(l.Config, l.Identity.ID, 0); err != nil {
		return fmt.Errorf("%s: %w", dir.file("cluster.json"), err)
	}
	d.hb, err = membership.Listen(membership.Config{
		Self:        membership.NodeID(l.Identity.ID),
		ClusterTag:  l.Config.ClusterTag(),
		Key:         l.AuthKey,
		Incarnation: inc,
		TokenMs:     l.Config.TokenMs,
		IntervalMs:  l.Config.HeartbeatMs(),
		Listen:      me.ClusterAddr,
		Peers:       peersOf(l.Config),
	})
	if err != nil {
		return err
	}
	d.hb.SetConfigVersion(l.Config.Version)
	d.tokens = &tokenStore{path: dir.file(tokensFileName)}
	if d.conf, err = newConfDriver(d); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 8)
	d.wit = newWitnessLink(ctx, d, inc)
	d.vols = newVolumeManager(d)
	go func() { errc <- d.vols.run(ctx) }()
	go func() { errc <- d.hb.Run(ctx) }()
	go func() { errc <- serveControl(ctx, dir.SocketPath(), d.controlHandler()) }()
	go func() { errc <- d.servePeers(ctx, me.ClusterAddr) }()
	go d.conf.run(ctx)
	if opts.MetricsAddr != "" {
		ln, err := net.Listen("tcp", opts.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics address: %w", err)
		}
		msrv := &http.Server{Handler: d.metricsHandler(), ReadHeaderTimeout: 5 * time.Second}
		go msrv.Serve(ln)
		defer msrv.Close()
	}
	d.log.Info("node started", "cluster", l.Config.ClusterName, "id", l.Identity.ID, "cluster_addr", me.ClusterAddr,
		"token_ms", l.Config.TokenMs, "config_version", l.Config.Version, "incarnation", inc)
	d.evaluate()
	tick := time.NewTicker(tickMs * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			d.log.Info("node stopping")
			return nil
		case err := <-errc:
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
		case <-tick.C:
			d.evaluate()
		case <-d.hb.Changed():
			d.evaluate()
		}
	}
}

func peersOf(cfg *ClusterConfig) []membership.Peer {
	var out []membership.Peer
	for _, n := range cfg.Nodes {
		addr, err := net.ResolveUDPAddr("udp", n.ClusterAddr)
		if err != nil {
			continue // Validate made sure this cannot happen
		}
		out = append(out, membership.Peer{ID: membership.NodeID(n.ID), Addr: addr})
	}
	return out
}

// evaluate feeds the current membership to the quorum engine and logs what
// changed.
func (d *Daemon) evaluate() {
	members, witnessVote := d.wit.view(d.hb.NowMs(), d.hb.MembersInfo(), d.config())
	ids := make([]uint32, len(members))
	for i, m := range members {
		ids[i] = uint32(m.ID)
	}
	d.mu.Lock()
	before := d.status.Quorum
	d.q.UpdateWithWitness(d.hb.NowMs(), members, witnessVote)
	after := d.q.View(ids)
	d.status = d.buildStatus(after, ids)
	flags, expected := d.q.LocalInfo()
	d.mu.Unlock()
	d.hb.SetLocalInfo(flags, expected)
	if before.Quorate != after.Quorate || fmt.Sprint(before.Members) != fmt.Sprint(after.Members) {
		d.log.Info("membership", "members", fmt.Sprint(after.Members), "quorate", after.Quorate,
			"total_votes", after.TotalVotes, "expected_votes", after.ExpectedVotes, "quorum", after.Quorum)
	}
}

// config is the configuration this node runs now.
func (d *Daemon) config() *ClusterConfig {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.loaded.Config
}

// quorate says whether this node's partition is quorate now.
// members is a copy of this node's current membership.
func (d *Daemon) members() []uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.status.Quorum.Members)
}

func (d *Daemon) quorate() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status.Quorum.Quorate
}

// peerVersions is the configuration version each peer last announced.
func (d *Daemon) peerVersions() map[uint32]uint64 {
	out := map[uint32]uint64{}
	for _, n := range d.config().Nodes {
		if v, ok := d.hb.PeerConfigVersion(membership.NodeID(n.ID)); ok {
			out[n.ID] = v
		}
	}
	return out
}

// applyConfig switches the running node to a newly committed configuration.
func (d *Daemon) applyConfig(cfg *ClusterConfig) {
	d.mu.Lock()
	old := d.loaded.Config
	d.loaded.Config = cfg
	if err := d.q.SetConfig(cfg, d.hb.NowMs()); err != nil {
		d.log.Warn("quorum options of the committed configuration not applied now", "err", err)
	}
	d.mu.Unlock()
	d.hb.SetPeers(peersOf(cfg))
	d.hb.SetConfigVersion(cfg.Version)
	d.log.Info("configuration installed", "version", cfg.Version, "previous", old.Version, "nodes", len(cfg.Nodes))
	d.evaluate()
	if err := d.applyNetBlocks(); err != nil {
		d.log.Error("network fence: applying the configuration's blocks", "err", err)
	}
	if d.vols != nil {
		d.vols.changed()
	}
}

// servePeers serves the other nodes (configuration messages, mutual TLS)
// and joining nodes (token) on the TCP side of the cluster address.
func (d *Daemon) servePeers(ctx context.Context, addr string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /peer/v1/confchange", d.conf.peerHandler)
	mux.HandleFunc("POST /join/v1", d.joinHandler)
	mux.HandleFunc("GET /peer/v1/volumes/{id}", d.peerVolumeHandler)
	mux.HandleFunc("POST /peer/v1/volumes/{id}/scrub", d.peerScrubHandler())
	mux.HandleFunc("POST /peer/v1/volumes/{id}/discard", d.peerDiscardHandler())
	mux.HandleFunc("POST /peer/v1/netfence", d.peerNetFenceHandler)
	d.guestPeerRoutes(mux) // node/guestrecv.go: a peer asks this node to start a migration receiver
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("peer listener on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, TLSConfig: d.loaded.PKI.ServerTLS(false), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err = srv.ServeTLS(ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
