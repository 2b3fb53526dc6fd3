package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/paddock-io/paddock/blockrep"
	"github.com/paddock-io/paddock/internal/batchconn"
	"github.com/paddock-io/paddock/nbd"
	"github.com/paddock-io/paddock/quorum/witness"
)

// Timeouts of the volume service.
const (
	// routeWaitMs is how long a client request waits for the volume to
	// have a primary (one being promoted, or the configuration still
	// travelling) before it fails with EIO.
	routeWaitMs = 15000
	// reconcileMs is how often the node re-checks its volumes (retrying
	// a promotion that failed, for one).
	reconcileMs = 1000
	// forwardDialMs bounds connecting to the primary's NBD service.
	forwardDialMs = 3000
)

// volumeManager runs this node's part of every volume: its replica, the
// primary role when the configuration gives it, and the NBD export that
// serves the volume here (from the local primary, or forwarded to the
// primary's node).
type volumeManager struct {
	d   *Daemon
	log *slog.Logger
	dir string

	mu   sync.Mutex
	vols map[string]*localVolume
	wake chan struct{}

	nbd *nbd.Server
	rep *blockrep.Server
	ha  *haAgent
	// created remembers the replicas this node made (replica_record.go).
	created *replicaRecord
}

type localVolume struct {
	m          *volumeManager
	cfg        VolumeConfig
	replica    *blockrep.Replica
	primary    *blockrep.Primary
	promoting  bool
	promoteErr string
	fwd        *nbd.Client
	fwdTo      uint32
	// takeoverFrom is set when this node took the primary role over from
	// a lost node without a configuration change (the cluster could not
	// commit one: 2 nodes and a witness, say). It holds while the
	// configuration still names that node; the next committed change
	// replaces it.
	takeoverFrom uint32
	// takeoverPromoted is set once this node promoted itself under the
	// takeover. A takeover that never promoted (a 2-replica volume
	// without a witness needs both replicas for a new epoch) is dropped
	// when the node it was taken from is a member again: nothing was
	// written under it, and keeping it made the two race for the same
	// epoch, each deposing the other in turn.
	takeoverPromoted bool
	// lastScrub is when the background scrub last started here.
	lastScrub       time.Time
	scrubbing       bool
	lastScrubReport *blockrep.ScrubReport
}

func newVolumeManager(d *Daemon) *volumeManager {
	m := &volumeManager{d: d, log: d.log.With("part", "volumes"), dir: filepath.Join(d.dir.Path, "volumes"),
		vols: map[string]*localVolume{}, wake: make(chan struct{}, 1)}
	m.rep = &blockrep.Server{Self: blockrep.NodeID(d.loaded.Identity.ID), Lookup: m.lookupReplica, Logger: m.log}
	var err error
	if m.ha, err = newHAAgent(m); err != nil {
		// The configuration's token timeout was validated; a lease that
		// cannot be built from it is a bug.
		panic(err)
	}
	return m
}

// run serves NBD and replication on the storage address and keeps the
// volumes in line with the configuration until ctx ends.
func (m *volumeManager) run(ctx context.Context) error {
	me, _ := m.d.config().Node(m.d.loaded.Identity.ID)
	if me.StorageAddr == "" {
		m.log.Info("no storage address: this node serves no volumes")
		return nil
	}
	var err error
	if m.created, err = loadReplicaRecord(filepath.Join(m.d.dir.Path, "replicas-created.json")); err != nil {
		return fmt.Errorf("the record of this node's replicas: %w", err)
	}
	m.nbd, err = nbd.NewServer(nbd.Config{Exports: m, Logger: m.log})
	if err != nil {
		return err
	}
	nln, err := net.Listen("tcp", me.StorageAddr)
	if err != nil {
		return fmt.Errorf("NBD listener on the storage address %s: %w", me.StorageAddr, err)
	}
	raddr, err := replicationAddr(me)
	if err != nil {
		return err
	}
	rln, err := net.Listen("tcp", raddr)
	if err != nil {
		nln.Close()
		return fmt.Errorf("replication listener on %s (storage port + 1): %w", raddr, err)
	}
	go m.nbd.Serve(nln)
	go m.serveReplication(ctx, rln)
	go m.ha.run(ctx)
	m.log.Info("serving volumes", "nbd", me.StorageAddr, "replication", raddr)
	t := time.NewTicker(reconcileMs * time.Millisecond)
	defer t.Stop()
	for {
		m.reconcile(ctx)
		select {
		case <-ctx.Done():
			rln.Close()
			m.nbd.Close()
			m.closeAll()
			return nil
		case <-t.C:
		case <-m.wake:
		}
	}
}

