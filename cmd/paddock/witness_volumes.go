package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/paddock-io/paddock/blockrep"
	"github.com/paddock-io/paddock/quorum/witness"
)

// serveWitnessVolumes runs the witness's volume vote (the third voter of
// 2-replica volumes) on the port after the quorum vote's: mutual TLS with
// the cluster CA, the blockrep peer protocol, epochs and generations kept
// in DIR/volumes.
func serveWitnessVolumes(ctx context.Context, d *witness.Dir, listen string, log *slog.Logger) error {
	ap, err := netip.ParseAddrPort(listen)
	if err != nil || ap.Port() == 65535 {
		return fmt.Errorf("witness --listen %q: want IP:PORT below 65535 (the volume vote uses PORT+1)", listen)
	}
	addr := netip.AddrPortFrom(ap.Addr(), ap.Port()+1).String()
	voters, err := blockrep.OpenWitnessVoters(filepath.Join(d.Path, "volumes"))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("witness volume listener on %s (--listen port + 1): %w", addr, err)
	}
	srv := &blockrep.Server{Self: blockrep.WitnessID, Lookup: func(uint64) blockrep.Handler { return voters }, Logger: log}
	tcfg := witness.ServerTLS(d.CA, d.Cert)
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	log.Info("witness volume vote started", "listen", addr)
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			conn := tls.Server(raw, tcfg)
			hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := conn.HandshakeContext(hctx)
			cancel()
			if err != nil {
				log.Warn("volume vote connection refused", "remote", raw.RemoteAddr(), "err", err)
				raw.Close()
				return
			}
			// Any node of the cluster (its certificate says so) may
			// speak for itself: the witness does not know node names.
			srv.ServeConn(ctx, conn, 0)
		}()
	}
}
