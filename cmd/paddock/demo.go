package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/bench/replbench"
	"github.com/paddock-io/paddock/nbd"
	"github.com/paddock-io/paddock/node"
)

// Limits of the demo's walk-through.
const (
	demoVolume = "demo0"
	// demoWriteBytes is the most the walk-through writes in each of its
	// two write steps (smaller volumes get less).
	demoWriteBytes = 64 << 20
	// demoChunkBytes is one NBD write of the walk-through.
	demoChunkBytes = 1 << 20
	// demoParallel is how many writes it keeps in flight.
	demoParallel    = 8
	demoSyncTimeout = 2 * time.Minute
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
		Short: "Run a local 3-node paddock cluster with a replicated volume and show what it does",
		Long: `demo starts a paddock cluster on this machine with nothing to configure:
three "paddock node" processes (this executable) on 127.0.0.1, 127.0.0.2 and
127.0.0.3 with their data in a temporary directory, and a volume mirrored on
all three, served over NBD. It prints the volume's NBD URI and the lines to
attach QEMU or nbdinfo, then walks through what replication does, printing
each step as it happens:

  write through the primary (paddock's own NBD client), kill -9 a secondary,
  write more, restart it, watch it resync only what it missed, read the data
  back through another node, and compare the three replicas' data files;
  then start a small synthetic guest (64 MiB of RAM, rewritten at 16 MiB/s)
  whose disk is the volume on n1's side, live-migrate it to n2's side with
  "paddock migrate" (progress bar, stats), and show that the volume's primary
  role followed the guest inside the migration's pause.

When installed, qemu-io (qemu-utils) and nbdinfo (libnbd-bin) are run against
the volume too; nothing but this executable is needed. Then it serves until
Ctrl-C (--once: it exits after the walk-through). The node processes are
stopped and the temporary directory removed on exit (--keep keeps it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runDemo(cmd.Context(), f) },
	}
	cmd.Flags().StringVar(&f.size, "size", "1G", "size of the demo volume")
	cmd.Flags().StringVar(&f.listen, "listen", "127.0.0.1:10809", "NBD address of the first node (replication uses the next port; free ports are used where taken)")
	cmd.Flags().BoolVar(&f.keep, "keep", false, "keep the nodes' data directory on exit")
	cmd.Flags().BoolVar(&f.once, "once", false, "exit after the walk-through instead of serving (for scripts and tests)")
	rootCmd.AddCommand(cmd)
}

func runDemo(ctx context.Context, f demoFlags) error {
	sizeBytes, err := parseSize(f.size)
	if err != nil {
		return err
	}
	if sizeBytes < 16<<20 || sizeBytes%4096 != 0 {
		return fmt.Errorf("--size must be at least 16M and a multiple of 4K")
	}
	host, portStr, err := net.SplitHostPort(f.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", f.listen, err)
	}
	var port int
	fmt.Sscanf(portStr, "%d", &port)
	if ip := net.ParseIP(host); ip == nil || ip.To4() == nil {
		return fmt.Errorf("--listen %q: want an IPv4 address and a port", f.listen)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this executable to start the nodes: %w", err)
	}
	// Ctrl-C at any step stops the nodes and removes their data.
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	say := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }

	say("paddock demo: a 3-node cluster on this machine")
	ips := []string{host, "127.0.0.2", "127.0.0.3"}
	if host == "127.0.0.2" || host == "127.0.0.3" {
		ips = []string{host, "127.0.0.4", "127.0.0.5"}
	}
	start := time.Now()
	cl, err := replbench.StartCluster(ctx, replbench.ClusterConfig{Paddock: exe, IPs: ips, StoragePort: port,
		LogLevel: "info", Name: "demo", Keep: f.keep})
	if err != nil {
		return err
	}
	defer func() {
		cl.Close()
		if f.keep {
			say("kept the nodes' data in %s", cl.Root)
		}
	}()
	for _, n := range cl.Nodes {
		say("  node %s  pid %-7d cluster %-21s storage (NBD) %-21s data %s", n.Name, n.Pid(), n.ClusterAddr, n.StorageAddr, n.Dir)
	}
	if port != 0 && cl.Nodes[0].StorageAddr != f.listen {
		say("  (%s or the port after it was taken: free ports are used instead)", f.listen)
	}
	say("  quorate: 3 members, 3 votes (%v)", time.Since(start).Round(time.Millisecond))

	v, err := cl.CreateVolume(demoVolume, sizeBytes, "n1", "n2", "n3")
	if err != nil {
		return err
	}
	n1, n2, n3 := cl.Nodes[0], cl.Nodes[1], cl.Nodes[2]
	if _, err := n1.WaitUpToDate(ctx, demoVolume, demoSyncTimeout, nil); err != nil {
		return err
	}
	uri := n1.URI(demoVolume)
	say("  volume  %s: %s, 3 replicas (n1 primary, n2, n3), id %d; every write reaches all three before it is acknowledged", demoVolume, humanBytes(sizeBytes), v.ID)
	say("  export  %s (every node serves it; n2 and n3 forward to the primary)", uri)
	say("")
	say("Attach it:")
	say("  qemu-system-x86_64 -m 1G -drive file=%s,format=raw,cache=none,if=virtio", uri)
	say("  nbdinfo %s", uri)
	say("  paddock volume status %s --data-dir %s", demoVolume, n1.Dir)
	say("")
	say("Walk-through:")

	// The expected content of the volume, kept here to check reads.
	want := make([]byte, sizeBytes)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	fill := func(off, n int64) {
		for i := off; i < off+n; i += 8 {
			v := rng.Uint64()
			for j := int64(0); j < 8 && i+j < off+n; j++ {
				want[i+j] = byte(v >> (8 * j))
			}
		}
	}
	c, err := nbd.Dial("tcp", n1.StorageAddr, nbd.ClientOptions{Export: demoVolume, Structured: true})
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", uri, err)
	}
	defer c.Close()
	step := min(sizeBytes/4, demoWriteBytes)

	// 1. Write through the primary.
	fill(0, step)
	t0 := time.Now()
	if err := demoWrite(c, want, 0, step); err != nil {
		return err
	}
	say("  1. wrote %s through the primary n1 and flushed it (paddock's NBD client, %d writes in flight): %v",
		humanBytes(step), demoParallel, time.Since(t0).Round(time.Millisecond))

	// 2. Kill a secondary.
	pid := n3.Pid()
	n3.Kill()
	say("  2. kill -9 n3 (pid %d): the primary drops it from the generation at the next write and counts what it misses", pid)

	// 3. Write more while it is away: new data, and over half of step 1.
	off2 := step / 2
	fill(off2, step)
	t0 = time.Now()
	if err := demoWrite(c, want, off2, step); err != nil {
		return err
	}
	say("  3. wrote %s more and flushed while n3 is away (acknowledged by n1 and n2, a majority): %v", humanBytes(step), time.Since(t0).Round(time.Millisecond))
	if st, err := n1.VolumeStatus(demoVolume); err == nil {
		if pv := replbench.PrimaryPeer(st, n3); pv != nil {
			say("     n1 says of n3: %s, %s out of sync", pv.State, humanBytes(pv.OutOfSyncBytes))
		}
	}

	// 4. Restart it; 5. watch the resync.
	if err := n3.Start(ctx); err != nil {
		return err
	}
	restarted := time.Now()
	say("  4. restarted n3 (pid %d)", n3.Pid())
	lastLine := ""
	st, err := n1.WaitUpToDate(ctx, demoVolume, demoSyncTimeout, func(st node.VolumeStatus) {
		for _, r := range st.Replicas {
			if r.Node != "n3" {
				continue
			}
			line := fmt.Sprintf("%s, %s out of sync, %s resent", r.State, humanBytes(r.OutOfSyncBytes), humanBytes(r.ResentBytes))
			if r.Detail != "" {
				line += " (" + r.Detail + ")"
			}
			if line != lastLine {
				say("     %6s  n3: %s", time.Since(restarted).Round(10*time.Millisecond), line)
				lastLine = line
			}
		}
	})
	if err != nil {
		return err
	}
	pv := replbench.PrimaryPeer(st, n3)
	if pv == nil {
		return errors.New("volume status has no primary view of n3")
	}
	say("  5. n3 is UpToDate again %v after its restart: %s resent for %s of writes it missed (64 KiB regions)",
		time.Since(restarted).Round(10*time.Millisecond), humanBytes(pv.ResentBytes), humanBytes(pv.MissedBytes))

	// 6. Read everything back through another node.
	c2, err := nbd.Dial("tcp", n2.StorageAddr, nbd.ClientOptions{Export: demoVolume, Structured: true})
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", n2.URI(demoVolume), err)
	}
	defer c2.Close()
	end := off2 + step
	got := make([]byte, end)
	for off := int64(0); off < end; off += demoChunkBytes {
		n := min(demoChunkBytes, end-off)
		if err := c2.ReadAt(got[off:off+n], off); err != nil {
			return fmt.Errorf("reading back through n2: %w", err)
		}
	}
	if !bytes.Equal(got, want[:end]) {
		return errors.New("data read back through n2 differs from what was written")
	}
	say("  6. read the %s back through n2 (forwarded to the primary): every byte as written", humanBytes(end))

	// Real clients, where installed (they write too, so before the
	// comparison of the replicas).
	demoRealClients(uri, end, say)

	// 7. The three replicas are the same bytes.
	t0 = time.Now()
	if err := sameFiles(n1.DataPath(v.ID), n2.DataPath(v.ID), n3.DataPath(v.ID)); err != nil {
		return err
	}
	say("  7. compared the three replicas' data files (%s each): byte-identical (%v)", humanBytes(sizeBytes), time.Since(t0).Round(time.Millisecond))

	// 8-10. Live migration: a guest using the volume moves to n2's
	// side, and the volume's primary role with it.
	guest, err := demoMigrate(ctx, exe, cl, 8, say)
	if err != nil {
		return err
	}
	defer guest.stop()
	say("")
	say("The cluster goes on serving %s (primary n2), and the guest runs on n2's side. Try, in another shell:", uri)
	say("  paddock volume status %s --data-dir %s", demoVolume, n1.Dir)
	say("  paddock guest check %s --control-sock %s", demoGuestName, filepath.Join(cl.Root, "guest-n2.sock"))
	say("  kill -9 %d    # n3; writes go on with n1 and n2, and n3 resyncs when restarted", n3.Pid())
	if f.once {
		return nil
	}
	say("")
	say("Serving until Ctrl-C.")
	<-ctx.Done()
	say("\nstopping the nodes")
	return nil
}

// demoWrite writes want[off:off+n] in 1 MiB writes, several in flight,
// then flushes (every replica that acknowledged makes them durable).
func demoWrite(c *nbd.Client, want []byte, off, n int64) error {
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	sem := make(chan struct{}, demoParallel)
	for pos := off; pos < off+n; pos += demoChunkBytes {
		l := min(demoChunkBytes, off+n-pos)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := c.WriteAt(want[pos:pos+l], pos, 0); err != nil {
				once.Do(func() { firstErr = fmt.Errorf("write at %d: %w", pos, err) })
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return c.Flush()
}

// demoRealClients runs qemu-io and nbdinfo against the volume when they
// are installed. They are shown, not required: a failure is printed.
func demoRealClients(uri string, off int64, say func(string, ...any)) {
	at := fmt.Sprintf("%dk", off>>10)
	if _, err := exec.LookPath("qemu-io"); err == nil {
		out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0xab "+at+" 1M", "-c", "read -P 0xab "+at+" 1M", "-c", "flush", uri).CombinedOutput()
		if err != nil || strings.Contains(string(out), "failed") {
			say("  !!  qemu-io against the volume failed: %v: %s", err, strings.TrimSpace(string(out)))
		} else {
			say("  ok  qemu-io wrote 0xab over 1 MiB at %s through the primary, read it back and flushed", humanBytes(off))
		}
	} else {
		say("  --  qemu-io not installed (apt-get install qemu-utils): skipped")
	}
	if _, err := exec.LookPath("nbdinfo"); err == nil {
		out, err := exec.Command("nbdinfo", uri).CombinedOutput()
		if err != nil {
			say("  !!  nbdinfo against the volume failed: %v: %s", err, strings.TrimSpace(string(out)))
		} else {
			for _, l := range strings.Split(string(out), "\n") {
				if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && (k == "export-size" || k == "can_multi_conn" || k == "can_fua") {
					say("  ok  nbdinfo: %s: %s", k, strings.TrimSpace(v))
				}
			}
		}
	} else {
		say("  --  nbdinfo not installed (apt-get install libnbd-bin): skipped")
	}
}

// sameFiles compares files byte by byte.
func sameFiles(paths ...string) error {
	var fs []*os.File
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fs = append(fs, f)
	}
	const chunk = 4 << 20
	bufs := make([][]byte, len(fs))
	for i := range bufs {
		bufs[i] = make([]byte, chunk)
	}
	for off := int64(0); ; off += chunk {
		var n0 int
		for i, f := range fs {
			n, err := io.ReadFull(f, bufs[i])
			if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
				return err
			}
			if i == 0 {
				n0 = n
			} else if n != n0 || !bytes.Equal(bufs[0][:n], bufs[i][:n]) {
				return fmt.Errorf("%s and %s differ in the 4 MiB at offset %d", paths[0], paths[i], off)
			}
		}
		if n0 < chunk {
			return nil
		}
	}
}