// changed asks for a reconcile soon (a new configuration).
func (m *volumeManager) changed() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *volumeManager) replicaDir(v VolumeConfig) string {
	return filepath.Join(m.dir, strconv.FormatUint(v.ID, 10))
}

// reconcile opens, promotes, demotes and removes to match the
// configuration.
func (m *volumeManager) reconcile(ctx context.Context) {
	cfg := m.d.config()
	self := m.d.loaded.Identity.ID
	quorate := m.d.quorate()
	members := m.d.members()
	// Asked before m.mu is taken: the HA agent holds its own lock while
	// it calls into the volume manager (tookOver), so asking it under
	// m.mu would be a lock-order inversion (it deadlocked a node).
	mayPromote := m.ha.mayPromote()
	// A node whose configuration is older than one a peer announces does
	// not promote on it: a node back from a fence (or a long partition)
	// still named primary in its old configuration promoted itself and
	// deposed the serving primary before it installed the new one (found
	// by the network-fence test in CI).
	var newerVersion uint64
	for _, v := range m.d.peerVersions() {
		newerVersion = max(newerVersion, v)
	}
	behind := newerVersion > cfg.Version
	want := map[string]VolumeConfig{}
	for _, v := range cfg.Volumes {
		want[v.Name] = v
	}
	// Primaries are closed after the lock is released: Close drains the
	// writes in flight, and route (every client request) needs the lock.
	var toClose, toStepDown []*blockrep.Primary
	defer func() {
		for _, p := range toClose {
			p.Close()
		}
		// A planned move: the primary releases its epoch so the node
		// taking over need not wait out its read lease (blockrep's
		// epoch.go, rule 5).
		for _, p := range toStepDown {
			p.StepDown()
		}
	}()
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, lv := range m.vols {
		if v, ok := want[name]; !ok || v.ID != lv.cfg.ID {
			m.log.Info("volume removed from the configuration; deleting this node's replica", "volume", name)
			m.closeVolume(lv)
			if lv.replica != nil {
				if err := os.RemoveAll(m.replicaDir(lv.cfg)); err == nil {
					if err := m.created.remove(lv.cfg.ID); err != nil {
						m.log.Warn("cannot update the record of this node's replicas", "err", err)
					}
				}
			}
			delete(m.vols, name)
		}
	}
	for _, v := range cfg.Volumes {
		lv := m.vols[v.Name]
		if lv == nil {
			lv = &localVolume{m: m, cfg: v}
			m.vols[v.Name] = lv
		}
		if lv.takeoverFrom != 0 && v.Primary != lv.takeoverFrom {
			lv.takeoverFrom, lv.takeoverPromoted = 0, false
		}
		m.dropUnpromotedTakeover(lv, members)
		lv.cfg = v
		if lv.takeoverFrom != 0 {
			v.Primary = self // the effective primary, here
		}
		holds := slices.Contains(v.Replicas, self)
		if holds && lv.replica == nil {
			dir := m.replicaDir(v)
			blank := !blockrep.ReplicaExists(dir) && m.created.created(v.ID)
			if blank {
				m.log.Warn("this node held a replica of the volume and its directory is gone: it is created again blank and rebuilt in full from the primary", "volume", v.Name, "dir", dir)
			}
			if err := m.created.add(v.ID); err != nil {
				m.log.Error("cannot record this node's replica; not creating it", "volume", v.Name, "err", err)
				continue
			}
			r, err := blockrep.OpenReplica(dir, blockrep.ReplicaOptions{
				Self: blockrep.NodeID(self), VolumeID: v.ID, SizeBytes: v.SizeBytes, Members: replicaIDs(v), Blank: blank})
			if err != nil {
				m.log.Error("cannot open this node's replica", "volume", v.Name, "err", err)
				continue
			}
			lv.replica = r
		}
		if lv.fwd != nil && lv.fwdTo != v.Primary {
			lv.fwd.Abort()
			lv.fwd = nil
		}
		switch {
		case v.Primary != self && lv.primary != nil:
			m.log.Info("primary role moved to another node; stepping down", "volume", v.Name, "to", v.Primary)
			toStepDown = append(toStepDown, lv.primary)
			lv.primary = nil
		case v.Primary == self && lv.primary != nil && lv.primary.Deposed() != nil:
			// A newer epoch exists (another node promoted by hand
			// or a fence): try again, with a higher epoch.
			toClose = append(toClose, lv.primary)
			lv.primary = nil
		case v.Primary == self && lv.primary != nil && !lv.scrubbing:
			every := time.Duration(v.ScrubIntervalHours) * time.Hour
			if every == 0 {
				every = DefaultScrubIntervalHours * time.Hour
			}
			if lv.lastScrub.IsZero() {
				lv.lastScrub = time.Now() // the first one an interval after promotion
			} else if time.Since(lv.lastScrub) > every {
				lv.scrubbing, lv.lastScrub = true, time.Now()
				go m.backgroundScrub(ctx, lv, lv.primary)
			}
		case v.Primary == self && lv.primary == nil && !lv.promoting && lv.replica != nil:
			if !quorate {
				lv.promoteErr = "this node's partition is not quorate: it does not promote"
				continue
			}
			if behind {
				lv.promoteErr = fmt.Sprintf("this node's configuration (version %d) is older than a member's (%d): it does not promote before it has caught up", cfg.Version, newerVersion)
				continue
			}
			if !mayPromote {
				lv.promoteErr = "this node's lease is not held yet (it was inquorate or paused): it does not promote"
				if cfg.netBlockedID(self) {
					lv.promoteErr = "this node is network-fenced: it does not promote (paddock unfence it)"
				}
				continue
			}
			lv.promoting = true
			go m.promote(ctx, v)
		}
	}
}

