// Package replbench measures paddock's replicated volumes on one machine:
// fio (nbd engine) against volumes of 1, 2 and 3 replicas on a local
// 3-node cluster of real "paddock node" processes, with a single-node
// "paddock serve" export of the same size as the baseline, interleaved in
// one run; and the resync of a replica killed with kill -9 while writes
// went on (its rate, and the bytes resent against the bytes missed).
//
// It also holds the local cluster helper (cluster.go) that "paddock demo"
// uses.
package replbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Config of a run.
type Config struct {
	// Paddock is the paddock executable (nodes and the baseline).
	Paddock string
	// Dir holds the nodes' data and the baseline's file: tmpfs by
	// default, so that the disk (shared, noisy) is not what is measured.
	Dir     string
	Reps    int
	Runtime time.Duration
	Ramp    time.Duration
	// SizeBytes is the size of every measured volume and of the
	// baseline's file.
	SizeBytes int64
	// ResyncBytes is what is written while a replica is away, over a
	// 3-replica volume of that size.
	ResyncBytes int64
	// Workloads is a comma-separated subset of Workloads (empty: all).
	Workloads string
	// NoResync skips the resync trials.
	NoResync bool
	// PerfDir, when set, makes one extra, unmeasured run of every
	// workload on the 3-replica volume at the end with "perf record -g"
	// attached to the three node processes, writing <workload>.perf.data
	// there.
	PerfDir  string
	Progress io.Writer
	// Command is the command line printed above the table.
	Command string
}

// Defaults.
const (
	DefaultDir         = "/dev/shm"
	DefaultReps        = 3
	DefaultRuntime     = 5 * time.Second
	DefaultRamp        = time.Second
	DefaultSizeBytes   = 512 << 20
	DefaultResyncBytes = 256 << 20

	// upToDateTimeout bounds the wait for a volume to be UpToDate
	// between runs; resyncTimeout the wait in a resync trial.
	upToDateTimeout = 2 * time.Minute
	resyncTimeout   = 5 * time.Minute
	// resyncPollStep is how often a resync trial asks for status: the
	// resolution of its timings.
	// resyncPollStep spaces the status polls of a resync trial: a status
	// fans out to every node over HTTPS, so polling every 10 ms (as
	// before) took CPU from the resync it timed. The time Syncing comes
	// from the primary's own log line instead (resyncTookFromLog).
	resyncPollStep = 100 * time.Millisecond
)

// Target is one export the workloads run against.
type Target struct {
	Name  string `json:"name"`
	Label string `json:"label"`
	// Replicas is the volume's replica count; 0 is the single-node
	// baseline (paddock serve, no replication).
	Replicas int `json:"replicas"`
}

// Targets, in report order.
var Targets = []Target{
	{Name: "single", Label: "single node (paddock serve)", Replicas: 0},
	{Name: "r1", Label: "1 replica", Replicas: 1},
	{Name: "r2", Label: "2 replicas", Replicas: 2},
	{Name: "r3", Label: "3 replicas", Replicas: 3},
}

// resyncVolume is the 3-replica volume of the resync trials.
const resyncVolume = "resync"

// ResyncTrial is one kill -9 / write / restart / resync of a secondary.
type ResyncTrial struct {
	// WrittenBytes went through the primary while the replica was away.
	WrittenBytes int64 `json:"written_bytes"`
	OffsetBytes  int64 `json:"offset_bytes"`
	// MissedBytes and ResentBytes are the primary's counters for that
	// replica over the trial.
	MissedBytes int64 `json:"missed_bytes"`
	ResentBytes int64 `json:"resent_bytes"`
	// RestartToUpToDateSeconds is from starting the replica's process
	// again to volume status showing every replica UpToDate.
	RestartToUpToDateSeconds float64 `json:"restart_to_uptodate_seconds"`
	// SyncingSeconds is from the primary's resync start (its
	// resync_started_ago) to UpToDate: what "volume status" shows.
	SyncingSeconds float64 `json:"syncing_seconds"`
	// TransferSeconds is from the last status that showed nothing
	// resent yet to UpToDate: the data transfer alone, as 100 ms polls
	// see it (JSON only; the time Syncing is the primary's own clock).
	TransferSeconds float64 `json:"transfer_seconds"`
	Err             string  `json:"error,omitempty"`
}

