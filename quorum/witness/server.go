package witness

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/paddock-io/paddock/quorum"
)

// Limits of the server.
const (
	// MaxConns bounds open connections, handshakes included: two per
	// node of the largest cluster (a restarted node's new connection
	// arrives before the witness gives up on the old one).
	MaxConns = 2 * quorum.MaxNodes
	// HandshakeTimeoutMs bounds the TLS handshake and the Hello.
	HandshakeTimeoutMs = 5000
	// WriteTimeoutMs bounds one frame write; a node that does not read
	// is dropped.
	WriteTimeoutMs = 2000
	// IdleTimeoutMs closes a connection silent this long (a node reports
	// every few hundred ms); it only frees the slot: a node silent for
	// more than its lease has no say in decisions long before.
	IdleTimeoutMs = 30_000
	// sendQueue bounds the verdicts queued for one node.
	sendQueue = 16
)

// Server is "paddock witness": it accepts nodes' connections, runs the
// pure quorum.Arbiter over the nodes whose reports are fresh, and
// answers each with a Verdict with a lease.
//
// Rules it adds around the Arbiter, all for safety:
//   - A report older than the lease it asked for no longer counts: such a
//     node is treated as gone (its own lease has run out by then).
//   - A node on an older configuration than the newest reported gets no
//     vote; the newest configuration is the one arbitrated with.
//   - Active (the Arbiter's memory) is written to disk and fsynced before
//     a grant that changed it is sent.
//   - No grant while a node outside the winning partition may still hold
//     an unexpired lease for a disjoint membership: the witness waits for
//     that lease to run out (it could otherwise make two disjoint
//     partitions quorate at once, e.g. with lms votes). A node keeps its
//     grant for the old view while its daemon holds a membership change
//     back, so a newer report does not end a lease; only time does.
//   - After a restart, no grant for MaxLeaseMs (persisted): leases of the
//     previous life are unknown.
//   - While the reports disagree (Decision.Unstable) nothing is answered:
//     the nodes are in the middle of a membership change and wait.
type Server struct {
	dir   *Dir
	log   *slog.Logger
	start time.Time

	mu           sync.Mutex
	state        State
	arb          *quorum.Arbiter
	arbErr       string
	conns        int
	clients      map[quorum.NodeID]*serverConn
	leases       map[quorum.NodeID]lease
	quietUntilMs int64
	retry        *time.Timer
	closed       bool // Serve is over: no more decisions or writes
}

type lease struct {
	membership []quorum.NodeID
	untilMs    int64 // witness clock
}

type serverConn struct {
	id          quorum.NodeID
	name        string
	incarnation uint64
	tc          *tls.Conn
	out         chan *Envelope
	closeOnce   sync.Once
	report      *Report
	reportAtMs  int64
	// sent is the last verdict sent, to send others only on change.
	sent *Verdict
}

func (c *serverConn) close() { c.closeOnce.Do(func() { c.tc.Close() }) }

// NewServer loads the state of a witness directory.
func NewServer(dir *Dir, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	st, err := dir.LoadState()
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, log: log, start: time.Now(), state: st,
		clients: map[quorum.NodeID]*serverConn{}, leases: map[quorum.NodeID]lease{}}
	s.quietUntilMs = st.MaxLeaseMs
	s.rebuildArbiter()
	return s, nil
}

func (s *Server) nowMs() int64 { return time.Since(s.start).Milliseconds() }

// rebuildArbiter makes the Arbiter of the stored configuration.
func (s *Server) rebuildArbiter() {
	s.arb, s.arbErr = nil, ""
	if s.state.Config == nil {
		s.arbErr = "no node has reported a configuration yet"
		return
	}
	arb, err := quorum.NewArbiter(*s.state.Config, s.state.Active)
	if err != nil {
		s.arbErr = fmt.Sprintf("configuration version %d: %v", s.state.ConfigVersion, err)
		return
	}
	s.arb = arb
}

