package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/nbd"
)

type demoFlags struct {
	size   string
	listen string
	keep   bool
	once   bool
}

func init() {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run paddock locally on the built-in defaults and show what it does",
		Long: `demo starts paddock on this machine with nothing to configure: a volume
backed by a temporary sparse file, exported over NBD on 127.0.0.1. It writes
and reads the volume back through the Go client and, when installed, through
qemu-io (qemu-utils) and nbdinfo (libnbd-bin), then prints the lines to paste
into QEMU or nbdinfo, and serves until Ctrl-C. The temporary file is removed
on exit unless --keep is given.

As paddock grows the demo grows with it, into a local 3-node cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runDemo(cmd.Context(), f) },
	}
	cmd.Flags().StringVar(&f.size, "size", "1G", "size of the demo volume")
	cmd.Flags().StringVar(&f.listen, "listen", "127.0.0.1:10809", "NBD address (a free port is used if this one is taken)")
	cmd.Flags().BoolVar(&f.keep, "keep", false, "keep the volume's file on exit")
	cmd.Flags().BoolVar(&f.once, "once", false, "exit after the walk-through instead of serving (for scripts and tests)")
	rootCmd.AddCommand(cmd)
}

func runDemo(ctx context.Context, f demoFlags) error {
	sizeBytes, err := parseSize(f.size)
	if err != nil {
		return err
	}
	if sizeBytes < 1<<20 {
		return fmt.Errorf("--size must be at least 1M")
	}
	dir, err := os.MkdirTemp("", "paddock-demo-")
	if err != nil {
		return err
	}
	if !f.keep {
		defer os.RemoveAll(dir)
	}
	path := filepath.Join(dir, "demo0.img")
	be, err := nbd.OpenFile(path, sizeBytes, false)
	if err != nil {
		return err
	}
	defer be.Close()
	say := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	say("paddock demo")
	say("  volume  demo0: %s, backed by the sparse file %s", humanBytes(sizeBytes), path)

	srv, err := nbd.NewServer(nbd.Config{
		Exports: nbd.SingleExport(&nbd.Export{Name: "demo0", Description: "paddock demo volume", Backend: be}),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		say("  %s is taken (%v); using a free port instead", f.listen, err)
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return err
		}
	}
	go srv.Serve(ln)
	defer srv.Close()
	addr := ln.Addr().String()
	uri := nbdURI(addr, "demo0", false)
	say("  export  %s (NBD, fixed newstyle, structured replies, FLUSH/FUA/TRIM/WRITE_ZEROES)", uri)
	say("")

	// 1. The built-in client: write a random MiB, read it back.
	c, err := nbd.Dial("tcp", addr, nbd.ClientOptions{Export: "demo0", Structured: true})
	if err != nil {
		return fmt.Errorf("demo client: %w", err)
	}
	want := make([]byte, 1<<20)
	rand.Read(want)
	got := make([]byte, len(want))
	start := time.Now()
	if err := c.WriteAt(want, 0, nbd.CmdFlagFUA); err != nil {
		return err
	}
	if err := c.ReadAt(got, 0); err != nil {
		return err
	}
	c.Close()
	if !bytes.Equal(want, got) {
		return errors.New("demo: data read back differs from what was written")
	}
	say("  ok  wrote 1 MiB with FUA and read it back through paddock's client (%v)", time.Since(start).Round(time.Microsecond))

	// 2. Real clients, where installed.
	if _, err := exec.LookPath("qemu-io"); err == nil {
		out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 1M", "-c", "read -P 0xab 1M 1M", "-c", "flush", uri).CombinedOutput()
		if err != nil || strings.Contains(string(out), "failed") {
			return fmt.Errorf("qemu-io against the demo volume: %v\n%s", err, out)
		}
		say("  ok  qemu-io wrote 0xab over 1 MiB, read it back and flushed")
	} else {
		say("  --  qemu-io not installed (apt-get install qemu-utils) — skipped")
	}
	if _, err := exec.LookPath("nbdinfo"); err == nil {
		out, err := exec.Command("nbdinfo", "--map", uri).CombinedOutput()
		if err != nil {
			return fmt.Errorf("nbdinfo against the demo volume: %v\n%s", err, out)
		}
		say("  ok  nbdinfo --map sees the written data and the holes:")
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			say("        %s", strings.TrimSpace(line))
		}
	} else {
		say("  --  nbdinfo not installed (apt-get install libnbd-bin) — skipped")
	}
	say("")
	say("Attach it:")
	say("  qemu-system-x86_64 -m 1G -drive file=%s,format=raw,cache=none,if=virtio", uri)
	say("  nbdinfo %s", uri)
	say("  qemu-img info %s", uri)
	if f.once {
		return nil
	}
	say("")
	say("Serving until Ctrl-C.")
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	say("\nstopping; flushing the volume")
	return be.Flush()
}
