// Package quorumbench measures how fast paddock's membership notices a
// lost node: the time from kill -9 of a node to the survivors reporting the
// new membership, and from a partition to the minority reporting
// inquorate, over many trials, optionally with the CPUs loaded.
package quorumbench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/paddock-io/paddock/node"
)

// Config of a run.
type Config struct {
	Paddock string        // the paddock executable
	Trials  int           // kill and partition trials each
	Load    bool          // run stress-ng on every core meanwhile
	Soak    time.Duration // also watch an idle loaded cluster this long for false losses
	// Witness adds a "paddock witness" (ffsplit) on 127.0.0.10: the
	// trials then include its round trip, and the soak also counts
	// lapses of its vote (a lease not renewed in time).
	Witness  bool
	Log      io.Writer // progress
	pollStep time.Duration
}

// Result holds the measurements.
type Result struct {
	TokenMs      int64         `json:"token_ms"`
	KillMs       []float64     `json:"kill_detect_ms"`
	PartitionMs  []float64     `json:"partition_detect_ms"`
	Load         bool          `json:"cpu_load"`
	SoakDuration time.Duration `json:"soak"`
	FalseLosses  int           `json:"false_losses"`
	// Witness: the cluster had a witness; WitnessLapses counts the times
	// in the soak a node's status showed the witness's vote not counted.
	Witness           bool    `json:"witness"`
	WitnessLapses     int     `json:"witness_lapses"`
	WitnessLapseMaxMs float64 `json:"witness_lapse_max_ms"`
	// LeaseLapses counts the times in the soak a quorate node's status
	// showed its self-fence lease not held (fence/lease.go: its members'
	// echoes too old to keep it running), which would close its
	// primaries; LeaseMinLeftMs is the least lease left seen.
	LeaseLapses    int   `json:"lease_lapses"`
	LeaseMinLeftMs int64 `json:"lease_min_left_ms"`
}

type bnode struct {
	name, dir, addr, storage string
	cmd                      *exec.Cmd
	ctl                      *node.ControlClient
}

func (n *bnode) start(bin string) error {
	n.cmd = exec.Command(bin, "node", "--data-dir", n.dir, "--log-level", "warn")
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		return err
	}
	go n.cmd.Wait()
	return nil
}

func (n *bnode) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Kill()
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *bnode) status() (node.Status, error) {
	var s node.Status
	err := n.ctl.Call("GET", "/v1/status", nil, &s)
	return s, err
}

// waitFor polls status until cond holds; it returns the time it took.
func (n *bnode) waitFor(cond func(node.Status) bool, step, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for time.Since(start) < timeout {
		if s, err := n.status(); err == nil && cond(s) {
			return time.Since(start), nil
		}
		time.Sleep(step)
	}
	return 0, fmt.Errorf("%s: condition not reached within %v", n.name, timeout)
}

func run(bin string, args ...string) error {
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return nil
}

// freePort finds a TCP port on ip whose UDP twin is free too (a node's
// cluster address: heartbeats over UDP, control over TLS).
func freePort(ip string) (int, error) {
	return freeTCPPort(ip, func(port int) (io.Closer, error) {
		return net.ListenPacket("udp", fmt.Sprintf("%s:%d", ip, port))
	})
}

// freeTCPPair finds a TCP port p with p+1 free too (a node's NBD and
// replication listeners).
func freeTCPPair(ip string) (int, error) {
	return freeTCPPort(ip, func(port int) (io.Closer, error) {
		return net.Listen("tcp", fmt.Sprintf("%s:%d", ip, port+1))
	})
}

