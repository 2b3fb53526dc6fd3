package witness

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/paddock-io/paddock/quorum"
)

// Client timing and limits.
const (
	// DialTimeoutMs bounds connecting, TLS handshake included.
	DialTimeoutMs = 3000
	// minBackoffMs and maxBackoffMs: reconnect attempts start fast (a
	// restarted witness is used again quickly) and slow down to one every
	// 2 s while it stays away.
	minBackoffMs = 100
	maxBackoffMs = 2000
	// sentSeqs is how many recent reports' send times are kept to
	// measure leases from; older verdicts are ignored.
	sentSeqs = 64
)

// ClientConfig configures a node's witness client.
type ClientConfig struct {
	Addr        string
	TLS         *tls.Config
	ClusterID   string
	NodeID      quorum.NodeID
	Incarnation uint64
	// LeaseMs is the lease asked for; IntervalMs how often the view is
	// reported (and so the lease renewed).
	LeaseMs    int64
	IntervalMs int64
	// NowMs is the node's monotonic clock in ms, the one its quorum
	// machine runs on.
	NowMs func() int64
	Log   *slog.Logger
}

// Client keeps one long-lived connection to the witness, reports the
// node's view on every change and every IntervalMs, and holds the vote
// the witness grants with its lease.
type Client struct {
	cfg  ClientConfig
	wake chan struct{}

	mu            sync.Mutex
	view          []quorum.NodeID
	configVersion uint64
	config        quorum.Config
	connected     bool
	lastErr       string
	seq           uint64
	sent          map[uint64]sentReport
	// The current answer for view: answered says a verdict for this view
	// arrived (granted or not); vote and voteUntilMs are the grant.
	answered    bool
	vote        []quorum.NodeID
	voteUntilMs int64
	reason      string
	// voteAnchorMs is when the report behind the newest grant of vote
	// was sent, grantedAtMs when the first grant of vote arrived (both on
	// NowMs): the lease evidence of Evidence.
	voteAnchorMs int64
	grantedAtMs  int64
}

// NewClient makes a client; Run connects it.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.LeaseMs < MinLeaseMs || cfg.LeaseMs > MaxLeaseMs {
		return nil, fmt.Errorf("witness lease %d ms: want %d..%d ms", cfg.LeaseMs, MinLeaseMs, MaxLeaseMs)
	}
	if cfg.IntervalMs <= 0 || cfg.IntervalMs*2 > cfg.LeaseMs {
		return nil, fmt.Errorf("witness report interval %d ms: want at most half the lease (%d ms), so a lost report does not lose the vote", cfg.IntervalMs, cfg.LeaseMs)
	}
	if _, err := net.ResolveTCPAddr("tcp", cfg.Addr); err != nil {
		return nil, fmt.Errorf("witness address %q: %w", cfg.Addr, err)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Client{cfg: cfg, wake: make(chan struct{}, 1), sent: map[uint64]sentReport{}}, nil
}