// Serve accepts connections until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.log.Info("witness started", "listen", ln.Addr().String(), "cluster", s.dir.Identity.ClusterName,
		"cluster_id", s.dir.Identity.ClusterID, "config_version", s.state.ConfigVersion,
		"active", fmt.Sprint(s.state.Active), "quiet_ms", s.quietUntilMs)
	var wg sync.WaitGroup
	shutdown := func() {
		ln.Close()
		s.mu.Lock()
		s.closed = true
		for _, c := range s.clients {
			c.close()
		}
		if s.retry != nil {
			s.retry.Stop()
		}
		s.mu.Unlock()
	}
	stop := context.AfterFunc(ctx, shutdown)
	defer func() {
		stop()
		shutdown()
		wg.Wait()
	}()
	cfg := ServerTLS(s.dir.CA, s.dir.Cert)
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		s.mu.Lock()
		full := s.conns >= MaxConns
		if !full {
			s.conns++
		}
		s.mu.Unlock()
		if full {
			s.log.Warn("connection refused: too many connections", "remote", raw.RemoteAddr().String(), "max", MaxConns)
			raw.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				s.mu.Lock()
				s.conns--
				s.mu.Unlock()
			}()
			if err := s.serveConn(tls.Server(raw, cfg)); err != nil && ctx.Err() == nil {
				s.log.Info("connection ended", "remote", raw.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// serveConn runs one node's connection.
func (s *Server) serveConn(tc *tls.Conn) error {
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(HandshakeTimeoutMs * time.Millisecond))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	peer := tc.ConnectionState().PeerCertificates
	if len(peer) == 0 {
		return errors.New("no client certificate")
	}
	name := peer[0].Subject.CommonName
	refuse := func(format string, args ...any) error {
		reason := fmt.Sprintf(format, args...)
		WriteFrame(tc, &Envelope{Type: TypeRefusal, Refusal: &Refusal{Reason: reason}})
		return errors.New(reason)
	}
	if IsWitnessName(name) {
		return refuse("a witness certificate cannot connect as a node")
	}
	e, err := ReadFrame(tc)
	if err != nil {
		return fmt.Errorf("reading hello: %w", err)
	}
	if e.Type != TypeHello {
		return refuse("the first message must be hello, not %s", e.Type)
	}
	h := e.Hello
	if h.ClusterID != s.dir.Identity.ClusterID {
		return refuse("this witness serves cluster %s, not %s", s.dir.Identity.ClusterID, h.ClusterID)
	}
	tc.SetDeadline(time.Time{})
	c := &serverConn{id: h.NodeID, name: name, incarnation: h.Incarnation, tc: tc, out: make(chan *Envelope, sendQueue)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("the witness is stopping")
	}
	if old := s.clients[c.id]; old != nil {
		// The newer connection wins: a restarted node, or one whose old
		// connection is half open. Its reports start afresh.
		s.log.Info("node reconnected; closing its older connection", "node", c.id, "name", name,
			"incarnation", c.incarnation, "old_incarnation", old.incarnation)
		old.close()
	}
	s.clients[c.id] = c
	s.mu.Unlock()
	s.log.Info("node connected", "node", c.id, "name", name, "remote", tc.RemoteAddr().String(), "incarnation", c.incarnation)

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for e := range c.out {
			tc.SetWriteDeadline(time.Now().Add(WriteTimeoutMs * time.Millisecond))
			if err := WriteFrame(tc, e); err != nil {
				c.close()
				return
			}
		}
	}()
	defer func() {
		s.mu.Lock()
		if s.clients[c.id] == c {
			delete(s.clients, c.id)
			// The others' partitions change: decide again for them.
			s.decideLocked(nil)
		}
		close(c.out)
		s.mu.Unlock()
		c.close()
		<-writerDone
		s.log.Info("node disconnected", "node", c.id, "name", name)
	}()
	for {
		tc.SetReadDeadline(time.Now().Add(IdleTimeoutMs * time.Millisecond))
		e, err := ReadFrame(tc)
		if err != nil {
			return err
		}
		if e.Type != TypeReport {
			return refuse("expected a report, not %s", e.Type)
		}
		if err := s.handleReport(c, e.Report); err != nil {
			return refuse("%v", err)
		}
	}
}

// handleReport records a node's view and decides.
func (s *Server) handleReport(c *serverConn, r *Report) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("the witness is stopping")
	}
	if s.clients[c.id] != c {
		return errors.New("replaced by a newer connection of the same node")
	}
	if n, ok := nodeByID(r.Config, c.id); !ok || n.Name != c.name {
		return fmt.Errorf("the certificate's name %q is not the name of node %d in configuration version %d", c.name, c.id, r.ConfigVersion)
	}
	if r.ConfigVersion > s.state.ConfigVersion {
		if err := r.Config.Validate(); err != nil {
			return fmt.Errorf("configuration version %d: %w", r.ConfigVersion, err)
		}
		next := s.state
		cfg := r.Config
		next.Config, next.ConfigVersion = &cfg, r.ConfigVersion
		if err := s.dir.SaveState(next); err != nil {
			s.log.Error("saving the witness state", "err", err)
			return fmt.Errorf("the witness cannot save its state: %v", err)
		}
		s.log.Info("configuration adopted", "version", r.ConfigVersion, "from_node", c.id)
		s.state = next
		s.rebuildArbiter()
	}
	c.report, c.reportAtMs = r, s.nowMs()
	s.decideLocked(c)
	return nil
}

func nodeByID(cfg quorum.Config, id quorum.NodeID) (quorum.Node, bool) {
	for _, n := range cfg.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return quorum.Node{}, false
}

