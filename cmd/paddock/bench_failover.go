package main

// paddock bench failover: kill -9 the node of a volume's primary while
// clients write unique values through it, and measure the time from the
// kill to the first write acknowledged again (the clients reconnect
// through another node; the survivors detect the loss, fence, move the
// primary role and promote). Two modes: a power fence (fence_dummy, its
// power in a file) for every node, or no fence device at all (the
// survivors wait out the victim's self-fence lease). The history of every
// client operation is checked at the end (internal/history): an
// acknowledged write lost in any trial is counted.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/paddock-io/paddock/bench/quorumbench"
	"github.com/paddock-io/paddock/bench/replbench"
	"github.com/paddock-io/paddock/internal/history"
	"github.com/paddock-io/paddock/nbd"
)

// Limits of the failover bench: each bounds a wait on processes the bench
// started on this machine; the failover itself is what is measured.
const (
	failoverAckTimeout    = 60 * time.Second  // kill to first acknowledged write
	failoverResyncTimeout = 120 * time.Second // restart of the victim to all UpToDate
	failoverAimTimeout    = 15 * time.Second  // clients writing through the primary's node
	failoverDialTimeout   = 2 * time.Second
	failoverOpTimeout     = 10 * time.Second
	failoverVolumeBytes   = 16 << 20
	failoverVolume        = "vm"
	failoverMaxRuns       = 1000
	failoverMaxClients    = 16
)

type failoverConfig struct {
	Paddock  string
	Runs     int
	Modes    []string // "fence", "self"
	Clients  int
	Blocks   int64
	IPs      []string
	Progress io.Writer
	// Keep leaves the clusters' directories (node logs) in place.
	Keep bool
	// SettleMs is a pause between a victim's resync and the next kill.
	// 0 measures back-to-back trials; BENCHMARKS.md explains why a
	// pause longer than node/ha.go's fenceRetryMs (5 s) changes the
	// outliers.
	SettleMs int64
}

// failoverTrial is one kill. Times are ms after the kill; 0 when the
// phase was not seen in the logs.
type failoverTrial struct {
	Victim     string  `json:"victim"`
	NewPrimary string  `json:"new_primary"`
	FailoverMs float64 `json:"failover_ms"` // kill to first acknowledged write
	DetectMs   float64 `json:"detect_ms"`   // first survivor membership change
	FencedMs   float64 `json:"fenced_ms"`   // power fence verified
	MovedMs    float64 `json:"moved_ms"`    // configuration names the new primary
	PromotedMs float64 `json:"promoted_ms"` // new primary raised the epoch
	AckNode    string  `json:"ack_node"`    // node the first write went through
	ResyncMs   float64 `json:"resync_ms"`   // victim restarted to all UpToDate
}

type failoverModeResult struct {
	Mode              string             `json:"mode"`
	Runs              int                `json:"runs"`
	MedianMs          float64            `json:"median_ms"`
	P99Ms             float64            `json:"p99_ms"`
	MinMs             float64            `json:"min_ms"`
	MaxMs             float64            `json:"max_ms"`
	Phases            map[string]float64 `json:"phase_medians_ms"`
	AckedWrites       int                `json:"acked_writes"`
	Unknown           int                `json:"unknown_writes"`
	LostWrites        int                `json:"lost_writes"`
	Violations        []string           `json:"violations"`
	ReplicasIdentical bool               `json:"replicas_identical"`
	Trials            []failoverTrial    `json:"trials"`
}