// SetView gives the node's current membership (sorted ids, itself
// included) and configuration; a new one is reported right away. A grant
// for the old membership is kept until its lease ends (Grant), so that
// the node may hold its old view while the witness answers for the new
// one; it never counts for the new view.
func (c *Client) SetView(members []quorum.NodeID, configVersion uint64, cfg quorum.Config) {
	members = sortedIDs(members)
	c.mu.Lock()
	changed := !slices.Equal(members, c.view) || configVersion != c.configVersion
	if changed {
		if !slices.Equal(members, c.view) {
			c.answered, c.reason = false, ""
		}
		c.view, c.configVersion, c.config = members, configVersion, cfg
	}
	c.mu.Unlock()
	if changed {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// Answer says whether the witness answered for the current view, and the
// membership it grants its vote for: the current view, or nil (no vote,
// or the lease ran out).
func (c *Client) Answer(nowMs int64) (answered bool, vote []quorum.NodeID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.vote != nil && nowMs < c.voteUntilMs && slices.Equal(c.vote, c.view) {
		vote = slices.Clone(c.vote)
	}
	return c.answered, vote
}

// Grant is the membership the witness last granted its vote for, whatever
// the current view, while its lease runs.
func (c *Client) Grant(nowMs int64) []quorum.NodeID {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.vote != nil && nowMs < c.voteUntilMs {
		return slices.Clone(c.vote)
	}
	return nil
}

// Evidence describes the grant that Grant returns, for the self-fence
// lease (fence/lease.go): anchorMs is when this node sent the newest
// report the grant answers (a lease that rests on the vote runs from
// there), grantedAtMs when the grant for this membership first arrived
// (the witness had let any other membership's lease run out before
// that, so a node cut off from this one can have rested a lease on the
// vote only before it). ok is false when there is no grant.
func (c *Client) Evidence(nowMs int64) (anchorMs, grantedAtMs int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.vote == nil || nowMs >= c.voteUntilMs {
		return 0, 0, false
	}
	return c.voteAnchorMs, c.grantedAtMs, true
}

// ClientStatus is the client's state for "paddock status".
type ClientStatus struct {
	Addr      string `json:"addr"`
	Connected bool   `json:"connected"`
	// Vote: the witness grants its vote for this node's current view and
	// the lease runs LeaseLeftMs more.
	Vote        bool   `json:"vote"`
	LeaseLeftMs int64  `json:"lease_left_ms,omitempty"`
	Reason      string `json:"reason,omitempty"`
	LastError   string `json:"last_error,omitempty"`
}

// Status reports the connection and the vote.
func (c *Client) Status(nowMs int64) ClientStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := ClientStatus{Addr: c.cfg.Addr, Connected: c.connected, Reason: c.reason, LastError: c.lastErr}
	if c.vote != nil && nowMs < c.voteUntilMs && slices.Equal(c.vote, c.view) {
		s.Vote, s.LeaseLeftMs = true, c.voteUntilMs-nowMs
	}
	return s
}

// Run connects and reconnects until ctx ends.
func (c *Client) Run(ctx context.Context) {
	backoffMs := int64(minBackoffMs)
	for ctx.Err() == nil {
		err := c.session(ctx)
		c.mu.Lock()
		wasConnected := c.connected
		c.connected = false
		// A grant stays until its lease ends, connection or not: the
		// witness counts it until then too. A new connection must be
		// answered afresh.
		c.answered = false
		if err != nil && ctx.Err() == nil {
			c.lastErr = err.Error()
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if wasConnected {
			c.cfg.Log.Warn("witness connection lost", "witness", c.cfg.Addr, "err", err)
			backoffMs = minBackoffMs
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(backoffMs) * time.Millisecond):
		}
		backoffMs = min(backoffMs*2, maxBackoffMs)
	}
}

// session is one connection: hello, then reports and verdicts.
func (c *Client) session(ctx context.Context) error {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: DialTimeoutMs * time.Millisecond}, Config: c.cfg.TLS}
	dctx, cancel := context.WithTimeout(ctx, DialTimeoutMs*time.Millisecond)
	raw, err := d.DialContext(dctx, "tcp", c.cfg.Addr)
	cancel()
	if err != nil {
		return err
	}
	conn := raw.(*tls.Conn)
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetWriteDeadline(time.Now().Add(WriteTimeoutMs * time.Millisecond))
	if err := WriteFrame(conn, &Envelope{Type: TypeHello, Hello: &Hello{Version: ProtocolVersion, ClusterID: c.cfg.ClusterID, NodeID: c.cfg.NodeID, Incarnation: c.cfg.Incarnation}}); err != nil {
		return err
	}
	c.mu.Lock()
	c.connected, c.lastErr = true, ""
	c.mu.Unlock()
	c.cfg.Log.Info("witness connected", "witness", c.cfg.Addr)

	readErr := make(chan error, 1)
	go func() {
		for {
			// Verdicts come every report interval while the witness is
			// well. The vote does not depend on the connection (its
			// lease ends it), so this only finds a dead connection, and
			// is long enough that a busy machine does not cause a
			// reconnect: four leases.
			conn.SetReadDeadline(time.Now().Add(time.Duration(4*c.cfg.LeaseMs) * time.Millisecond))
			e, err := ReadFrame(conn)
			if err != nil {
				readErr <- err
				return
			}
			switch e.Type {
			case TypeVerdict:
				c.accept(e.Verdict)
			case TypeRefusal:
				readErr <- fmt.Errorf("the witness refused this node: %s", e.Refusal.Reason)
				return
			default:
				readErr <- fmt.Errorf("unexpected %s message from the witness", e.Type)
				return
			}
		}
	}()
	tick := time.NewTicker(time.Duration(c.cfg.IntervalMs) * time.Millisecond)
	defer tick.Stop()
	for {
		if err := c.report(conn); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-readErr:
			return err
		case <-tick.C:
		case <-c.wake:
		}
	}
}