// decideLocked runs the Arbiter over the fresh reports and sends
// verdicts: to asker always (the answer to its report), to the others
// when theirs changed. s.mu is held.
func (s *Server) decideLocked(asker *serverConn) {
	if s.closed {
		return
	}
	now := s.nowMs()
	var fresh []*serverConn
	var clients []quorum.WitnessClient
	for _, c := range s.clients {
		if c.report == nil || now-c.reportAtMs > c.report.LeaseMs || c.report.ConfigVersion != s.state.ConfigVersion {
			continue
		}
		fresh = append(fresh, c)
		clients = append(clients, quorum.WitnessClient{ID: c.id, Membership: c.report.Membership})
	}
	var d quorum.Decision
	switch {
	case s.arb == nil:
		d.Reason = s.arbErr
	default:
		before := s.arb.Active()
		d = s.arb.Decide(clients)
		if d.Unstable {
			return // wait for the next reports
		}
		if !slices.Equal(before, s.arb.Active()) {
			next := s.state
			next.Active = s.arb.Active()
			if err := s.dir.SaveState(next); err != nil {
				s.log.Error("saving the witness state; no vote until it works", "err", err)
				s.rebuildArbiter() // back to the Active on disk
				d = quorum.Decision{Reason: "the witness cannot save its state"}
			} else {
				s.state = next
				s.log.Info("vote moves", "to", fmt.Sprint(d.Winner), "reason", d.Reason)
			}
		}
	}
	if d.Winner != nil {
		if wait, why := s.grantBlockedLocked(now, d); wait > 0 {
			d = quorum.Decision{Reason: why}
			s.retryLocked(wait)
		}
	}
	for _, c := range s.clients {
		v := &Verdict{Reason: d.Reason}
		if c.report != nil {
			v.Seq = c.report.Seq
		}
		switch {
		case c.report == nil:
			continue
		case c.report.ConfigVersion < s.state.ConfigVersion:
			v.Reason = fmt.Sprintf("this node runs configuration version %d; the newest is %d", c.report.ConfigVersion, s.state.ConfigVersion)
		case !slices.Contains(fresh, c):
			if c != asker {
				// Its lease runs out on its own; a report of it may be
				// on the way (a busy machine), and a denial now would
				// end a lease the node may still rightly count.
				continue
			}
			v.Reason = "this node's last report is older than its lease"
		case d.Grants(c.id):
			v.Granted, v.Membership, v.LeaseMs = true, d.Winner, c.report.LeaseMs
			s.leases[c.id] = lease{membership: d.Winner, untilMs: now + c.report.LeaseMs}
			if c.report.LeaseMs > s.state.MaxLeaseMs {
				next := s.state
				next.MaxLeaseMs = c.report.LeaseMs
				if err := s.dir.SaveState(next); err != nil {
					s.log.Error("saving the witness state", "err", err)
					v = &Verdict{Seq: v.Seq, Reason: "the witness cannot save its state"}
					delete(s.leases, c.id)
				} else {
					s.state = next
				}
			}
		}
		if c != asker && c.sent != nil && sameVerdict(c.sent, v) {
			continue
		}
		select {
		case c.out <- &Envelope{Type: TypeVerdict, Verdict: v}:
			c.sent = v
		default:
			// The node does not read: drop it rather than queue without end.
			s.log.Warn("node does not read its verdicts; closing", "node", c.id)
			c.close()
		}
	}
}

func sameVerdict(a, b *Verdict) bool {
	return a.Granted == b.Granted && slices.Equal(a.Membership, b.Membership) && a.Reason == b.Reason
}

// grantBlockedLocked says how long the grant of d must wait: until the
// quiet period after a restart is over, and until no node outside the
// winner can still count a lease for a disjoint membership.
func (s *Server) grantBlockedLocked(now int64, d quorum.Decision) (int64, string) {
	if now < s.quietUntilMs {
		return s.quietUntilMs - now, fmt.Sprintf("restarted: no vote for %d ms, until every lease of before the restart has run out", s.quietUntilMs-now)
	}
	var wait int64
	why := ""
	for id, l := range s.leases {
		if l.untilMs <= now {
			delete(s.leases, id)
			continue
		}
		if d.Grants(id) || sharesAny(l.membership, d.Winner) {
			continue
		}
		if w := l.untilMs - now; w > wait {
			wait = w
			why = fmt.Sprintf("waiting %d ms for node %d's lease (membership %v) to run out", w, id, l.membership)
		}
	}
	return wait, why
}

// retryLocked decides again after ms (the end of a wait).
func (s *Server) retryLocked(ms int64) {
	if s.retry != nil {
		s.retry.Stop()
	}
	s.retry = time.AfterFunc(time.Duration(ms+1)*time.Millisecond, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.decideLocked(nil)
	})
}

func sharesAny(a, b []quorum.NodeID) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}

// ServerStatus is a snapshot for logs and tests.
type ServerStatus struct {
	ClusterID     string          `json:"cluster_id"`
	ConfigVersion uint64          `json:"config_version"`
	Active        []quorum.NodeID `json:"active"`
	Connected     []quorum.NodeID `json:"connected"`
}

// Status is a snapshot of the server.
func (s *Server) Status() ServerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := ServerStatus{ClusterID: s.dir.Identity.ClusterID, ConfigVersion: s.state.ConfigVersion, Active: slices.Clone(s.state.Active)}
	for id := range s.clients {
		st.Connected = append(st.Connected, id)
	}
	slices.Sort(st.Connected)
	return st
}
