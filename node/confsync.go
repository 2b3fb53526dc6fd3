package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/paddock-io/paddock/internal/atomicfile"
	"github.com/paddock-io/paddock/node/confchange"
)

// The cluster configuration changes through node/confchange (Paxos per
// version, decided by the voters of the previous version). This file is
// its driver: one goroutine owns the state machine, persists its hard
// state before anything leaves, carries its messages to the other nodes
// over mutual TLS, and installs committed configurations.

const (
	confTickMs        = 100 // confchange's defaults assume 100 ms ticks
	confQueueLen      = 256 // bounded input queue; excess messages are dropped (the protocol retries)
	peerSendTimeout   = 2 * time.Second
	maxPeerBodyBytes  = 2 << 20
	proposeTimeout    = 40 * time.Second
	confStateFileName = "confchange.state"
	maxSendsInFlight  = 64
)

// membersOf reads votes out of configuration data (a ClusterConfig).
func membersOf(data []byte) (confchange.Votes, error) {
	var c ClusterConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, err
	}
	v := confchange.Votes{}
	for _, n := range c.Nodes {
		v[confchange.NodeID(n.ID)] = n.Votes
	}
	return v, nil
}

type proposeReq struct {
	build func(cur *ClusterConfig) (*ClusterConfig, error)
	reply chan proposeResult
}

type proposeResult struct {
	cfg *ClusterConfig
	err error
}

type confDriver struct {
	d        *Daemon
	cc       *confchange.Node
	in       chan confchange.Message
	props    chan proposeReq
	waiting  map[uint64]proposeReq
	pending  map[uint64]*ClusterConfig
	client   *http.Client
	sending  chan struct{} // bounds sends in flight; a full one drops (the protocol retries)
	statePth string
}

func loadConfState(dir DataDir, cfg *ClusterConfig) (confchange.HardState, error) {
	b, err := os.ReadFile(dir.file(confStateFileName))
	if errors.Is(err, os.ErrNotExist) {
		data, err := json.Marshal(cfg)
		if err != nil {
			return confchange.HardState{}, err
		}
		return confchange.HardState{Committed: confchange.NewConfig(cfg.Version, data)}, nil
	}
	if err != nil {
		return confchange.HardState{}, err
	}
	hs, err := confchange.DecodeHardState(b)
	if err != nil {
		return confchange.HardState{}, fmt.Errorf("%s is corrupt: %w", dir.file(confStateFileName), err)
	}
	return hs, nil
}

func newConfDriver(d *Daemon) (*confDriver, error) {
	hs, err := loadConfState(d.dir, d.loaded.Config)
	if err != nil {
		return nil, err
	}
	cc, err := confchange.New(confchange.Options{ID: confchange.NodeID(d.loaded.Identity.ID), Members: membersOf}, hs)
	if err != nil {
		return nil, err
	}
	cd := &confDriver{
		d: d, cc: cc,
		in:       make(chan confchange.Message, confQueueLen),
		props:    make(chan proposeReq),
		waiting:  map[uint64]proposeReq{},
		pending:  map[uint64]*ClusterConfig{},
		statePth: d.dir.file(confStateFileName),
		sending:  make(chan struct{}, maxSendsInFlight),
		client: &http.Client{Timeout: peerSendTimeout, Transport: &http.Transport{
			TLSClientConfig:     d.loaded.PKI.ClientTLS(),
			MaxIdleConnsPerHost: 2,
		}},
	}
	// The state machine's committed configuration wins over cluster.json
	// (which is only a readable copy): install it if they differ.
	if c := cc.Committed(); c.Version != d.loaded.Config.Version {
		if err := cd.install(c); err != nil {
			return nil, err
		}
	}
	return cd, nil
}

// run owns the state machine until ctx ends.
func (cd *confDriver) run(ctx context.Context) {
	tick := time.NewTicker(confTickMs * time.Millisecond)
	defer tick.Stop()
	for {
		var out confchange.Output
		var err error
		select {
		case <-ctx.Done():
			for _, p := range cd.waiting {
				p.reply <- proposeResult{err: errors.New("node stopping")}
			}
			return
		case <-tick.C:
			out = cd.cc.Tick()
			for id, v := range cd.d.peerVersions() {
				o, _ := cd.cc.ObservePeerVersion(confchange.NodeID(id), v)
				out = mergeOutput(out, o)
			}
		case m := <-cd.in:
			out, err = cd.cc.Step(m)
			if err != nil {
				cd.d.log.Warn("configuration message refused", "from", m.From, "err", err)
				continue
			}
		case p := <-cd.props:
			cd.propose(p, &out)
		}
		cd.handle(out)
	}
}