// awaitReleaseMs bounds a planned promotion's wait for the serving
// primary's release; past it the promotion goes on and waits out the
// read lease instead (about 600 ms).
const awaitReleaseMs = 300

func (m *volumeManager) promote(ctx context.Context, v VolumeConfig) {
	m.mu.Lock()
	lv := m.vols[v.Name]
	r := lv.replica
	m.mu.Unlock()
	var witnessDial func(context.Context) (net.Conn, error)
	if w := m.d.config().Quorum.Witness; w != nil && len(v.Replicas) == 2 {
		witnessDial = m.dialWitness(w.Addr)
	}
	// A planned move (every replica's node is a member, so the one
	// serving now is up and steps down as the configuration changes):
	// wait a little for its release rather than its whole read lease. A
	// failover (a replica's node is away) does not wait.
	var awaitRelease time.Duration
	members := m.d.members()
	if !slices.ContainsFunc(v.Replicas, func(id uint32) bool { return !slices.Contains(members, id) }) {
		awaitRelease = awaitReleaseMs * time.Millisecond
	}
	p, err := blockrep.Promote(ctx, blockrep.PrimaryConfig{
		LeaseOK:      m.ha.leaseOK,
		AwaitRelease: awaitRelease,
		WitnessDial:  witnessDial,
		Self:         blockrep.NodeID(m.d.loaded.Identity.ID), VolumeID: v.ID, Replicas: replicaIDs(v), Local: r,
		Dial: m.dialPeer, RegionBytes: v.RegionBytes, OnNoQuorum: blockrep.OnNoQuorum(v.OnNoQuorum),
		WriteQuorum: v.WriteQuorum, Logger: m.log.With("volume_name", v.Name),
		ResyncMaxBytesPerSecond: v.ResyncMaxBytesPerSecond, ResyncMinBytesPerSecond: v.ResyncMinBytesPerSecond,
	})
	// The lease may have run out while the promotion ran (it can fetch
	// a recovering replica's extents): asked again before the primary
	// is installed, and before m.mu (lock order, as in reconcile).
	if err == nil && !m.ha.mayPromote() {
		p.Close()
		err = errors.New("this node's self-fence lease ran out during the promotion")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	lv.promoting = false
	if err != nil {
		lv.promoteErr = err.Error()
		m.log.Warn("promotion failed; retrying", "volume", v.Name, "err", err)
		return
	}
	cur, ok := m.vols[v.Name]
	if !ok || cur != lv || lv.effectivePrimary() != m.d.loaded.Identity.ID {
		p.Close()
		return
	}
	lv.primary, lv.promoteErr = p, ""
	if lv.takeoverFrom != 0 {
		lv.takeoverPromoted = true
	}
}

func (m *volumeManager) closeVolume(lv *localVolume) {
	if lv.primary != nil {
		lv.primary.Close()
		lv.primary = nil
	}
	if lv.fwd != nil {
		lv.fwd.Abort()
		lv.fwd = nil
	}
	if lv.replica != nil {
		lv.replica.Close()
	}
}

func (m *volumeManager) closeAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, lv := range m.vols {
		m.closeVolume(lv)
	}
}

