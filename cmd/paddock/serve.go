package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/nbd"
)

type serveFlags struct {
	file         string
	size         string
	listen       string
	name         string
	readOnly     bool
	tlsCert      string
	tlsKey       string
	tlsRequire   bool
	backendDelay time.Duration
	logLevel     string
	cpuProfile   string
}

func init() {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve --file PATH [--size 1G] [--listen 127.0.0.1:10809] [--name NAME]",
		Short: "Export one file or block device over NBD (no replication)",
		Long: `serve exports a single file or block device over NBD on one node, with no
replication: the building block the replicated volumes stand on, and useful on
its own. A missing file is created sparse with --size.

Clients attach with the URI it prints, for example:
  qemu-system-x86_64 -drive file=nbd://127.0.0.1:10809/disk0,format=raw,cache=none
  nbdinfo nbd://127.0.0.1:10809/disk0

FLUSH and FUA are honoured with fdatasync, TRIM punches holes, block status
comes from the file's holes. With --tls-cert/--tls-key clients may use TLS;
--tls-require refuses clients that do not.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runServe(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.file, "file", "", "file or block device to export (required)")
	fl.StringVar(&f.size, "size", "", "size when creating the file, e.g. 1G, 512M (must match an existing file)")
	fl.StringVar(&f.listen, "listen", "127.0.0.1:10809", "address to listen on")
	fl.StringVar(&f.name, "name", "", "export name (default: the file's base name); the empty name also reaches it")
	fl.BoolVar(&f.readOnly, "read-only", false, "export read-only")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate for STARTTLS")
	fl.StringVar(&f.tlsKey, "tls-key", "", "PEM private key for STARTTLS")
	fl.BoolVar(&f.tlsRequire, "tls-require", false, "refuse clients that do not use TLS")
	fl.DurationVar(&f.backendDelay, "backend-delay", 0, "add this latency to every backend call (benchmarks only)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.cpuProfile, "cpu-profile", "", "write a Go CPU profile to this file until exit (diagnostics)")
	fl.MarkHidden("backend-delay")
	fl.MarkHidden("cpu-profile")
	cmd.MarkFlagRequired("file")
	rootCmd.AddCommand(cmd)
}

func runServe(ctx context.Context, f serveFlags) error {
	log := newLogger(f.logLevel)
	if f.cpuProfile != "" {
		stopProfile, err := startCPUProfile(f.cpuProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	sizeBytes, err := parseSize(f.size)
	if err != nil {
		return err
	}
	be, err := nbd.OpenFile(f.file, sizeBytes, f.readOnly)
	if err != nil {
		return err
	}
	defer be.Close()
	name := f.name
	if name == "" {
		name = baseName(f.file)
	}
	var backend nbd.Backend = be
	if f.backendDelay > 0 {
		backend = nbd.NewDelayBackend(be, f.backendDelay)
	}
	cfg := nbd.Config{
		Exports: nbd.SingleExport(&nbd.Export{Name: name, Backend: backend}),
		Logger:  log,
	}
	if f.tlsCert != "" || f.tlsKey != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return fmt.Errorf("loading TLS certificate: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		cfg.TLSMode = nbd.TLSAllow
		if f.tlsRequire {
			cfg.TLSMode = nbd.TLSRequire
		}
	} else if f.tlsRequire {
		return fmt.Errorf("--tls-require needs --tls-cert and --tls-key")
	}
	srv, err := nbd.NewServer(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	uri := nbdURI(ln.Addr().String(), name, cfg.TLSMode == nbd.TLSRequire)
	log.Info("serving", "uri", uri, "file", f.file, "bytes", be.Size(), "read_only", f.readOnly)
	fmt.Fprintf(os.Stderr, "paddock: serving %s (%s) at %s\n", f.file, humanBytes(be.Size()), uri)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if ferr := be.Flush(); ferr != nil && err == nil {
		err = ferr
	}
	return err
}

func nbdURI(addr, name string, tlsOnly bool) string {
	scheme := "nbd"
	if tlsOnly {
		scheme = "nbds"
	}
	return fmt.Sprintf("%s://%s/%s", scheme, addr, name)
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