// SyncingBytesPerSecond is the resync rate as "volume status" shows it.
func (t ResyncTrial) SyncingBytesPerSecond() float64 {
	if t.SyncingSeconds <= 0 {
		return 0
	}
	return float64(t.ResentBytes) / t.SyncingSeconds
}

// TransferBytesPerSecond is the rate of the transfer alone.
func (t ResyncTrial) TransferBytesPerSecond() float64 {
	if t.TransferSeconds <= 0 {
		return 0
	}
	return float64(t.ResentBytes) / t.TransferSeconds
}

// ResentRatio is bytes resent / bytes missed.
func (t ResyncTrial) ResentRatio() float64 {
	if t.MissedBytes <= 0 {
		return 0
	}
	return float64(t.ResentBytes) / float64(t.MissedBytes)
}

type bench struct {
	cfg     Config
	cl      *Cluster
	uris    map[string]string // target name -> NBD URI
	serve   *exec.Cmd
	serveCh chan struct{}
	log     func(string, ...any)
}

// Run starts the cluster and the baseline, runs every repetition and
// returns the report. ctx ending stops it early with what was measured.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Paddock == "" {
		return nil, errors.New("no paddock executable")
	}
	if _, err := exec.LookPath("fio"); err != nil {
		return nil, errors.New("fio is not installed (Debian: apt-get install fio)")
	}
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir
	}
	if cfg.Reps <= 0 {
		cfg.Reps = DefaultReps
	}
	if cfg.Runtime <= 0 {
		cfg.Runtime = DefaultRuntime
	}
	if cfg.Ramp < 0 {
		cfg.Ramp = 0
	}
	if cfg.SizeBytes <= 0 {
		cfg.SizeBytes = DefaultSizeBytes
	}
	if cfg.ResyncBytes <= 0 {
		cfg.ResyncBytes = DefaultResyncBytes
	}
	if cfg.SizeBytes%(1<<20) != 0 || cfg.ResyncBytes%(1<<20) != 0 {
		return nil, errors.New("sizes must be whole MiB")
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	ws, err := SelectWorkloads(cfg.Workloads)
	if err != nil {
		return nil, err
	}
	b := &bench{cfg: cfg, uris: map[string]string{},
		log: func(f string, a ...any) { fmt.Fprintf(cfg.Progress, f+"\n", a...) }}
	rep := &Report{Command: cfg.Command, Date: time.Now().UTC().Format("2006-01-02"), Machine: DescribeMachine(cfg.Dir),
		Dir: cfg.Dir, Reps: cfg.Reps, RuntimeSeconds: cfg.Runtime.Seconds(), RampSeconds: cfg.Ramp.Seconds(),
		SizeBytes: cfg.SizeBytes, Targets: Targets, Runs: map[string]map[string][]RunResult{}}
	for _, w := range ws {
		rep.Workloads = append(rep.Workloads, w.Name)
		rep.Runs[w.Name] = map[string][]RunResult{}
	}
	if !cfg.NoResync {
		rep.ResyncBytes = cfg.ResyncBytes
	}
	if err := b.setup(ctx); err != nil {
		b.close()
		return nil, err
	}
	defer b.close()
	// Lay the data down once, so no measured run pays for first writes
	// (tmpfs page allocation, block checksums of fresh blocks).
	for _, t := range Targets {
		b.log("filling %s (%s)", t.Label, humanMiB(cfg.SizeBytes))
		if _, err := runFio(ctx, 10*time.Minute, fillArgs(b.uris[t.Name], cfg.SizeBytes)); err != nil {
			return nil, fmt.Errorf("filling %s: %w", t.Label, err)
		}
	}
	// The resync volume too: a resync then overwrites data that is
	// there, as a returning replica's disk holds it, instead of
	// allocating tmpfs pages for the first time (on this VM, memory the
	// host has not backed yet costs 2 to 2.5 CPU-s per GiB to touch:
	// the first two trials measured that rather than the resync). Every
	// extent of it is then hot on every replica, so each restart of n3
	// names all of them for a comparison: a resend of the half it did
	// not miss would show in the ratio.
	if !cfg.NoResync {
		b.log("filling the resync volume (%s)", humanMiB(2*cfg.ResyncBytes))
		if _, err := runFio(ctx, 10*time.Minute, fillArgs(b.cl.Nodes[0].URI(resyncVolume), 2*cfg.ResyncBytes)); err != nil {
			return nil, fmt.Errorf("filling the resync volume: %w", err)
		}
	}
	limit := cfg.Runtime + cfg.Ramp + 60*time.Second
	for r := 0; r < cfg.Reps && ctx.Err() == nil; r++ {
		for wi, w := range ws {
			// Rotate the order each time so that no target is always
			// the first (or the last) after a change of workload.
			for k := range Targets {
				t := Targets[(k+r+wi)%len(Targets)]
				if ctx.Err() != nil {
					break
				}
				if err := b.waitAll(ctx); err != nil {
					return nil, err
				}
				pids := b.pids(t)
				cpu0, sw0, t0 := cpuSeconds(pids), contextSwitches(pids), time.Now()
				res, err := runFio(ctx, limit, measuredArgs(w, b.uris[t.Name], cfg.Runtime, cfg.Ramp, cfg.SizeBytes))
				wall := time.Since(t0).Seconds()
				res.ServerCores = (cpuSeconds(pids) - cpu0) / wall
				res.ServerSwitches = (contextSwitches(pids) - sw0) / wall
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					res.Err = err.Error()
					b.log("rep %d %s %s: %v", r+1, w.Name, t.Name, err)
				} else {
					b.log("rep %d %-20s %-7s %8.0f IOPS %7.1f MB/s  write p50 %5.0f µs p99 %6.0f µs%s  cores: servers %.2f fio %.2f (%.0f µs CPU/write, %.1f switches/write)",
						r+1, w.Name, t.Name, res.IOPS, res.BytesPerSecond/1e6, res.WriteP50Ns/1e3, res.WriteP99Ns/1e3, flushNote(res),
						res.ServerCores, res.FioCores, res.CPUMicrosPerWrite(), res.SwitchesPerWrite())
				}
				rep.Runs[w.Name][t.Name] = append(rep.Runs[w.Name][t.Name], res)
			}
		}
		if !cfg.NoResync && ctx.Err() == nil {
			tr := b.resyncTrial(ctx, r)
			if tr.Err != "" {
				b.log("rep %d resync: %s", r+1, tr.Err)
			} else {
				b.log("rep %d resync: %s missed, %s resent (%.2fx), syncing %.2fs (%.0f MB/s), transfer %.2fs (%.0f MB/s), restart to UpToDate %.2fs",
					r+1, humanMiB(tr.MissedBytes), humanMiB(tr.ResentBytes), tr.ResentRatio(), tr.SyncingSeconds,
					tr.SyncingBytesPerSecond()/1e6, tr.TransferSeconds, tr.TransferBytesPerSecond()/1e6, tr.RestartToUpToDateSeconds)
			}
			rep.Resync = append(rep.Resync, tr)
		}
	}
	if cfg.PerfDir != "" && ctx.Err() == nil {
		if err := b.perfRuns(ctx, ws, limit); err != nil {
			b.log("perf: %v", err)
		}
	}
	rep.Interrupted = ctx.Err() != nil
	return rep, nil
}