func (m *volumeManager) lookupReplica(id uint64) blockrep.Handler {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, lv := range m.vols {
		if lv.cfg.ID == id && lv.replica != nil {
			return lv.replica // never a nil *Replica inside a non-nil Handler
		}
	}
	return nil
}

// serveReplication accepts peers on the replication address: mutual TLS
// with the cluster CA, the certificate's name says which node it is.
func (m *volumeManager) serveReplication(ctx context.Context, ln net.Listener) {
	tcfg := m.d.loaded.PKI.ServerTLS(true)
	for {
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			// batchconn below TLS: a frame's records go out in one
			// write and come in through one buffer (internal/batchconn).
			conn := tls.Server(batchconn.Wrap(raw, 0), tcfg)
			hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := conn.HandshakeContext(hctx)
			cancel()
			if err != nil {
				m.log.Warn("replication connection refused", "remote", raw.RemoteAddr(), "err", err)
				raw.Close()
				return
			}
			name := conn.ConnectionState().VerifiedChains[0][0].Subject.CommonName
			n, ok := m.d.config().NodeByName(name)
			if !ok {
				m.log.Warn("replication connection from a node not in the configuration", "name", name)
				conn.Close()
				return
			}
			m.rep.ServeConn(ctx, conn, blockrep.NodeID(n.ID))
		}()
	}
}

// releaseFenced tells the volume's voters that node holder was fenced
// (see blockrep.ReleaseFenced); it returns how many took it. Call it only
// once holder surely serves nothing: its power verified off (a lease
// counted over is not enough: see fence/lease.go, assumption 2).
func (m *volumeManager) releaseFenced(ctx context.Context, v VolumeConfig, holder uint32) int {
	self := m.d.loaded.Identity.ID
	dials := map[blockrep.NodeID]func(context.Context) (net.Conn, error){}
	for _, id := range v.Replicas {
		if id == self || id == holder {
			continue
		}
		dials[blockrep.NodeID(id)] = func(ctx context.Context) (net.Conn, error) { return m.dialPeer(ctx, blockrep.NodeID(id)) }
	}
	if w := m.d.config().Quorum.Witness; w != nil && len(v.Replicas) == 2 {
		dials[blockrep.WitnessID] = m.dialWitness(w.Addr)
	}
	m.mu.Lock()
	var local *blockrep.Replica
	if lv := m.vols[v.Name]; lv != nil {
		local = lv.replica
	}
	m.mu.Unlock()
	return blockrep.ReleaseFenced(ctx, blockrep.NodeID(self), v.ID, blockrep.NodeID(holder), local, dials)
}

// dialPeer connects to a peer's replication service and checks that the
// certificate on the other end is that node's.
func (m *volumeManager) dialPeer(ctx context.Context, peer blockrep.NodeID) (net.Conn, error) {
	n, ok := m.d.config().Node(uint32(peer))
	if !ok {
		return nil, fmt.Errorf("node %d is not in the configuration", peer)
	}
	addr, err := replicationAddr(n)
	if err != nil {
		return nil, err
	}
	pki := m.d.loaded.PKI
	roots := x509.NewCertPool()
	roots.AddCert(pki.CACert)
	tcfg := &tls.Config{
		Certificates: []tls.Certificate{pki.NodeCert}, MinVersion: tls.VersionTLS13,
		// The storage address need not be in the certificate (it
		// names the cluster address): verify the chain and the node
		// name instead of the host.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no certificate")
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				return err
			}
			if leaf.Subject.CommonName != n.Name {
				return fmt.Errorf("certificate of %q where node %q was expected", leaf.Subject.CommonName, n.Name)
			}
			return nil
		},
	}
	var nd net.Dialer
	raw, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(batchconn.Wrap(raw, 0), tcfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return conn, nil
}

