package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/migrate"
)

var guestCmd = &cobra.Command{
	Use:   "guest",
	Short: "A synthetic guest whose RAM can be live-migrated (tests, demos, benchmarks)",
	Args:  cobra.NoArgs,
}

func init() {
	guestCmd.AddCommand(guestRunCmd(), guestCheckCmd(), guestStatusCmd())
	rootCmd.AddCommand(guestCmd)
}

func guestRunCmd() *cobra.Command {
	var (
		name, mem, listen, rate, pattern, content, sock string
		incoming                                        bool
		seed                                            uint64
		tlsf                                            migrationTLS
	)
	cmd := &cobra.Command{
		Use:   "run --name NAME --mem 256M [--dirty-rate 50M] [--pattern uniform|hotset] [--content random|halfzero] [--incoming --listen-migration IP:PORT] [--control-sock PATH] (--data-dir DIR | --tls-dir DIR [--insecure-self-signed])",
		Short: "Run a synthetic guest (RAM in a memfd, a writer dirtying pages) or wait for one to migrate in",
		Long: `guest run starts a process that plays a VM for live migration: its RAM is a
memfd, and a writer goroutine rewrites whole pages at --dirty-rate bytes per
second (uniformly, or 90 % of writes in a hot tenth of RAM). Every page holds
its index, a version and content derived from both, and the writer's count of
writes travels as device state, so "paddock guest check" proves after a
migration that nothing was lost, duplicated or torn.

With --incoming the process holds no guest yet: it listens on
--listen-migration and becomes the guest when a migration commits. A failed
migration is discarded and it waits again.

"paddock migrate NAME --to ..." drives a migration through the control socket.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !guestNameRE.MatchString(name) {
				return fmt.Errorf("--name %q: letters, digits, '.', '_', '-', at most 64", name)
			}
			ramBytes, err := parseSize(mem)
			if err != nil {
				return err
			}
			rateBytes, err := parseSize(rate)
			if err != nil {
				return fmt.Errorf("--dirty-rate: %w", err)
			}
			if sock == "" {
				sock = defaultGuestSocket(name)
			}
			cfg := migrate.SynthConfig{RAMBytes: ramBytes, DirtyBytesPerSecond: rateBytes, Pattern: pattern, Content: content, Seed: seed}
			if cfg.Seed == 0 {
				cfg.Seed = uint64(time.Now().UnixNano())
			}
			if incoming && listen == "" {
				return errors.New("--incoming needs --listen-migration IP:PORT")
			}
			hosts := []string{"localhost", "127.0.0.1"}
			if h, err := os.Hostname(); err == nil {
				hosts = append(hosts, h)
			}
			if listen != "" {
				if h, _, err := net.SplitHostPort(listen); err == nil && h != "" {
					hosts = append(hosts, h)
				}
			}
			id, err := tlsf.identity(name, hosts...)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			p := &guestProc{name: name, ramBytes: ramBytes, id: id, out: cmd.OutOrStdout(), exit: make(chan struct{})}
			return p.run(ctx, cfg, incoming, listen, sock)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&name, "name", "", "guest name")
	fl.StringVar(&mem, "mem", "256M", "guest RAM (K, M, G suffixes)")
	fl.StringVar(&listen, "listen-migration", "", "address to receive a migration on (with --incoming)")
	fl.StringVar(&rate, "dirty-rate", "0", "bytes the writer dirties per second (K, M, G suffixes)")
	fl.StringVar(&pattern, "pattern", "uniform", "where the writer writes: uniform or hotset")
	fl.StringVar(&content, "content", "random", "page content: random, or halfzero (even pages stay zero)")
	fl.StringVar(&sock, "control-sock", "", "control socket (default /run/paddock/guest-NAME.sock)")
	fl.BoolVar(&incoming, "incoming", false, "wait for a migration instead of starting a guest")
	fl.Uint64Var(&seed, "seed", 0, "content seed (default: from the clock)")
	fl.StringVar(&tlsf.dataDir, "data-dir", "", "node data dir whose cluster CA and node certificate authenticate migrations")
	fl.StringVar(&tlsf.tlsDir, "tls-dir", "", "directory with ca.pem, cert.pem, key.pem (or a throw-away CA, with --insecure-self-signed)")
	fl.BoolVar(&tlsf.insecure, "insecure-self-signed", false, "make or reuse a throw-away CA in --tls-dir (tests only: whoever reads the dir can impersonate either side)")
	cmd.MarkFlagRequired("name")
	return cmd
}

// guestProc is the process of `guest run`: at most one guest, its control
// socket, and the migrations in and out.
type guestProc struct {
	name     string
	ramBytes int64
	id       migrate.TLSIdentity
	out      interface{ Write([]byte) (int, error) }

	mu    sync.Mutex
	g     *migrate.SynthGuest
	state string // incoming, running, migrating, migrated
	exit  chan struct{}
	once  sync.Once
}

func (p *guestProc) say(format string, args ...any) {
	fmt.Fprintf(p.out, "guest %s: %s\n", p.name, fmt.Sprintf(format, args...))
}

func (p *guestProc) run(ctx context.Context, cfg migrate.SynthConfig, incoming bool, listen, sock string) error {
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		return err
	}
	os.Remove(sock) // a stale socket of a dead guest
	cl, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	defer os.Remove(sock)
	defer cl.Close()
	go p.serveControl(ctx, cl)

	if incoming {
		p.setState("incoming")
		if err := p.receive(ctx, listen); err != nil {
			return err
		}
	} else {
		g, err := migrate.NewSynthGuest(p.name, cfg)
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.g, p.state = g, "running"
		p.mu.Unlock()
		g.Resume()
		p.say("running, %s RAM, dirty rate %d B/s, %s, %s, control %s", humanBytes(cfg.RAMBytes), cfg.DirtyBytesPerSecond, cfg.Pattern, cfg.Content, sock)
	}
	select {
	case <-ctx.Done():
	case <-p.exit:
		// Migrated away: give the control client its last line.
		time.Sleep(200 * time.Millisecond)
	}
	p.mu.Lock()
	g := p.g
	p.mu.Unlock()
	if g != nil {
		g.Close()
	}
	return nil
}

func (p *guestProc) setState(s string) {
	p.mu.Lock()
	p.state = s
	p.mu.Unlock()
}

// receive waits for a migration until one commits.
func (p *guestProc) receive(ctx context.Context, listen string) error {
	// QUIC and TCP listen on the same port number (UDP and TCP).
	lq, err := migrate.Listen(migrate.TransportQUIC, listen, p.id)
	if err != nil {
		return err
	}
	defer lq.Close()
	lt, err := migrate.Listen(migrate.TransportTCP, listen, p.id)
	if err != nil {
		return err
	}
	defer lt.Close()
	p.say("waiting for a migration on %s (quic and tcp)", listen)
	for {
		var mem *migrate.Memory
		opts := migrate.DestOptions{
			PrepareRAM: func(ramBytes int64) ([]byte, error) {
				if ramBytes != p.ramBytes {
					return nil, fmt.Errorf("this guest expects %d bytes of RAM (--mem)", p.ramBytes)
				}
				m, err := migrate.NewMemory(p.name, ramBytes)
				if err != nil {
					return nil, err
				}
				mem = m
				return m.Bytes(), nil
			},
			Discard: func() {
				if mem != nil {
					mem.Close()
					mem = nil
				}
			},
			Resume: func(state []byte) error {
				g, err := migrate.RestoreSynthGuest(mem, state)
				if err != nil {
					return err
				}
				p.mu.Lock()
				p.g, p.state = g, "running"
				p.mu.Unlock()
				return g.Resume()
			},
		}
		st, err := receiveEither(ctx, lq, lt, opts)
		if err == nil {
			p.say("resumed from a migration over %s: %d rounds, device state %d bytes", st.Transport, st.Rounds, st.StateBytes)
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
		p.say("incoming migration failed, discarded: %v; waiting again", err)
		slog.Debug("incoming migration failed", "err", err)
	}
}

// receiveEither runs Receive on both listeners; the first migration to
// start on one wins, and the other stops waiting.
func receiveEither(ctx context.Context, lq, lt migrate.Listener, opts migrate.DestOptions) (*migrate.DestStats, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type res struct {
		st  *migrate.DestStats
		err error
	}
	ch := make(chan res, 2)
	var started sync.Mutex // one migration at a time
	wrap := opts
	wrap.PrepareRAM = func(n int64) ([]byte, error) {
		if !started.TryLock() {
			return nil, errors.New("another migration is under way")
		}
		ram, err := opts.PrepareRAM(n)
		if err != nil {
			started.Unlock()
		}
		return ram, err
	}
	wrap.Discard = func() {
		opts.Discard()
		started.Unlock()
	}
	for _, l := range []migrate.Listener{lq, lt} {
		go func() {
			st, err := migrate.Receive(ctx, l, wrap)
			ch <- res{st, err}
		}()
	}
	first := <-ch
	if first.err == nil {
		cancel()
		<-ch
		return first.st, nil
	}
	// The first to end failed. If the other side is mid-migration, its
	// outcome is the one that counts; else stop it, holding the lock so
	// that no migration starts there meanwhile.
	if !started.TryLock() {
		second := <-ch
		return second.st, second.err
	}
	cancel()
	<-ch
	started.Unlock()
	return first.st, first.err
}

func (p *guestProc) serveControl(ctx context.Context, l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go p.handle(ctx, c)
	}
}

func (p *guestProc) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	enc := json.NewEncoder(c)
	var encMu sync.Mutex
	send := func(r guestResponse) {
		encMu.Lock()
		defer encMu.Unlock()
		enc.Encode(r)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReaderSize(c, maxGuestRequestBytes+1)
	line, err := r.ReadSlice('\n')
	if err != nil {
		send(guestResponse{Done: true, Error: "request: " + err.Error()})
		return
	}
	req, err := parseGuestRequest(line)
	if err != nil {
		send(guestResponse{Done: true, Error: err.Error()})
		return
	}
	c.SetReadDeadline(time.Time{})
	switch req.Op {
	case "status":
		st := p.status()
		send(guestResponse{Done: true, Status: &st})
	case "check":
		p.mu.Lock()
		g := p.g
		p.mu.Unlock()
		if g == nil {
			send(guestResponse{Done: true, Error: "no guest here (waiting for a migration)"})
			return
		}
		res := g.Check()
		resp := guestResponse{Done: true, Check: &res}
		if !res.OK() {
			resp.Error = fmt.Sprintf("guest memory inconsistent: %d bad pages, first %d (%s); writes %d, versions sum %d", res.BadPages, res.FirstBad, res.FirstReason, res.Writes, res.VersionSum)
		}
		send(resp)
	case "migrate":
		// Closing the control connection cancels the migration.
		mctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			var b [1]byte
			c.Read(b[:])
			cancel()
		}()
		st, err := p.migrateOut(mctx, req.Migrate, func(pr migrate.Progress) { send(guestResponse{Progress: &pr}) })
		resp := guestResponse{Done: true, Stats: st}
		if err != nil {
			resp.Error = err.Error()
		}
		send(resp)
	}
}

func (p *guestProc) status() guestStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := guestStatus{Name: p.name, State: p.state, RAMBytes: p.ramBytes, Pid: os.Getpid()}
	if p.g != nil {
		st.Writes = p.g.Writes()
		st.ThrottlePercent = p.g.ThrottlePercent()
	}
	return st
}

// migrateOut sends the guest to m.To. On success (or a commit whose
// confirmation was lost) the guest is gone from here and the process exits.
func (p *guestProc) migrateOut(ctx context.Context, m *migrateRequest, progress func(migrate.Progress)) (*migrate.Stats, error) {
	p.mu.Lock()
	if p.state != "running" {
		st := p.state
		p.mu.Unlock()
		return nil, fmt.Errorf("guest is %s, not running", st)
	}
	p.state = "migrating"
	g := p.g
	p.mu.Unlock()
	ok := false
	defer func() {
		if !ok {
			p.setState("running")
		}
	}()
	serverName := m.ServerName
	if serverName == "" {
		serverName, _, _ = net.SplitHostPort(m.To)
	}
	comp, _ := migrate.ParseCompression(m.Compress)
	dial := func(ctx context.Context, streams int) (migrate.Conn, error) {
		return migrate.Dial(ctx, m.Transport, m.To, serverName, p.id, streams)
	}
	conn, err := dial(ctx, m.Streams)
	if err != nil {
		return nil, err
	}
	tr, err := g.NewTracker()
	if err != nil {
		conn.Abort("no tracker")
		return nil, err
	}
	st, err := migrate.Migrate(ctx, g, tr, conn, migrate.SourceOptions{
		Compression:             comp,
		DowntimeLimit:           time.Duration(m.DowntimeMs) * time.Millisecond,
		Timeout:                 time.Duration(m.TimeoutMs) * time.Millisecond,
		MaxRounds:               m.MaxRounds,
		NoAutoConverge:          m.NoAutoConverge,
		BandwidthBytesPerSecond: m.BandwidthBytesPerSecond,
		Redial:                  func(ctx context.Context) (migrate.Conn, error) { return dial(ctx, 1) },
		Progress:                progress,
		ProgressInterval:        200 * time.Millisecond,
	})
	g.CloseTracker(tr)
	if err == nil || errors.Is(err, migrate.ErrInDoubt) {
		ok = true
		g.Stop()
		p.setState("migrated")
		p.say("migrated to %s (%s)", m.To, st.Status)
		p.once.Do(func() { close(p.exit) })
	} else {
		p.say("migration to %s failed, running here: %v", m.To, err)
	}
	return st, err
}

func guestSocketFlag(cmd *cobra.Command, sock *string) {
	cmd.Flags().StringVar(sock, "control-sock", "", "the guest's control socket (default /run/paddock/guest-NAME.sock)")
}

func guestSock(name, sock string) (string, error) {
	if sock != "" {
		return sock, nil
	}
	if !guestNameRE.MatchString(name) {
		return "", fmt.Errorf("guest name %q: letters, digits, '.', '_', '-', at most 64", name)
	}
	return defaultGuestSocket(name), nil
}

func guestCheckCmd() *cobra.Command {
	var sock string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check NAME [--control-sock PATH] [--json]",
		Short: "Verify every page of a synthetic guest and its write count",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := guestSock(args[0], sock)
			if err != nil {
				return err
			}
			var resp guestResponse
			if err := guestCall(s, guestRequest{Op: "check"}, 5*time.Minute, func(r guestResponse) error { resp = r; return nil }); err != nil {
				return err
			}
			if asJSON && resp.Check != nil {
				b, _ := json.Marshal(resp.Check)
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
			} else if resp.Check != nil {
				c := resp.Check
				fmt.Fprintf(cmd.OutOrStdout(), "guest %s: %d live pages, %d zero pages, %d writes, %d bad pages\n", args[0], c.LivePages, c.ZeroPages, c.Writes, c.BadPages)
			}
			if resp.Error != "" {
				return errors.New(resp.Error)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "guest %s: consistent\n", args[0])
			return nil
		},
	}
	guestSocketFlag(cmd, &sock)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the check result as JSON")
	return cmd
}

func guestStatusCmd() *cobra.Command {
	var sock string
	cmd := &cobra.Command{
		Use:   "status NAME [--control-sock PATH]",
		Short: "Print a synthetic guest's state as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := guestSock(args[0], sock)
			if err != nil {
				return err
			}
			return guestCall(s, guestRequest{Op: "status"}, 10*time.Second, func(r guestResponse) error {
				if r.Error != "" {
					return errors.New(r.Error)
				}
				b, _ := json.Marshal(r.Status)
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return nil
			})
		},
	}
	guestSocketFlag(cmd, &sock)
	return cmd
}