// pids are the server processes of a target: paddock serve, or every node
// (replication work lands on the secondaries too).
func (b *bench) pids(t Target) []int {
	if t.Replicas == 0 {
		return []int{b.serve.Process.Pid}
	}
	var pids []int
	for _, n := range b.cl.Nodes {
		if p := n.Pid(); p != 0 {
			pids = append(pids, p)
		}
	}
	return pids
}

func flushNote(r RunResult) string {
	if r.FlushP50Ns == 0 && r.FlushP99Ns == 0 {
		return ""
	}
	return fmt.Sprintf("  flush p50 %5.0f µs p99 %6.0f µs", r.FlushP50Ns/1e3, r.FlushP99Ns/1e3)
}

// setup starts the 3-node cluster on 127.0.0.31-33, the volumes (all
// with their primary on n1, where fio connects) and the baseline on
// 127.0.0.30.
func (b *bench) setup(ctx context.Context) error {
	b.log("starting 3 paddock nodes on 127.0.0.31-33 (data in %s)", b.cfg.Dir)
	cl, err := StartCluster(ctx, ClusterConfig{Paddock: b.cfg.Paddock, Dir: b.cfg.Dir, Name: "bench",
		IPs: []string{"127.0.0.31", "127.0.0.32", "127.0.0.33"}, LogLevel: "warn"})
	if err != nil {
		return err
	}
	b.cl = cl
	names := []string{"n1", "n2", "n3"}
	for _, t := range Targets {
		if t.Replicas == 0 {
			continue
		}
		if _, err := cl.CreateVolume(t.Name, b.cfg.SizeBytes, names[:t.Replicas]...); err != nil {
			return err
		}
		b.uris[t.Name] = cl.Nodes[0].URI(t.Name)
	}
	if !b.cfg.NoResync {
		if _, err := cl.CreateVolume(resyncVolume, 2*b.cfg.ResyncBytes, names...); err != nil {
			return err
		}
	}
	if err := b.waitAll(ctx); err != nil {
		return err
	}
	// The baseline: the same file store and NBD server, no replication.
	port, err := freePort("127.0.0.30")
	if err != nil {
		return err
	}
	addr := net.JoinHostPort("127.0.0.30", strconv.Itoa(port))
	b.serve = exec.Command(b.cfg.Paddock, "serve", "--file", filepath.Join(cl.Root, "single.img"),
		"--size", strconv.FormatInt(b.cfg.SizeBytes, 10), "--listen", addr, "--name", "single", "--log-level", "warn")
	b.serve.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	b.serve.Stdout, b.serve.Stderr = os.Stderr, os.Stderr
	if err := b.serve.Start(); err != nil {
		return err
	}
	b.serveCh = make(chan struct{})
	go func() { b.serve.Wait(); close(b.serveCh) }()
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if i > 200 {
			return fmt.Errorf("paddock serve did not listen on %s", addr)
		}
		time.Sleep(25 * time.Millisecond)
	}
	b.uris["single"] = "nbd://" + addr + "/single"
	return nil
}