// Lookup implements nbd.Exports: every volume of the cluster is served
// on every node.
func (m *volumeManager) Lookup(name string) (*nbd.Export, bool) {
	vol, forwarded := strings.CutPrefix(name, forwardedExportPrefix)
	v, ok := m.d.config().Volume(vol)
	if !ok {
		return nil, false
	}
	return &nbd.Export{Name: name, Description: fmt.Sprintf("paddock volume %s (%d replicas)", v.Name, len(v.Replicas)),
		Backend: &volumeBackend{m: m, name: v.Name, size: v.SizeBytes, forwarded: forwarded}}, true
}

// forwardedExportPrefix marks the export name a node's forwarder asks
// the primary's node for ("paddock-forwarded/NAME"; a volume name has no
// "/"). Requests on such a connection are served only by the primary
// object that served the connection's first request, never forwarded
// again: a request that waited in a paused or cut-off node's socket
// while the forwarder retried it elsewhere (and acknowledged it) would
// otherwise be forwarded later to the new primary and overwrite newer
// acknowledged writes (found by the history campaign). Any client may
// use the name; it only narrows what the node does for it.
const forwardedExportPrefix = "paddock-forwarded/"

// Names implements nbd.Exports.
func (m *volumeManager) Names() []string {
	var out []string
	for _, v := range m.d.config().Volumes {
		out = append(out, v.Name)
	}
	sort.Strings(out)
	return out
}