// report sends the current view, if there is one yet.
func (c *Client) report(conn *tls.Conn) error {
	c.mu.Lock()
	if c.view == nil {
		c.mu.Unlock()
		return nil
	}
	c.seq++
	r := &Report{Seq: c.seq, Membership: c.view, ConfigVersion: c.configVersion, Config: c.config, LeaseMs: c.cfg.LeaseMs}
	c.sent[c.seq] = sentReport{atMs: c.cfg.NowMs(), view: c.view}
	delete(c.sent, c.seq-sentSeqs)
	c.mu.Unlock()
	conn.SetWriteDeadline(time.Now().Add(WriteTimeoutMs * time.Millisecond))
	return WriteFrame(conn, &Envelope{Type: TypeReport, Report: r})
}

// accept takes a verdict: it counts only for the current view, and its
// lease runs from the time the report it answers was sent.
func (c *Client) accept(v *Verdict) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sent, ok := c.sent[v.Seq]
	if !ok {
		return // answers a report too old to measure from
	}
	if !slices.Equal(sent.view, c.view) || (v.Granted && !slices.Equal(v.Membership, c.view)) {
		return // for a view this node has left
	}
	c.answered, c.reason = true, v.Reason
	if !v.Granted {
		if c.vote != nil {
			c.cfg.Log.Info("witness vote withdrawn", "reason", v.Reason)
		}
		c.vote, c.voteUntilMs = nil, 0
		return
	}
	until := sent.atMs + min(v.LeaseMs, c.cfg.LeaseMs)
	if c.vote == nil {
		c.cfg.Log.Info("witness vote granted", "membership", fmt.Sprint(v.Membership), "reason", v.Reason)
	}
	// A grant after none, for another membership, or after the last one
	// lapsed is a new grant: the witness may have given its vote to
	// someone else in between.
	if now := c.cfg.NowMs(); c.vote == nil || !slices.Equal(c.vote, v.Membership) || now >= c.voteUntilMs {
		c.voteUntilMs, c.voteAnchorMs = 0, 0
		c.grantedAtMs = now
	}
	c.vote = slices.Clone(v.Membership)
	if until > c.voteUntilMs {
		c.voteUntilMs = until
	}
	c.voteAnchorMs = max(c.voteAnchorMs, sent.atMs)
}

// sentReport is what a report said and when it was sent.
type sentReport struct {
	atMs int64
	view []quorum.NodeID
}

// Text is the status in one line, for "paddock status".
func (s ClientStatus) Text() string {
	switch {
	case s.Vote:
		return fmt.Sprintf("%s, connected, vote granted (lease %d ms left)", s.Addr, s.LeaseLeftMs)
	case s.Connected && s.Reason != "":
		return fmt.Sprintf("%s, connected, no vote: %s", s.Addr, s.Reason)
	case s.Connected:
		return fmt.Sprintf("%s, connected, no vote", s.Addr)
	case s.LastError != "":
		return fmt.Sprintf("%s, NOT connected: %s", s.Addr, s.LastError)
	}
	return fmt.Sprintf("%s, NOT connected", s.Addr)
}
