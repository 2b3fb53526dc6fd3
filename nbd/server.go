package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
)

// Export is one named block device the server offers.
type Export struct {
	Name        string
	Description string
	Backend     Backend
}

// Exports finds exports by name. The empty name is the default export.
type Exports interface {
	Lookup(name string) (*Export, bool)
	Names() []string
}

// ExportMap is a fixed set of exports. The first one added (or the one
// named by Default) answers to the empty name too.
type ExportMap struct {
	ByName  map[string]*Export
	Default string
}

// SingleExport serves one export under its name and the empty name.
func SingleExport(e *Export) *ExportMap {
	return &ExportMap{ByName: map[string]*Export{e.Name: e}, Default: e.Name}
}

func (m *ExportMap) Lookup(name string) (*Export, bool) {
	if name == "" {
		name = m.Default
	}
	e, ok := m.ByName[name]
	return e, ok
}

func (m *ExportMap) Names() []string {
	names := make([]string, 0, len(m.ByName))
	for n := range m.ByName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// TLSMode says whether clients may, must, or cannot use TLS.
type TLSMode int

const (
	TLSOff     TLSMode = iota // STARTTLS is refused with NBD_REP_ERR_POLICY
	TLSAllow                  // STARTTLS is offered, plain clients are served
	TLSRequire                // every option but STARTTLS/ABORT needs TLS first
)

// Config configures a Server.
type Config struct {
	Exports Exports
	TLS     *tls.Config // needed for TLSAllow and TLSRequire
	TLSMode TLSMode
	Limits  Limits
	Logger  *slog.Logger
}

// Server serves NBD on any number of listeners.
type Server struct {
	cfg       Config
	limits    Limits
	log       *slog.Logger
	serverBuf *budget
	conns     atomic.Int64
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	active    map[net.Conn]struct{}
	closed    bool
	wg        sync.WaitGroup
	Stats     Stats
}

// Stats are counters a node exposes as metrics.
type Stats struct {
	ConnsAccepted   atomic.Int64
	ConnsRefused    atomic.Int64
	HandshakeErrors atomic.Int64
	Requests        atomic.Int64
	RequestErrors   atomic.Int64
	BytesRead       atomic.Int64
	BytesWritten    atomic.Int64
	// HoleBytes counts bytes of READs answered with hole chunks.
	HoleBytes atomic.Int64
}

// NewServer checks cfg and returns a server.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Exports == nil {
		return nil, errors.New("nbd: no exports")
	}
	if cfg.TLSMode != TLSOff && cfg.TLS == nil {
		return nil, errors.New("nbd: TLS mode needs a certificate")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	l := cfg.Limits.withDefaults()
	return &Server{
		cfg:       cfg,
		limits:    l,
		log:       cfg.Logger,
		serverBuf: newBudget(l.MaxInFlightBytesPerServer),
		listeners: map[net.Listener]struct{}{},
		active:    map[net.Conn]struct{}{},
	}, nil
}

// Limits returns the limits in force (defaults filled in).
func (s *Server) Limits() Limits { return s.limits }

// Serve accepts connections on ln until it fails or the server is closed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if s.conns.Load() >= int64(s.limits.MaxConns) {
			s.Stats.ConnsRefused.Add(1)
			s.log.Warn("nbd: connection refused: too many connections", "remote", c.RemoteAddr(), "max", s.limits.MaxConns)
			c.Close()
			continue
		}
		s.ServeConn(c)
	}
}

// ServeConn serves one already accepted connection in the background.
func (s *Server) ServeConn(c net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.active[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.conns.Add(1)
	s.Stats.ConnsAccepted.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.conns.Add(-1)
		s.handle(c)
		s.mu.Lock()
		delete(s.active, c)
		s.mu.Unlock()
	}()
}

// handle runs the handshake and then transmission on one connection.
func (s *Server) handle(raw net.Conn) {
	log := s.log.With("remote", raw.RemoteAddr().String())
	sess, err := s.handshake(raw, log)
	if err != nil {
		if !errors.Is(err, errAborted) {
			s.Stats.HandshakeErrors.Add(1)
			log.Info("nbd: handshake ended", "err", err)
		}
		if sess != nil {
			sess.conn.Close()
		} else {
			raw.Close()
		}
		return
	}
	log = log.With("export", sess.export.Name)
	log.Debug("nbd: transmission starts", "structured", sess.structured, "tls", sess.tls)
	t := newTransmission(s, sess, log)
	if err := t.run(); err != nil {
		log.Info("nbd: connection closed", "err", err)
	}
}

// Close stops the listeners and closes every connection, then waits for
// their goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.active {
		c.Close()
	}
	s.mu.Unlock()
	s.serverBuf.close()
	s.wg.Wait()
	return nil
}

// Shutdown is Close bounded by ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("nbd: shutdown: %w", ctx.Err())
	}
}