// freeTCPPort finds a free TCP port on ip for which also can bind what
// the node will need beside it.
func freeTCPPort(ip string, also func(port int) (io.Closer, error)) (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if c, err := also(port); err == nil {
			c.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port on %s", ip)
}

func members(n int) func(node.Status) bool {
	return func(s node.Status) bool { return s.Quorum.Quorate && s.Nodes == n }
}

// Run makes a 3-node cluster on 127.0.0.1-3 and measures.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Trials <= 0 {
		cfg.Trials = 20
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	cfg.pollStep = 10 * time.Millisecond
	root, err := os.MkdirTemp("", "paddock-bench-quorum-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	var nodes []*bnode
	for i := 1; i <= 3; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i)
		port, err := freePort(ip)
		if err != nil {
			return nil, err
		}
		// A storage address too, so that the node runs its HA agent
		// and the soak sees its self-fence lease (it serves no volume).
		sport, err := freeTCPPair(ip)
		if err != nil {
			return nil, err
		}
		d := filepath.Join(root, fmt.Sprintf("n%d", i))
		nodes = append(nodes, &bnode{name: fmt.Sprintf("n%d", i), dir: d, addr: fmt.Sprintf("%s:%d", ip, port),
			storage: fmt.Sprintf("%s:%d", ip, sport), ctl: node.NewControlClient(node.DataDir{Path: d}, 2*time.Second)})
	}
	defer func() {
		for _, n := range nodes {
			n.kill()
		}
	}()
	if err := run(cfg.Paddock, "cluster", "create", "bench", "--data-dir", nodes[0].dir, "--node-name", "n1", "--cluster-addr", nodes[0].addr, "--storage-addr", nodes[0].storage); err != nil {
		return nil, err
	}
	if err := nodes[0].start(cfg.Paddock); err != nil {
		return nil, err
	}
	if _, err := nodes[0].waitFor(members(1), 50*time.Millisecond, 10*time.Second); err != nil {
		return nil, err
	}
	for i, n := range nodes[1:] {
		var tok node.TokenReply
		if err := nodes[0].ctl.Call("POST", "/v1/tokens", struct{}{}, &tok); err != nil {
			return nil, err
		}
		if err := run(cfg.Paddock, "cluster", "join", nodes[0].addr, "--token", tok.Token, "--data-dir", n.dir, "--node-name", n.name, "--cluster-addr", n.addr, "--storage-addr", n.storage); err != nil {
			return nil, err
		}
		if err := n.start(cfg.Paddock); err != nil {
			return nil, err
		}
		if _, err := nodes[0].waitFor(members(i+2), 50*time.Millisecond, 20*time.Second); err != nil {
			return nil, err
		}
	}
	if cfg.Witness {
		stop, err := startWitness(cfg.Paddock, root, nodes)
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	s, _ := nodes[0].status()
	res := &Result{TokenMs: s.TokenMs, Load: cfg.Load, Witness: cfg.Witness}
	if cfg.Load {
		stop, err := startLoad()
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	victim := nodes[2]
	for t := 0; t < cfg.Trials && ctx.Err() == nil; t++ {
		for _, n := range nodes {
			if _, err := n.waitFor(members(3), 50*time.Millisecond, 20*time.Second); err != nil {
				return nil, err
			}
		}
		victim.kill()
		d, err := nodes[0].waitFor(members(2), cfg.pollStep, 20*time.Second)
		if err != nil {
			return nil, err
		}
		res.KillMs = append(res.KillMs, float64(d.Microseconds())/1000)
		fmt.Fprintf(cfg.Log, "kill trial %d: survivors saw 2 members after %v\n", t+1, d.Round(time.Millisecond))
		if err := victim.start(cfg.Paddock); err != nil {
			return nil, err
		}
	}
	for t := 0; t < cfg.Trials && ctx.Err() == nil; t++ {
		for _, n := range nodes {
			if _, err := n.waitFor(members(3), 50*time.Millisecond, 20*time.Second); err != nil {
				return nil, err
			}
		}
		if err := cut(victim.addr, true); err != nil {
			return nil, err
		}
		d, err := victim.waitFor(func(s node.Status) bool { return !s.Quorum.Quorate }, cfg.pollStep, 20*time.Second)
		cut(victim.addr, false)
		if err != nil {
			return nil, err
		}
		res.PartitionMs = append(res.PartitionMs, float64(d.Microseconds())/1000)
		fmt.Fprintf(cfg.Log, "partition trial %d: minority inquorate after %v\n", t+1, d.Round(time.Millisecond))
	}
	if cfg.Soak > 0 && ctx.Err() == nil {
		for _, n := range nodes {
			if _, err := n.waitFor(members(3), 50*time.Millisecond, 20*time.Second); err != nil {
				return nil, err
			}
		}
		res.SoakDuration = cfg.Soak
		end := time.Now().Add(cfg.Soak)
		// Episodes are counted per node: a loss (or lapse) that lasts
		// several polls counts once.
		lost := map[string]bool{}
		leaseLapsed := map[string]bool{}
		res.LeaseMinLeftMs = -1
		lapsedSince := map[string]time.Time{}
		endLapse := func(name string) {
			if t, ok := lapsedSince[name]; ok {
				res.WitnessLapseMaxMs = max(res.WitnessLapseMaxMs, float64(time.Since(t).Microseconds())/1000)
				delete(lapsedSince, name)
			}
		}
		for time.Now().Before(end) && ctx.Err() == nil {
			for _, n := range nodes {
				s, err := n.status()
				if err != nil || s.Nodes != 3 || !s.Quorum.Quorate {
					if !lost[n.name] {
						res.FalseLosses++
						fmt.Fprintf(cfg.Log, "false loss seen by %s at %s\n", n.name, time.Now().Format(time.TimeOnly))
					}
					lost[n.name] = true
				} else {
					lost[n.name] = false
				}
				if err == nil && s.Quorum.Quorate && s.Lease != nil {
					if res.LeaseMinLeftMs < 0 || s.Lease.RemainingMs < res.LeaseMinLeftMs {
						res.LeaseMinLeftMs = s.Lease.RemainingMs
					}
					held := s.Lease.Phase == "held" && s.Lease.MayAck
					if !held && !leaseLapsed[n.name] {
						res.LeaseLapses++
						fmt.Fprintf(cfg.Log, "lease not held on quorate %s at %s: %s\n", n.name, time.Now().Format(time.TimeOnly), s.Lease.Phase)
					}
					leaseLapsed[n.name] = !held
				}
				switch {
				case !cfg.Witness || err != nil:
				case s.Quorum.Witness == nil || !s.Quorum.Witness.Vote:
					if _, ok := lapsedSince[n.name]; !ok {
						res.WitnessLapses++
						lapsedSince[n.name] = time.Now()
						why := "no witness status"
						if s.Witness != nil {
							why = s.Witness.Text()
						}
						fmt.Fprintf(cfg.Log, "witness vote lapsed on %s at %s: %s\n", n.name, time.Now().Format(time.TimeOnly), why)
					}
				default:
					endLapse(n.name)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		for name := range lapsedSince {
			endLapse(name)
		}
	}
	return res, ctx.Err()
}

// startWitness runs "paddock witness" on 127.0.0.10 with a certificate
// from node 1, configures it, and waits until every node counts its vote.
func startWitness(bin, root string, nodes []*bnode) (func(), error) {
	port, err := freePort("127.0.0.10")
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.10:%d", port)
	dir := filepath.Join(root, "witness")
	if err := run(bin, "cluster", "witness-cert", "--data-dir", nodes[0].dir, "--out", dir); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "witness", "--listen", addr, "--data-dir", dir, "--log-level", "warn")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go cmd.Wait()
	stop := func() { cmd.Process.Kill() }
	if err := run(bin, "cluster", "quorum-options", "--data-dir", nodes[0].dir, "--witness", addr); err != nil {
		stop()
		return nil, err
	}
	for _, n := range nodes {
		if _, err := n.waitFor(func(s node.Status) bool {
			return members(3)(s) && s.Quorum.Witness != nil && s.Quorum.Witness.Vote
		}, 50*time.Millisecond, 20*time.Second); err != nil {
			stop()
			return nil, fmt.Errorf("witness vote: %w", err)
		}
	}
	return stop, nil
}

// cut drops (or stops dropping) every packet to and from one node's
// address with an nftables table in this namespace.
func cut(addr string, on bool) error {
	host, port, _ := net.SplitHostPort(addr)
	if !on {
		return exec.Command("nft", "delete", "table", "ip", "pdbench").Run()
	}
	rules := fmt.Sprintf("table ip pdbench {\n chain in { type filter hook input priority 0; policy accept; ip daddr %s udp dport %s drop; ip saddr %s udp sport %s drop; }\n}\n", host, port, host, port)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft (root needed): %v: %s", err, out)
	}
	return nil
}

// startLoad runs stress-ng on every core.
func startLoad() (func(), error) {
	cmd := exec.Command("stress-ng", "--cpu", "0", "--quiet")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("stress-ng (apt-get install stress-ng): %w", err)
	}
	return func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}, nil
}