func (b *bench) close() {
	if b.serve != nil && b.serve.Process != nil {
		b.serve.Process.Kill()
		<-b.serveCh
	}
	if b.cl != nil {
		b.cl.Close()
	}
}

// waitAll waits until every volume is UpToDate.
func (b *bench) waitAll(ctx context.Context) error {
	vols := []string{}
	for _, t := range Targets {
		if t.Replicas > 0 {
			vols = append(vols, t.Name)
		}
	}
	if !b.cfg.NoResync {
		vols = append(vols, resyncVolume)
	}
	for _, v := range vols {
		if _, err := b.cl.Nodes[0].WaitUpToDate(ctx, v, upToDateTimeout, nil); err != nil {
			return err
		}
	}
	return nil
}

// resyncTrial kills n3, writes ResyncBytes through the primary on n1,
// restarts n3 and times its resync. The volume is twice that size, was
// written whole before the trials, and the trials write its halves in
// turn: n3's activity log holds extents outside what it missed, so a
// resend of its hot extents would show in the ratio.
func (b *bench) resyncTrial(ctx context.Context, trial int) ResyncTrial {
	off := int64(trial%2) * b.cfg.ResyncBytes
	tr := ResyncTrial{WrittenBytes: b.cfg.ResyncBytes, OffsetBytes: off}
	fail := func(err error) ResyncTrial { tr.Err = err.Error(); return tr }
	if err := b.waitAll(ctx); err != nil {
		return fail(err)
	}
	n1, n3 := b.cl.Nodes[0], b.cl.Nodes[2]
	st, err := n1.VolumeStatus(resyncVolume)
	if err != nil {
		return fail(err)
	}
	before := PrimaryPeer(st, n3)
	if before == nil {
		return fail(errors.New("no primary view of n3 before the trial"))
	}
	n3.Kill()
	if _, err := runFio(ctx, 10*time.Minute, append(fillArgs(n1.URI(resyncVolume), b.cfg.ResyncBytes), fmt.Sprintf("--offset=%d", off))); err != nil {
		n3.Start(ctx)
		return fail(fmt.Errorf("writing while n3 is away: %w", err))
	}
	var logFrom int64
	if fi, err := os.Stat(n1.LogPath()); err == nil {
		logFrom = fi.Size()
	}
	restart := time.Now()
	if err := n3.Start(ctx); err != nil {
		return fail(err)
	}
	var syncStart, lastNothingSent time.Time
	lastNothingSent = restart
	deadline := restart.Add(resyncTimeout)
	for {
		at := time.Now()
		st, err := n1.VolumeStatus(resyncVolume)
		if err == nil {
			pv := PrimaryPeer(st, n3)
			if pv != nil && pv.SyncingFor > 0 {
				if s := at.Add(-pv.SyncingFor); syncStart.IsZero() || s.Before(syncStart) {
					syncStart = s
				}
			}
			if pv != nil && pv.ResentBytes == before.ResentBytes {
				lastNothingSent = at
			}
			if UpToDate(st) && pv != nil {
				end := time.Now()
				tr.MissedBytes = pv.MissedBytes - before.MissedBytes
				tr.ResentBytes = pv.ResentBytes - before.ResentBytes
				tr.RestartToUpToDateSeconds = end.Sub(restart).Seconds()
				tr.TransferSeconds = end.Sub(lastNothingSent).Seconds()
				// The primary's own clock, in order of precision: its
				// status's last resync (this one if it ended after the
				// restart), its log (at info level), the polls.
				switch took, ok := resyncTookFromLog(n1.LogPath(), resyncVolume, logFrom); {
				case pv.LastResyncEndedAgo > 0 && pv.LastResyncEndedAgo < time.Since(restart):
					tr.SyncingSeconds = pv.LastResync.Seconds()
				case ok:
					tr.SyncingSeconds = took.Seconds()
				case !syncStart.IsZero():
					tr.SyncingSeconds = end.Sub(syncStart).Seconds()
				}
				return tr
			}
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("n3 not UpToDate within %v of its restart", resyncTimeout))
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(resyncPollStep):
		}
	}
}