// route finds where a volume's I/O goes: the local primary, or a client
// of the primary's node. It waits (bounded) while there is neither.
func (m *volumeManager) route(name string) (*blockrep.Primary, *nbd.Client, uint32, error) {
	deadline := time.Now().Add(routeWaitMs * time.Millisecond)
	for {
		p, c, to, err, retry := m.tryRoute(name)
		if !retry || time.Now().After(deadline) {
			if err != nil {
				err = fmt.Errorf("%w: volume %s: %v", syscall.EIO, name, err)
			}
			return p, c, to, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// localPrimary is this node's primary of the volume: when this node is
// the volume's primary it waits up to routeWaitMs for a promotion under
// way; nil when it is not, or still not.
func (m *volumeManager) localPrimary(name string) *blockrep.Primary {
	self := m.d.loaded.Identity.ID
	deadline := time.Now().Add(routeWaitMs * time.Millisecond)
	for {
		m.mu.Lock()
		lv := m.vols[name]
		var p *blockrep.Primary
		mine := lv != nil && lv.effectivePrimary() == self
		if mine {
			p = lv.primary
		}
		m.mu.Unlock()
		if p != nil || !mine || time.Now().After(deadline) {
			return p
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tryRoute finds who serves a request: this node's primary, or a
// forwarding client and the node it reaches.
func (m *volumeManager) tryRoute(name string) (*blockrep.Primary, *nbd.Client, uint32, error, bool) {
	self := m.d.loaded.Identity.ID
	m.mu.Lock()
	lv := m.vols[name]
	if lv == nil {
		m.mu.Unlock()
		return nil, nil, 0, errors.New("not open on this node yet"), true
	}
	if lv.effectivePrimary() == self {
		p, why := lv.primary, lv.promoteErr
		m.mu.Unlock()
		if p == nil {
			if why == "" {
				why = "being promoted"
			}
			return nil, nil, 0, errors.New(why), true
		}
		return p, nil, 0, nil, false
	}
	if lv.fwd != nil {
		c, to := lv.fwd, lv.fwdTo
		m.mu.Unlock()
		return nil, c, to, nil, false
	}
	target := lv.effectivePrimary()
	m.mu.Unlock()
	n, ok := m.d.config().Node(target)
	if !ok {
		return nil, nil, 0, fmt.Errorf("primary node %d is not in the configuration", target), true
	}
	c, err := nbd.Dial("tcp", n.StorageAddr, nbd.ClientOptions{Export: forwardedExportPrefix + name, Timeout: forwardDialMs * time.Millisecond})
	if err != nil {
		return nil, nil, 0, fmt.Errorf("forwarding to the primary %s (%s): %v", n.Name, n.StorageAddr, err), true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if lv.fwd != nil || lv.effectivePrimary() != target {
		c.Abort()
		return nil, nil, 0, errors.New("route changed"), true
	}
	lv.fwd, lv.fwdTo = c, target
	return nil, c, target, nil, false
}

// dropForward forgets a forwarding client that failed, so the next
// request reconnects (perhaps to a new primary).
func (m *volumeManager) dropForward(name string, c *nbd.Client) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if lv := m.vols[name]; lv != nil && lv.fwd == c {
		lv.fwd = nil
		c.Abort()
	}
}

// volumeBackend is one volume's NBD backend on this node, for one client
// connection.
type volumeBackend struct {
	m    *volumeManager
	name string
	size int64
	// forwarded: the connection comes from another node's forwarder
	// (forwardedExportPrefix); bound is the primary that served its
	// first request, the only one that may serve the others.
	forwarded bool
	boundMu   sync.Mutex
	bound     *blockrep.Primary
}

func (b *volumeBackend) Size() int64 { return b.size }

func (b *volumeBackend) Features() nbd.Features {
	return nbd.Features{CanTrim: true, CanZero: true, CanMultiConn: true}
}

func (b *volumeBackend) Cache(off, length int64) error { return nil }

// do runs one request locally or forwarded; a forwarded request that
// fails on the connection (not with an NBD error) is retried once on a
// fresh route: the primary may have moved.
func (b *volumeBackend) do(mutates bool, local func(*blockrep.Primary) error, remote func(*nbd.Client) error) error {
	if b.forwarded {
		return b.serveForwarded(b.m.localPrimary(b.name), local)
	}
	var failedTo uint32
	for attempt := 0; ; attempt++ {
		p, c, to, err := b.m.route(b.name)
		if err != nil {
			return err
		}
		if p != nil {
			return local(p)
		}
		// A write is sent again only to another node than the one that
		// failed: the first copy may still be applied by that node
		// later (it sat in its socket), and after this retry is
		// acknowledged that would undo newer writes. Another node
		// serves only under a newer epoch, which the first copy can no
		// longer get accepted under, and the failed node does not
		// forward it (forwardedExportPrefix). A read or flush may go
		// again anywhere.
		if attempt > 0 && mutates && to == failedTo {
			return fmt.Errorf("%w: forwarding to node %d failed; the write's outcome is unknown", syscall.EIO, to)
		}
		err = remote(c)
		var ne *nbd.Error
		if errors.As(err, &ne) && ne.Errno == nbd.ESHUTDOWN && attempt == 0 {
			// The primary's node did not run it (serveForwarded): the
			// connection is stale; any request may go again, even to
			// the same node.
			b.m.dropForward(b.name, c)
			continue
		}
		if errors.As(err, &ne) {
			return syscall.Errno(ne.Errno)
		}
		if err == nil || attempt == 1 {
			if err != nil {
				err = fmt.Errorf("%w: forwarding: %v", syscall.EIO, err)
			}
			return err
		}
		failedTo = to
		b.m.dropForward(b.name, c)
	}
}

// serveForwarded serves a forwarded connection's request: only here,
// only by the primary that served its first request.
func (b *volumeBackend) serveForwarded(p *blockrep.Primary, local func(*blockrep.Primary) error) error {
	// Refusals here say ESHUTDOWN: the request did not run, and the
	// forwarder may send it again on a new connection.
	if p == nil {
		return fmt.Errorf("%w: volume %s: this node is not its primary; a forwarded request is not forwarded again", syscall.ESHUTDOWN, b.name)
	}
	b.boundMu.Lock()
	if b.bound == nil {
		b.bound = p
	}
	same := b.bound == p
	b.boundMu.Unlock()
	if !same {
		return fmt.Errorf("%w: volume %s: the primary changed on this node since the forwarding connection began; the forwarder reconnects", syscall.ESHUTDOWN, b.name)
	}
	return local(p)
}

func fuaFlag(fua bool) uint16 {
	if fua {
		return nbd.CmdFlagFUA
	}
	return 0
}

func (b *volumeBackend) ReadAt(p []byte, off int64) error {
	return b.do(false, func(pr *blockrep.Primary) error { return pr.ReadAt(p, off) },
		func(c *nbd.Client) error { return c.ReadAt(p, off) })
}

func (b *volumeBackend) WriteAt(p []byte, off int64, fua bool) error {
	return b.do(true, func(pr *blockrep.Primary) error { return pr.WriteAt(p, off, fua) },
		func(c *nbd.Client) error { return c.WriteAt(p, off, fuaFlag(fua)) })
}

func (b *volumeBackend) Flush() error {
	return b.do(false, func(pr *blockrep.Primary) error { return pr.Flush() },
		func(c *nbd.Client) error { return c.Flush() })
}

func (b *volumeBackend) Trim(off, length int64, fua bool) error {
	return b.do(true, func(pr *blockrep.Primary) error { return pr.Trim(off, length, fua) },
		func(c *nbd.Client) error { return c.Trim(off, length, fuaFlag(fua)) })
}

func (b *volumeBackend) Zero(off, length int64, noHole, fast, fua bool) error {
	return b.do(true, func(pr *blockrep.Primary) error { return pr.Zero(off, length, noHole, fast, fua) },
		func(c *nbd.Client) error { return c.Zero(off, length, fuaFlag(fua)) })
}

// primaryOf is the local primary of a volume, or nil.
func (m *volumeManager) primaryOf(id uint64) *blockrep.Primary {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, lv := range m.vols {
		if lv.cfg.ID == id {
			return lv.primary
		}
	}
	return nil
}

// backgroundScrub scrubs and repairs at a limited rate.
func (m *volumeManager) backgroundScrub(ctx context.Context, lv *localVolume, p *blockrep.Primary) {
	rep, err := p.Scrub(ctx, true, backgroundScrubBytesPerSec)
	m.mu.Lock()
	lv.scrubbing = false
	lv.lastScrubReport = &rep
	m.mu.Unlock()
	switch {
	case err != nil:
		m.log.Warn("background scrub stopped", "volume", lv.cfg.Name, "err", err)
	case !rep.Clean():
		m.log.Warn("background scrub found and repaired damage", "volume", lv.cfg.Name, "report", fmt.Sprintf("%+v", rep.Nodes))
	default:
		m.log.Info("background scrub clean", "volume", lv.cfg.Name, "bytes", rep.BytesScanned, "seconds", rep.Seconds)
	}
}

// dialWitness reaches the witness's volume vote: the port after its
// quorum vote, the same mutual TLS.
func (m *volumeManager) dialWitness(addr string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, err
		}
		pki, cfg := m.d.loaded.PKI, m.d.config()
		d := tls.Dialer{Config: witness.ClientTLS(pki.CACert, pki.NodeCert, cfg.ClusterID)}
		return d.DialContext(ctx, "tcp", netip.AddrPortFrom(ap.Addr(), ap.Port()+1).String())
	}
}

// effectivePrimary is the node serving the volume as this node knows it:
// the configured primary, or this node after a takeover.
func (lv *localVolume) effectivePrimary() uint32 {
	if lv.takeoverFrom != 0 {
		return lv.m.d.loaded.Identity.ID
	}
	return lv.cfg.Primary
}

// takeOver makes this node the volume's primary without a configuration
// change (see localVolume.takeoverFrom).
func (m *volumeManager) takeOver(name string, from uint32) {
	m.mu.Lock()
	if lv := m.vols[name]; lv != nil && lv.cfg.Primary == from {
		lv.takeoverFrom, lv.takeoverPromoted = from, false
		m.log.Warn("taking the primary role over without a configuration change (the cluster cannot commit one now)", "volume", name, "from", from)
	}
	m.mu.Unlock()
	m.changed()
}

// tookOver says whether this node serves the volume by a takeover. It
// drops a takeover that never promoted first (see takeoverPromoted), so
// the HA agent does not record in the configuration a takeover that
// wrote nothing while the node it was taken from may already be primary
// again.
func (m *volumeManager) tookOver(name string) bool {
	members := m.d.members()
	m.mu.Lock()
	defer m.mu.Unlock()
	lv := m.vols[name]
	if lv == nil {
		return false
	}
	m.dropUnpromotedTakeover(lv, members)
	return lv.takeoverFrom != 0
}

// dropUnpromotedTakeover ends a takeover that never promoted once the
// node it was taken from is a member again. Called with m.mu held.
func (m *volumeManager) dropUnpromotedTakeover(lv *localVolume, members []uint32) {
	if lv.takeoverFrom != 0 && !lv.takeoverPromoted && lv.primary == nil && slices.Contains(members, lv.takeoverFrom) {
		m.log.Warn("the node the primary role was taken from is back before this node could promote; the takeover is dropped", "volume", lv.cfg.Name, "from", lv.takeoverFrom)
		lv.takeoverFrom = 0
	}
}