// Percentile of xs (nearest rank).
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Markdown renders a result.
func (r *Result) Markdown(command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Command: `%s`\n\n", command)
	fmt.Fprintf(&b, "| measurement | trials | median | p99 | max | paddock token | corosync default |\n|---|---:|---:|---:|---:|---:|---|\n")
	load := ""
	if r.Load {
		load = " (CPU loaded)"
	}
	fmt.Fprintf(&b, "| kill -9 to survivors' new membership%s | %d | %.0f ms | %.0f ms | %.0f ms | %d ms | token 3000 ms + 650 ms per node beyond 2 |\n",
		load, len(r.KillMs), Percentile(r.KillMs, 50), Percentile(r.KillMs, 99), Percentile(r.KillMs, 100), r.TokenMs)
	fmt.Fprintf(&b, "| partition to minority inquorate%s | %d | %.0f ms | %.0f ms | %.0f ms | %d ms | |\n",
		load, len(r.PartitionMs), Percentile(r.PartitionMs, 50), Percentile(r.PartitionMs, 99), Percentile(r.PartitionMs, 100), r.TokenMs)
	witness := ""
	if r.Witness {
		witness = " and a witness (ffsplit)"
	}
	if r.SoakDuration > 0 {
		fmt.Fprintf(&b, "\nSoak: %v of a 3-node cluster%s%s, membership polled every 20 ms on every node: %d false losses", r.SoakDuration, witness, load, r.FalseLosses)
		if r.Witness {
			fmt.Fprintf(&b, ", %d lapses of the witness's vote (longest %.0f ms)", r.WitnessLapses, r.WitnessLapseMaxMs)
		}
		fmt.Fprintf(&b, ", %d lapses of a quorate node's self-fence lease (least left %d ms)", r.LeaseLapses, r.LeaseMinLeftMs)
		b.WriteString(".\n")
	}
	return b.String()
}

// JSON renders a result.
func (r *Result) JSON() string {
	b, _ := json.MarshalIndent(r, "", "  ")
	return string(b)
}