func mergeOutput(a, b confchange.Output) confchange.Output {
	if b.Persist != nil {
		a.Persist = b.Persist
	}
	a.Messages = append(a.Messages, b.Messages...)
	a.Applied = append(a.Applied, b.Applied...)
	a.Results = append(a.Results, b.Results...)
	return a
}

func (cd *confDriver) propose(p proposeReq, out *confchange.Output) {
	cur := cd.d.config()
	next, err := p.build(cur)
	if err == nil {
		next.Version = cur.Version + 1
		err = next.Validate()
	}
	if err == nil {
		err = cd.d.validateQuorumOptions(next)
	}
	if err != nil {
		p.reply <- proposeResult{err: err}
		return
	}
	data, err := json.Marshal(next)
	if err != nil {
		p.reply <- proposeResult{err: err}
		return
	}
	id, o, err := cd.cc.Propose(cd.d.quorate(), cur.Version, data)
	if err != nil {
		p.reply <- proposeResult{err: err}
		return
	}
	cd.waiting[id] = p
	cd.pending[id] = next
	*out = o
}

// handle carries out an Output in the order the package demands.
func (cd *confDriver) handle(out confchange.Output) {
	if out.Persist != nil {
		if err := atomicfile.Write(cd.statePth, confchange.EncodeHardState(*out.Persist), 0o600); err != nil {
			// Nothing of this output may leave unpersisted.
			cd.d.log.Error("cannot persist configuration state; dropping the step", "err", err)
			return
		}
	}
	for _, m := range out.Messages {
		select {
		case cd.sending <- struct{}{}:
			go func() {
				defer func() { <-cd.sending }()
				cd.send(m)
			}()
		default:
		}
	}
	for _, c := range out.Applied {
		if err := cd.install(c); err != nil {
			cd.d.log.Error("cannot install committed configuration", "version", c.Version, "err", err)
		}
	}
	for _, r := range out.Results {
		p, ok := cd.waiting[r.ID]
		if !ok {
			continue
		}
		delete(cd.waiting, r.ID)
		next := cd.pending[r.ID]
		delete(cd.pending, r.ID)
		switch r.Outcome {
		case confchange.Committed:
			p.reply <- proposeResult{cfg: next}
		default:
			p.reply <- proposeResult{err: fmt.Errorf("configuration change %s (version %d); retry on top of the current configuration", r.Outcome, r.Version)}
		}
	}
}

// install makes a committed configuration this node's.
func (cd *confDriver) install(c confchange.Config) error {
	var cfg ClusterConfig
	if err := json.Unmarshal(c.Data, &cfg); err != nil {
		return err
	}
	if cfg.Version != c.Version {
		return fmt.Errorf("configuration data says version %d, committed as %d", cfg.Version, c.Version)
	}
	if err := cd.d.dir.SaveConfig(&cfg); err != nil {
		return err
	}
	cd.d.applyConfig(&cfg)
	return nil
}

func (cd *confDriver) send(m confchange.Message) {
	cfg := cd.d.config()
	n, ok := cfg.Node(uint32(m.To))
	if !ok {
		return
	}
	req, err := http.NewRequest("POST", "https://"+n.ClusterAddr+"/peer/v1/confchange", bytes.NewReader(confchange.EncodeMessage(m)))
	if err != nil {
		return
	}
	resp, err := cd.client.Do(req)
	if err != nil {
		return // the protocol retries
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// deliver queues a message from a peer; a full queue drops it.
func (cd *confDriver) deliver(m confchange.Message) {
	select {
	case cd.in <- m:
	default:
	}
}

// Propose changes the configuration with build and waits for the outcome.
func (cd *confDriver) Propose(ctx context.Context, build func(cur *ClusterConfig) (*ClusterConfig, error)) (*ClusterConfig, error) {
	p := proposeReq{build: build, reply: make(chan proposeResult, 1)}
	ctx, cancel := context.WithTimeout(ctx, proposeTimeout)
	defer cancel()
	select {
	case cd.props <- p:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-p.reply:
		return r.cfg, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("configuration change: %w (it may still commit)", ctx.Err())
	}
}

// peerHandler receives confchange messages; only a node of the cluster,
// proven by its certificate, may send them, and only under its own id.
func (cd *confDriver) peerHandler(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		http.Error(w, "a cluster certificate is required", http.StatusUnauthorized)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxPeerBodyBytes))
	if err != nil {
		return
	}
	m, err := confchange.DecodeMessage(body, 0)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	name := r.TLS.VerifiedChains[0][0].Subject.CommonName
	if n, ok := cd.d.config().Node(uint32(m.From)); ok && n.Name != name {
		http.Error(w, fmt.Sprintf("certificate of %q cannot speak for node %d", name, m.From), http.StatusForbidden)
		return
	}
	cd.deliver(m)
	w.WriteHeader(http.StatusNoContent)
}
