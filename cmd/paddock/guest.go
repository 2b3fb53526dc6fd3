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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/migrate"
	"github.com/paddock-io/paddock/node"
)

var guestCmd = &cobra.Command{
	Use:   "guest",
	Short: "A synthetic guest whose RAM can be live-migrated (tests, demos, benchmarks)",
	Args:  cobra.NoArgs,
}

func init() {
	guestCmd.AddCommand(guestRunCmd(false), guestRunCmd(true), guestCheckCmd(), guestStatusCmd(), guestListCmd())
	rootCmd.AddCommand(guestCmd)
}

// guestRunCmd is "guest run" (alias "guest start"), or with receive
// "guest receive", which is "guest run --incoming".
func guestRunCmd(receive bool) *cobra.Command {
	var (
		name, mem, listen, rate, pattern, content, sock string
		incoming, verifyRAM, hugePages                  bool
		idleTimeout                                     time.Duration
		seed                                            uint64
		tlsf                                            migrationTLS
		volumes                                         []string
	)
	cmd := &cobra.Command{
		Use:     "run --name NAME --mem 256M [--dirty-rate 50M] [--pattern uniform|hotset|sequential] [--content random|halfzero] [--volume NAME]... [--incoming --listen IP:PORT] [--control-sock PATH] (--data-dir DIR | --tls-dir DIR [--insecure-self-signed])",
		Aliases: []string{"start"},
		Short:   "Run a synthetic guest (RAM in a memfd, a writer dirtying pages) or wait for one to migrate in",
		Long: `guest run (or guest start) starts a process that plays a VM for live
migration: its RAM is a memfd (--mem, or --ram), and a writer goroutine
rewrites whole pages at --dirty-rate bytes per second: uniformly over RAM,
90 % of writes in a hot tenth of it (hotset), or walking it in order,
wrapping around (sequential). Every page holds its index, a version and
content derived from both, and the writer's count of writes travels as
device state, so "paddock guest check" proves after a migration that nothing
was lost, duplicated or torn.

--volume NAME (repeatable) lists the replicated volumes the guest uses as
disks. They travel with it: at the switchover of a migration, while the
guest is paused, their primary role moves to the destination's node, so the
disk follows the guest without a copy. This needs --data-dir (the guest asks
its node to move them); a hand-off that fails cancels the migration and the
guest goes on here with its volumes.

With --incoming the process holds no guest yet: it listens on --listen (or
--listen-migration) and becomes the guest when a migration commits. A failed
migration is discarded and it waits again. "guest receive" is the same.
--idle-timeout stops it when no migration has been under way for that long.

"paddock migrate NAME --to ..." drives a migration through the control socket.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if receive {
				incoming = true
			}
			if cmd.Flags().Changed("mem") && cmd.Flags().Changed("ram") {
				return errors.New("give --mem or --ram (the same thing), not both")
			}
			if cmd.Flags().Changed("listen") && cmd.Flags().Changed("listen-migration") {
				return errors.New("give --listen or --listen-migration (the same thing), not both")
			}
			if err := checkVolumes(volumes); err != nil {
				return fmt.Errorf("--volume: %w", err)
			}
			if len(volumes) > 0 && incoming {
				return errors.New("--volume is for a guest that starts here; an incoming guest learns its volumes from the migration")
			}
			if len(volumes) > 0 && tlsf.dataDir == "" {
				return errors.New("--volume needs --data-dir: the guest asks its node to hand its volumes over at a migration")
			}
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
			cfg := migrate.SynthConfig{RAMBytes: ramBytes, DirtyBytesPerSecond: rateBytes, Pattern: pattern, Content: content, Seed: seed, HugePages: hugePages}
			if hugePages && ramBytes%migrate.HugePageBytes != 0 {
				return fmt.Errorf("--hugepages: --mem must be a multiple of 2 MiB, got %d bytes", ramBytes)
			}
			if cfg.Seed == 0 {
				cfg.Seed = uint64(time.Now().UnixNano())
			}
			if idleTimeout < 0 || (idleTimeout > 0 && !incoming) {
				return errors.New("--idle-timeout is for a receiver (guest receive, or --incoming), and not negative")
			}
			if incoming && listen == "" {
				return errors.New("receiving a migration needs --listen IP:PORT (or --listen-migration)")
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
			p := &guestProc{name: name, ramBytes: ramBytes, id: id, out: cmd.OutOrStdout(), exit: make(chan struct{}),
				nodeDir: tlsf.dataDir, volumes: volumes, idleTimeout: idleTimeout, verifyRAM: verifyRAM, hugePages: hugePages}
			if len(volumes) > 0 {
				// Fail now rather than at the first migration.
				var vs []node.VolumeListEntry
				if err := node.NewControlClient(node.DataDir{Path: tlsf.dataDir}, volumeTimeout).Call("GET", "/v1/volumes", nil, &vs); err != nil {
					return fmt.Errorf("--volume: asking the node: %w", err)
				}
				for _, v := range volumes {
					if !slices.ContainsFunc(vs, func(e node.VolumeListEntry) bool { return e.Name == v }) {
						return fmt.Errorf("--volume %s: no such volume in the cluster", v)
					}
				}
			}
			return p.run(ctx, cfg, incoming, listen, sock)
		},
	}
	if receive {
		cmd.Use = "receive --name NAME --mem 256M --listen IP:PORT [--control-sock PATH] (--data-dir DIR | --tls-dir DIR [--insecure-self-signed])"
		cmd.Aliases = nil
		cmd.Short = "Wait for a guest to migrate in (guest run --incoming)"
		cmd.Long = `guest receive listens on --listen for a migration of a guest of --mem bytes
of RAM and becomes that guest when the migration commits: the destination
side of "paddock migrate", standalone. A migration that fails is discarded
and it waits again. It is "guest run --incoming".

A node starts one by itself for "paddock migrate NAME --to NODE" (with
--idle-timeout, its data dir and a control socket in DATA-DIR/guests/);
"paddock guest list --data-dir DIR" shows those.`
	}
	fl := cmd.Flags()
	fl.StringVar(&name, "name", "", "guest name")
	fl.StringVar(&mem, "mem", "256M", "guest RAM (K, M, G suffixes)")
	fl.StringVar(&mem, "ram", "256M", "the same as --mem")
	fl.StringVar(&listen, "listen-migration", "", "address to receive a migration on (with --incoming)")
	fl.StringVar(&listen, "listen", "", "the same as --listen-migration")
	fl.StringVar(&sock, "control-sock", "", "control socket (default /run/paddock/guest-NAME.sock)")
	fl.BoolVar(&verifyRAM, "verify-ram", false, "with --incoming: rehash all of the received RAM before the digest check, so that it also catches a page changed after it was written (costs a read of all of RAM in the source's downtime)")
	fl.BoolVar(&hugePages, "hugepages", false, "put the guest's RAM on 2 MiB huge pages from the hugetlb pool (sysctl vm.nr_hugepages must leave room for it), as hypervisors run guests: pages come from a reserved pool instead of the page allocator, which makes receiving a migration cheaper; dirty tracking is then per 2 MiB page")
	fl.DurationVar(&idleTimeout, "idle-timeout", 0, "with --incoming: stop when no migration has been under way for this long (0 = wait forever)")
	if !receive {
		fl.StringVar(&rate, "dirty-rate", "0", "bytes the writer dirties per second (K, M, G suffixes)")
		fl.StringVar(&pattern, "pattern", "uniform", "where the writer writes: "+strings.Join(migrate.SynthPatterns, ", "))
		fl.StringVar(&content, "content", "random", "page content: random, or halfzero (even pages stay zero)")
		fl.BoolVar(&incoming, "incoming", false, "wait for a migration instead of starting a guest (as guest receive)")
		fl.Uint64Var(&seed, "seed", 0, "content seed (default: from the clock)")
		fl.StringArrayVar(&volumes, "volume", nil, "a replicated volume the guest uses (repeatable): its primary role follows the guest at a migration (needs --data-dir)")
	} else {
		rate, pattern, content = "0", "uniform", "random"
	}
	fl.StringVar(&tlsf.dataDir, "data-dir", "", "the data dir of the node the guest runs beside: its cluster CA and node certificate authenticate migrations, its control API moves the guest's volumes")
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

	// nodeDir is the data dir of the node this guest runs on (its
	// --data-dir), whose control API moves its volumes; "" without one.
	nodeDir string
	// idleTimeout: a receiver stops when no migration has been under
	// way for this long; 0 = never.
	idleTimeout time.Duration
	// verifyRAM: as a receiver, rehash all of the received RAM before
	// the digest check (migrate.DestOptions.VerifyRAM).
	verifyRAM bool
	// hugePages: the RAM, started or received, is on 2 MiB huge pages.
	hugePages bool

	mu      sync.Mutex
	g       *migrate.SynthGuest
	volumes []string // the guest's volumes; set by a migration in
	state   string   // incoming, receiving, running, migrating, migrated
	// idleSince: when the receiver last started to wait (start, or the
	// end of a failed incoming migration).
	idleSince time.Time
	exit      chan struct{}
	once      sync.Once
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
		if err := p.receive(ctx, listen); errors.Is(err, errReceiverIdle) {
			p.say("no migration came within %v: stopping", p.idleTimeout)
			return nil
		} else if err != nil {
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
		p.say("running, %s RAM, dirty rate %d B/s, %s, %s, volumes %v, control %s", humanBytes(cfg.RAMBytes), cfg.DirtyBytesPerSecond, cfg.Pattern, cfg.Content, p.volumes, sock)
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

// errReceiverIdle: the receiver's idle timeout passed.
var errReceiverIdle = errors.New("receiver idle")

// idleCheckMs spaces the receiver's checks of its idle timeout.
const idleCheckMs = 250

// receive waits for a migration until one commits (or, with an idle
// timeout, until none has been under way for that long).
func (p *guestProc) receive(ctx context.Context, listen string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.mu.Lock()
	p.idleSince = time.Now()
	p.mu.Unlock()
	var idleExpired atomic.Bool
	if p.idleTimeout > 0 {
		go func() {
			t := time.NewTicker(idleCheckMs * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				p.mu.Lock()
				// Only a receiver that waits is stopped: one in the
				// middle of a migration lets it end first. A
				// migration starting just as this fires fails before
				// its commit, and the guest stays at its source.
				idle := p.state == "incoming" && time.Since(p.idleSince) >= p.idleTimeout
				p.mu.Unlock()
				if idle {
					idleExpired.Store(true)
					cancel()
					return
				}
			}
		}()
	}
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
	// node/guestrecv.go reads this line (and "resumed from a
	// migration", "migrated to") to know a receiver it started listens.
	p.say("waiting for a migration on %s (quic and tcp)", listen)
	for {
		var mem *migrate.Memory
		opts := migrate.DestOptions{
			VerifyRAM: p.verifyRAM,
			PrepareRAM: func(ramBytes int64) ([]byte, error) {
				if ramBytes != p.ramBytes {
					return nil, fmt.Errorf("this guest expects %d bytes of RAM (--mem)", p.ramBytes)
				}
				newMem := migrate.NewMemory
				if p.hugePages {
					newMem = migrate.NewHugeMemory
				}
				m, err := newMem(p.name, ramBytes)
				if err != nil {
					return nil, err
				}
				mem = m
				p.setState("receiving")
				return m.Bytes(), nil
			},
			Discard: func() {
				if mem != nil {
					mem.Close()
					mem = nil
				}
				p.mu.Lock()
				if p.state == "receiving" {
					p.state, p.idleSince = "incoming", time.Now()
				}
				p.mu.Unlock()
			},
			Resume: func(state []byte) error {
				vols, inner, err := splitVolumeState(state)
				if err != nil {
					return err
				}
				g, err := migrate.RestoreSynthGuest(mem, inner)
				if err != nil {
					return err
				}
				p.mu.Lock()
				p.g, p.state, p.volumes = g, "running", vols
				p.mu.Unlock()
				return g.Resume()
			},
		}
		st, err := receiveEither(ctx, lq, lt, opts)
		if err == nil {
			p.say("resumed from a migration over %s: %d rounds, device state %d bytes, volumes %v", st.Transport, st.Rounds, st.StateBytes, p.status().Volumes)
			return nil
		}
		if idleExpired.Load() {
			return errReceiverIdle
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
		st, hres, err := p.migrateOut(mctx, req.Migrate, func(pr migrate.Progress) { send(guestResponse{Progress: &pr}) })
		resp := guestResponse{Done: true, Stats: st, Handoff: hres}
		if err != nil {
			resp.Error = err.Error()
		}
		send(resp)
	}
}

func (p *guestProc) status() guestStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := guestStatus{Name: p.name, State: p.state, RAMBytes: p.ramBytes, HugePages: p.hugePages, Pid: os.Getpid(), Volumes: slices.Clone(p.volumes), NodeDir: p.nodeDir}
	if p.g != nil {
		st.Writes = p.g.Writes()
		st.ThrottlePercent = p.g.ThrottlePercent()
	}
	return st
}

// migrateOut sends the guest to m.To. On success (or a commit whose
// confirmation was lost) the guest is gone from here and the process exits.
func (p *guestProc) migrateOut(ctx context.Context, m *migrateRequest, progress func(migrate.Progress)) (*migrate.Stats, *node.HandoffResult, error) {
	p.mu.Lock()
	if p.state != "running" {
		st := p.state
		p.mu.Unlock()
		return nil, nil, fmt.Errorf("guest is %s, not running", st)
	}
	p.state = "migrating"
	g := p.g
	vols := slices.Clone(p.volumes)
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
		return nil, nil, err
	}
	var handoff func(context.Context) error
	var hres *node.HandoffResult
	if len(vols) > 0 {
		if handoff, hres, err = p.prepareHandoff(vols, m.ToNode, m.HandoffTimeoutMs, conn); err != nil {
			conn.Abort("volume hand-off impossible")
			p.say("migration to %s refused, running here: %v", m.To, err)
			return nil, nil, err
		}
	}
	tr, err := g.NewTracker()
	if err != nil {
		conn.Abort("no tracker")
		return nil, nil, err
	}
	st, err := migrate.Migrate(ctx, volumeGuest{g, vols}, tr, conn, migrate.SourceOptions{
		Handoff:                 handoff,
		Compression:             comp,
		DowntimeLimit:           time.Duration(m.DowntimeMs) * time.Millisecond,
		Timeout:                 time.Duration(m.TimeoutMs) * time.Millisecond,
		MaxRounds:               m.MaxRounds,
		NoAutoConverge:          m.NoAutoConverge,
		VerifyRAM:               m.VerifyRAM,
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
		if hres != nil && hres.Node != "" {
			p.say("%s", handoffLine(hres))
		}
		p.once.Do(func() { close(p.exit) })
	} else {
		p.say("migration to %s failed, running here: %v", m.To, err)
		hres = nil
	}
	return st, hres, err
}

// prepareHandoff checks, before any RAM is sent, that the guest's volumes
// can move to the destination's node, and returns the hand-off the
// switchover runs and the result it fills in.
func (p *guestProc) prepareHandoff(vols []string, toNode string, timeoutMs int64, conn migrate.Conn) (func(context.Context) error, *node.HandoffResult, error) {
	if p.nodeDir == "" {
		return nil, nil, errors.New("the guest has volumes but no --data-dir: it cannot reach a node to move them")
	}
	var peer string
	if c := conn.PeerCertificate(); c != nil {
		// With --data-dir both sides show cluster certificates, whose
		// name is the node's.
		peer = c.Subject.CommonName
	}
	target, err := handoffTarget(toNode, peer)
	if err != nil {
		return nil, nil, err
	}
	// The node's answer decides whether the volumes moved, so the call
	// is never abandoned: it lasts at most the hand-off, then its undo.
	timeout := defaultHandoffTimeout
	if timeoutMs > 0 {
		timeout = time.Duration(timeoutMs) * time.Millisecond
	}
	client := node.NewControlClient(node.DataDir{Path: p.nodeDir}, 2*timeout+handoffCallMarginMs*time.Millisecond)
	req := node.HandoffRequest{Volumes: vols, Node: target, CheckOnly: true, TimeoutMs: timeout.Milliseconds()}
	if err := client.Call("POST", "/v1/handoff", req, nil); err != nil {
		return nil, nil, fmt.Errorf("volume hand-off to %s: %w", target, err)
	}
	req.CheckOnly = false
	res := &node.HandoffResult{}
	handoff := func(context.Context) error {
		// The migration's context is not passed on: a cancel arriving
		// mid-hand-off is answered by the node finishing or undoing
		// it, never by leaving it half done (node/handoff.go).
		var r node.HandoffResult
		if err := client.Call("POST", "/v1/handoff", req, &r); err != nil {
			return err
		}
		*res = r
		return nil
	}
	return handoff, res, nil
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

func guestListCmd() *cobra.Command {
	var dataDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list --data-dir DIR [--json]",
		Short: "List the guest processes a node started (receivers of paddock migrate --to NODE)",
		Long: `guest list shows the guest processes the node of --data-dir started as
receivers for "paddock migrate NAME --to NODE": their address, their state
(starting, waiting for a migration, running the guest that came in,
migrated away) and their control socket, which "guest check NAME
--control-sock PATH" takes. Guests started by hand are not listed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var rs []node.GuestReceiver
			if err := node.NewControlClient(node.DataDir{Path: dataDir}, volumeTimeout).Call("GET", "/v1/guests", nil, &rs); err != nil {
				return err
			}
			if asJSON {
				b, _ := json.Marshal(rs)
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tADDR\tRAM\tPID\tSTARTED\tCONTROL SOCKET")
			for _, r := range rs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Name, r.State, r.Addr, humanBytes(r.RAMBytes), r.Pid,
					r.StartedAt.Format(time.RFC3339), r.ControlSock)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the node's data directory")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.MarkFlagRequired("data-dir")
	return cmd
}