func init() {
	var cfg failoverConfig
	var asJSON bool
	var mode string
	cmd := &cobra.Command{
		Use:   "failover [--runs 20] [--mode both|fence|self] [--json]",
		Short: "Time from kill -9 of a volume's primary node to the first write acknowledged again",
		Long: `bench failover starts 3 local nodes (127.0.0.61-63, default token), a
3-replica volume and clients writing unique values to its blocks through the
primary's node; then, --runs times, it kills that node (SIGKILL) and
measures the time until a client (reconnecting through another node) gets a
write acknowledged, restarts the victim and waits for its resync. Mode
"fence" configures fence_dummy (power in a file) for every node; mode "self"
configures no fence device, so the survivors wait out the victim's lease.
Every operation is recorded and checked at the end (acknowledged writes
lost, stale or phantom reads, two primaries in one epoch) and the replicas'
data files are compared byte for byte. Progress on stderr, a markdown table
on stdout (--json: JSON).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.Runs < 1 || cfg.Runs > failoverMaxRuns {
				return fmt.Errorf("--runs %d: want 1..%d", cfg.Runs, failoverMaxRuns)
			}
			if cfg.Clients < 1 || cfg.Clients > failoverMaxClients {
				return fmt.Errorf("--clients %d: want 1..%d", cfg.Clients, failoverMaxClients)
			}
			if cfg.Blocks < 1 || cfg.Blocks*histBlockBytes > failoverVolumeBytes {
				return fmt.Errorf("--blocks %d: want 1..%d", cfg.Blocks, failoverVolumeBytes/histBlockBytes)
			}
			if cfg.SettleMs < 0 || cfg.SettleMs > 60000 {
				return fmt.Errorf("--settle-ms %d: want 0..60000", cfg.SettleMs)
			}
			switch mode {
			case "both":
				cfg.Modes = []string{"fence", "self"}
			case "fence", "self":
				cfg.Modes = []string{mode}
			default:
				return fmt.Errorf("--mode %q: want both, fence or self", mode)
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.Paddock = exe
			cfg.Progress = cmd.ErrOrStderr()
			cfg.IPs = []string{"127.0.0.61", "127.0.0.62", "127.0.0.63"}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var results []failoverModeResult
			for _, m := range cfg.Modes {
				r, err := runFailoverMode(ctx, cfg, m)
				if err != nil {
					return fmt.Errorf("mode %s: %w", m, err)
				}
				results = append(results, r)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				b, _ := json.MarshalIndent(results, "", "  ")
				fmt.Fprintln(out, string(b))
			} else {
				fmt.Fprint(out, failoverMarkdown(results, "paddock bench failover "+strings.Join(os.Args[3:], " ")))
			}
			for _, r := range results {
				if r.LostWrites > 0 || len(r.Violations) > 0 || !r.ReplicasIdentical {
					return fmt.Errorf("mode %s: the history or the replicas show a violation", r.Mode)
				}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&cfg.Runs, "runs", 20, "trials (kills) per mode")
	cmd.Flags().StringVar(&mode, "mode", "both", "fence (fence_dummy power fence), self (no fence device: lease) or both")
	cmd.Flags().IntVar(&cfg.Clients, "clients", 2, "concurrent NBD clients")
	cmd.Flags().Int64Var(&cfg.Blocks, "blocks", 256, "4 KiB blocks the clients write (registers of the history)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().Int64Var(&cfg.SettleMs, "settle-ms", 0, "pause between a victim's resync and the next kill (0..60000)")
	cmd.Flags().BoolVar(&cfg.Keep, "keep", false, "keep the clusters' directories and node logs (printed on stderr)")
	benchCmd.AddCommand(cmd)
}

func (cfg failoverConfig) logf(format string, args ...any) {
	fmt.Fprintf(cfg.Progress, "failover: "+format+"\n", args...)
}

// runFailoverMode runs the trials of one mode on a fresh cluster.
func runFailoverMode(ctx context.Context, cfg failoverConfig, mode string) (failoverModeResult, error) {
	res := failoverModeResult{Mode: mode, Runs: cfg.Runs, Violations: []string{}}
	if mode == "fence" {
		if _, err := exec.LookPath("fence_dummy"); err != nil {
			return res, fmt.Errorf("mode fence needs fence_dummy (Debian's fence-agents): %w", err)
		}
	}
	cl, err := replbench.StartCluster(ctx, replbench.ClusterConfig{Paddock: cfg.Paddock, IPs: cfg.IPs, Name: "failover", LogLevel: "info", Keep: cfg.Keep})
	if err != nil {
		return res, err
	}
	defer cl.Close()
	cfg.logf("mode %s: cluster of %d nodes in %s", mode, len(cl.Nodes), cl.Root)
	power := map[string]string{}
	if mode == "fence" {
		for _, n := range cl.Nodes {
			power[n.Name] = filepath.Join(cl.Root, n.Name+"-power")
			if err := os.WriteFile(power[n.Name], []byte("on"), 0o600); err != nil {
				return res, err
			}
			dev := "dummy-" + n.Name
			if err := failoverRun(ctx, cfg.Paddock, "fence", "device", "add", dev, "--agent", "fence_dummy", "--param", "type=file",
				"--param", "status_file="+power[n.Name], "--data-dir", cl.Nodes[0].Dir); err != nil {
				return res, err
			}
			if err := failoverRun(ctx, cfg.Paddock, "fence", "level", "add", n.Name, "--level", "1", "--devices", dev, "--data-dir", cl.Nodes[0].Dir); err != nil {
				return res, err
			}
		}
	}
	var names []string
	for _, n := range cl.Nodes {
		names = append(names, n.Name)
	}
	vc, err := cl.CreateVolume(failoverVolume, failoverVolumeBytes, names...)
	if err != nil {
		return res, err
	}
	st, err := cl.Nodes[1].WaitUpToDate(ctx, failoverVolume, failoverResyncTimeout, nil)
	if err != nil {
		return res, err
	}

	rec := history.NewRecorder(0)
	var values atomic.Uint64
	dial := func(i int) (*nbd.Client, error) {
		return nbd.Dial("tcp", cl.Nodes[i].StorageAddr, nbd.ClientOptions{Export: failoverVolume, Timeout: failoverDialTimeout})
	}
	// watch: after a kill, the first acknowledged write and its node.
	var watch struct {
		sync.Mutex
		armed  bool
		victim string    // acks through it do not count
		killed time.Time // nor acks before the kill
		at     time.Time
		node   string
	}
	var clients []*histClient
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < cfg.Clients; i++ {
		c := newHistClient(i, rec, &values, cfg.Blocks, names, dial)
		c.opTimeout = failoverOpTimeout
		c.onAck = func(node string) {
			now := time.Now()
			watch.Lock()
			if watch.armed && watch.at.IsZero() && node != watch.victim && now.After(watch.killed) {
				watch.at, watch.node = now, node
			}
			watch.Unlock()
		}
		clients = append(clients, c)
		wg.Add(1)
		go func(c *histClient, seed uint64) { defer wg.Done(); c.run(stop, newRand(seed)) }(c, uint64(time.Now().UnixNano())+uint64(i))
	}
	stopClients := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	defer stopClients()

	for trial := 1; trial <= cfg.Runs; trial++ {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if trial > 1 && cfg.SettleMs > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(time.Duration(cfg.SettleMs) * time.Millisecond):
			}
			if st, err = cl.Nodes[0].WaitUpToDate(ctx, failoverVolume, failoverResyncTimeout, nil); err != nil {
				return res, fmt.Errorf("trial %d: %w", trial, err)
			}
		}
		victim := cl.Node(st.Primary)
		if victim == nil {
			return res, fmt.Errorf("trial %d: no primary in %+v", trial, st)
		}
		vi := slices.Index(names, victim.Name)
		// Point every client at the victim and wait until each got a
		// write acknowledged through it: the kill then breaks their
		// connections and they must reconnect elsewhere.
		for _, c := range clients {
			c.prefer.Store(int32(vi))
		}
		if err := waitClientsOn(ctx, rec, clients, victim.Name); err != nil {
			return res, fmt.Errorf("trial %d: %w", trial, err)
		}
		// The kill's time is taken first: an ack that lands between it
		// and the process's death came through the victim and does not
		// count.
		killed := time.Now()
		watch.Lock()
		watch.armed, watch.victim, watch.killed, watch.at, watch.node = true, victim.Name, killed, time.Time{}, ""
		watch.Unlock()
		victim.Kill()
		var tr failoverTrial
		tr.Victim = victim.Name
		deadline := killed.Add(failoverAckTimeout)
		for {
			watch.Lock()
			at, ackNode := watch.at, watch.node
			watch.Unlock()
			if !at.IsZero() {
				tr.FailoverMs = float64(at.Sub(killed).Microseconds()) / 1000
				tr.AckNode = ackNode
				break
			}
			if time.Now().After(deadline) {
				return res, fmt.Errorf("trial %d: no write acknowledged within %v of killing %s", trial, failoverAckTimeout, victim.Name)
			}
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
		watch.Lock()
		watch.armed = false
		watch.Unlock()
		if mode == "fence" {
			if b, _ := os.ReadFile(power[victim.Name]); strings.TrimSpace(string(b)) != "off" {
				cfg.logf("trial %d: %s's power file says %q after the failover, not off", trial, victim.Name, b)
			}
			// Power the victim on again before it starts.
			os.WriteFile(power[victim.Name], []byte("on"), 0o600)
		}
		restarted := time.Now()
		if err := victim.Start(ctx); err != nil {
			return res, fmt.Errorf("trial %d: restarting %s: %w", trial, victim.Name, err)
		}
		survivor := cl.Nodes[(vi+1)%len(cl.Nodes)]
		st, err = survivor.WaitUpToDate(ctx, failoverVolume, failoverResyncTimeout, nil)
		if err != nil {
			return res, fmt.Errorf("trial %d: %w", trial, err)
		}
		tr.ResyncMs = float64(time.Since(restarted).Milliseconds())
		tr.NewPrimary = st.Primary
		failoverPhases(&tr, cl, victim.Name, killed)
		res.Trials = append(res.Trials, tr)
		cfg.logf("mode %s trial %d/%d: killed %s, first write acknowledged after %.0f ms (through %s; detect %.0f, fenced %.0f, moved %.0f, promoted %.0f ms); new primary %s; victim resynced in %.1f s",
			mode, trial, cfg.Runs, tr.Victim, tr.FailoverMs, tr.AckNode, tr.DetectMs, tr.FencedMs, tr.MovedMs, tr.PromotedMs, tr.NewPrimary, tr.ResyncMs/1000)
	}
	stopClients()

	// Read every block back through the primary, check the history,
	// compare the replicas.
	pn := cl.Node(st.Primary)
	conn, err := nbd.Dial("tcp", pn.StorageAddr, nbd.ClientOptions{Export: failoverVolume, Timeout: failoverDialTimeout})
	if err != nil {
		return res, err
	}
	torn, err := histReadBack(rec, conn, cfg.Blocks, pn.Name)
	conn.Close()
	if err != nil {
		return res, err
	}
	var logs []string
	for _, n := range cl.Nodes {
		b, _ := os.ReadFile(n.LogPath())
		logs = append(logs, string(b))
	}
	check := history.Check(rec.Ops(), histEpochClaims(failoverVolume, logs...), true)
	cfg.logf("mode %s: history: %v (torn blocks: %d)", mode, check, torn)
	res.AckedWrites, res.Unknown = check.AckedWrites, check.UnknownWrites
	for _, v := range check.Violations {
		if v.Kind == history.LostWrite {
			res.LostWrites++
		}
		res.Violations = append(res.Violations, v.String())
	}
	res.ReplicasIdentical = true
	want, err := os.ReadFile(cl.Nodes[0].DataPath(vc.ID))
	if err != nil {
		return res, err
	}
	for _, n := range cl.Nodes[1:] {
		got, err := os.ReadFile(n.DataPath(vc.ID))
		if err != nil {
			return res, err
		}
		if string(got) != string(want) {
			res.ReplicasIdentical = false
			cfg.logf("mode %s: %s's replica differs from %s's", mode, n.Name, cl.Nodes[0].Name)
		}
	}
	var fo []float64
	phases := map[string][]float64{}
	for _, t := range res.Trials {
		fo = append(fo, t.FailoverMs)
		for name, v := range map[string]float64{"detect": t.DetectMs, "fenced": t.FencedMs, "moved": t.MovedMs, "promoted": t.PromotedMs, "resync": t.ResyncMs} {
			if v > 0 {
				phases[name] = append(phases[name], v)
			}
		}
	}
	res.MedianMs = quorumbench.Percentile(fo, 50)
	res.P99Ms = quorumbench.Percentile(fo, 99)
	res.MinMs, res.MaxMs = slices.Min(fo), slices.Max(fo)
	res.Phases = map[string]float64{}
	for name, xs := range phases {
		res.Phases[name] = quorumbench.Percentile(xs, 50)
	}
	return res, nil
}

// waitClientsOn waits until every client has had a write acknowledged
// through node since now.
func waitClientsOn(ctx context.Context, rec *history.Recorder, clients []*histClient, node string) error {
	deadline := time.Now().Add(failoverAimTimeout)
	on := make([]bool, len(clients))
	for _, c := range clients {
		c.mu.Lock()
		c.lastAck = ""
		c.mu.Unlock()
	}
	for {
		all := true
		for i, c := range clients {
			c.mu.Lock()
			on[i] = on[i] || c.lastAck == node
			c.mu.Unlock()
			all = all && on[i]
		}
		if all {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("clients not writing through %s within %v", node, failoverAimTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// logLineRE picks a slog text line's time and message.
var logLineRE = regexp.MustCompile(`(?m)^time=(\S+) .*?msg=("[^"]*"|\S+)(.*)$`)

// failoverPhases fills a trial's phase times from the survivors' logs:
// the first line of each phase after the kill.
func failoverPhases(tr *failoverTrial, cl *replbench.Cluster, victim string, killed time.Time) {
	first := func(p *float64, at time.Time) {
		ms := float64(at.Sub(killed).Microseconds()) / 1000
		if ms >= 0 && (*p == 0 || ms < *p) {
			*p = ms
		}
	}
	for _, n := range cl.Nodes {
		if n.Name == victim {
			continue
		}
		b, _ := os.ReadFile(n.LogPath())
		for _, m := range logLineRE.FindAllStringSubmatch(string(b), -1) {
			at, err := time.Parse(time.RFC3339Nano, m[1])
			if err != nil || at.Before(killed) {
				continue
			}
			switch strings.Trim(m[2], `"`) {
			case "membership":
				first(&tr.DetectMs, at)
			case "fenced":
				if strings.Contains(m[3], "target="+victim+" ") {
					first(&tr.FencedMs, at)
				}
			case "failover: primary role moved":
				first(&tr.MovedMs, at)
			case "promoted":
				if strings.Contains(m[3], "volume_name="+failoverVolume) {
					first(&tr.PromotedMs, at)
				}
			}
		}
	}
}

func failoverRun(ctx context.Context, bin string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("paddock %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func failoverMarkdown(results []failoverModeResult, command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "`%s`\n\n", strings.TrimSpace(command))
	b.WriteString("| mode | trials | median | p99 | min | max | detect | fenced | moved | promoted | acked writes | unknown | lost | violations | replicas identical |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	ms := func(v float64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f s", v/1000)
	}
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %d | %d | %v |\n",
			r.Mode, r.Runs, ms(r.MedianMs), ms(r.P99Ms), ms(r.MinMs), ms(r.MaxMs), ms(r.Phases["detect"]), ms(r.Phases["fenced"]),
			ms(r.Phases["moved"]), ms(r.Phases["promoted"]), r.AckedWrites, r.Unknown, r.LostWrites, len(r.Violations), r.ReplicasIdentical)
	}
	b.WriteString("\nTimes are from the kill -9; detect, fenced, moved, promoted are medians of the first survivor log line of each phase.\n")
	return b.String()
}