// perfRuns runs every workload once more on the 3-replica volume with
// perf recording the three nodes.
func (b *bench) perfRuns(ctx context.Context, ws []Workload, limit time.Duration) error {
	if _, err := exec.LookPath("perf"); err != nil {
		return errors.New("perf is not installed")
	}
	if err := os.MkdirAll(b.cfg.PerfDir, 0o755); err != nil {
		return err
	}
	var pids []string
	for _, n := range b.cl.Nodes {
		pids = append(pids, strconv.Itoa(n.Pid()))
	}
	for _, w := range ws {
		if err := b.waitAll(ctx); err != nil {
			return err
		}
		out := filepath.Join(b.cfg.PerfDir, w.Name+".perf.data")
		perf := exec.Command("perf", "record", "-F", "999", "-g", "-o", out, "-p", strings.Join(pids, ","))
		perf.Stdout, perf.Stderr = io.Discard, io.Discard
		if err := perf.Start(); err != nil {
			return err
		}
		res, err := runFio(ctx, limit, measuredArgs(w, b.uris["r3"], b.cfg.Runtime, b.cfg.Ramp, b.cfg.SizeBytes))
		perf.Process.Signal(os.Interrupt)
		perf.Wait()
		if err != nil {
			return err
		}
		b.log("perf %s on 3 replicas (not measured): %.0f IOPS, %.1f MB/s -> %s", w.Name, res.IOPS, res.BytesPerSecond/1e6, out)
	}
	return nil
}

// SelectWorkloads returns the named workloads (comma-separated; empty:
// all) in report order.
func SelectWorkloads(list string) ([]Workload, error) {
	list = strings.TrimSpace(list)
	if list == "" {
		return Workloads, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		found := false
		for _, w := range Workloads {
			found = found || w.Name == n
		}
		if !found {
			var all []string
			for _, w := range Workloads {
				all = append(all, w.Name)
			}
			return nil, fmt.Errorf("unknown workload %q (known: %s)", n, strings.Join(all, ", "))
		}
		want[n] = true
	}
	var ws []Workload
	for _, w := range Workloads {
		if want[w.Name] {
			ws = append(ws, w)
		}
	}
	if len(ws) == 0 {
		return nil, errors.New("empty workload list")
	}
	return ws, nil
}

func humanMiB(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

// resyncTookFromLog reads the duration of the volume's last resync from
// a node's log after offset from: the primary's line at the end of a
// resync, whose took runs from the resync's start to the replica's
// return to the generation.
func resyncTookFromLog(path, volume string, from int64) (time.Duration, bool) {
	re := regexp.MustCompile(`msg="replica caught up and rejoined the generation".* volume_name=` + regexp.QuoteMeta(volume) + ` .* took=([0-9.]+[a-zµ]+)`)
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return 0, false
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<20))
	if err != nil {
		return 0, false
	}
	all := re.FindAllSubmatch(b, -1)
	if len(all) == 0 {
		return 0, false
	}
	d, err := time.ParseDuration(string(all[len(all)-1][1]))
	return d, err == nil
}
