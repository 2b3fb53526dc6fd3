package replbench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/paddock-io/paddock/node"
)

// Timeouts of the local cluster. They bound waits on processes this
// package started on this machine; none of them is a measurement.
const (
	nodeStartTimeout  = 15 * time.Second
	membershipTimeout = 30 * time.Second
	commandTimeout    = 60 * time.Second
	controlTimeout    = 10 * time.Second
	// statusPollStep is how often WaitUpToDate asks for volume status.
	statusPollStep = 20 * time.Millisecond
)

// ClusterConfig describes a local cluster of paddock node processes.
type ClusterConfig struct {
	// Paddock is the paddock executable to run.
	Paddock string
	// Dir is where the cluster's temporary directory is made (its data
	// dirs, sockets and node logs live there; removed by Close unless
	// Keep).
	Dir  string
	Keep bool
	// IPs are the nodes' loopback addresses, one per node (n1, n2, ...).
	IPs []string
	// StoragePort is the NBD port every node tries first (replication
	// then listens on the next one); a free pair is used where it is
	// taken. 0: free ports.
	StoragePort int
	// LogLevel is the nodes' --log-level (their logs go to node.log in
	// their data dirs).
	LogLevel string
	// Name is the cluster's name.
	Name string
}

// Node is one paddock node process of a local cluster.
type Node struct {
	Name        string
	Dir         string
	ClusterAddr string
	StorageAddr string
	Ctl         *node.ControlClient

	bin, logLevel string
	cmd           *exec.Cmd
	done          chan struct{}
}

// Cluster is a local cluster of paddock node processes.
type Cluster struct {
	Root  string
	Nodes []*Node
	cfg   ClusterConfig
}

// StartCluster creates a cluster of len(cfg.IPs) nodes, starts them and
// waits until every node sees all of them, quorate. On error everything it
// started is stopped.
func StartCluster(ctx context.Context, cfg ClusterConfig) (c *Cluster, err error) {
	if len(cfg.IPs) == 0 {
		return nil, errors.New("a cluster needs at least one node")
	}
	if cfg.Name == "" {
		cfg.Name = "local"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	root, err := os.MkdirTemp(cfg.Dir, "paddock-"+cfg.Name+"-")
	if err != nil {
		return nil, err
	}
	cl := &Cluster{Root: root, cfg: cfg}
	c = cl
	defer func() {
		// c is nil here when the function failed: close what was made.
		if err != nil {
			cl.Close()
		}
	}()
	for i, ip := range cfg.IPs {
		cport, err := freePort(ip)
		if err != nil {
			return nil, err
		}
		sport, err := freePortPair(ip, cfg.StoragePort, cport)
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("n%d", i+1)
		dir := filepath.Join(root, name)
		c.Nodes = append(c.Nodes, &Node{Name: name, Dir: dir, bin: cfg.Paddock, logLevel: cfg.LogLevel,
			ClusterAddr: net.JoinHostPort(ip, strconv.Itoa(cport)), StorageAddr: net.JoinHostPort(ip, strconv.Itoa(sport)),
			Ctl: node.NewControlClient(node.DataDir{Path: dir}, controlTimeout)})
	}
	first := c.Nodes[0]
	if err := run(ctx, cfg.Paddock, "cluster", "create", cfg.Name, "--data-dir", first.Dir, "--node-name", first.Name,
		"--cluster-addr", first.ClusterAddr, "--storage-addr", first.StorageAddr); err != nil {
		return nil, err
	}
	if err := first.Start(ctx); err != nil {
		return nil, err
	}
	for i, n := range c.Nodes[1:] {
		var tok node.TokenReply
		if err := first.Ctl.Call("POST", "/v1/tokens", struct{}{}, &tok); err != nil {
			return nil, fmt.Errorf("join token: %w", err)
		}
		if err := run(ctx, cfg.Paddock, "cluster", "join", first.ClusterAddr, "--token", tok.Token, "--data-dir", n.Dir,
			"--node-name", n.Name, "--cluster-addr", n.ClusterAddr, "--storage-addr", n.StorageAddr); err != nil {
			return nil, err
		}
		if err := n.Start(ctx); err != nil {
			return nil, err
		}
		// The next join is a configuration change that needs quorum:
		// the node just added must be counted first.
		if err := first.waitMembers(ctx, i+2); err != nil {
			return nil, err
		}
	}
	for _, n := range c.Nodes {
		if err := n.waitMembers(ctx, len(c.Nodes)); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Close kills every node and removes the cluster's directory (unless the
// configuration said Keep).
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		n.Kill()
	}
	if !c.cfg.Keep {
		os.RemoveAll(c.Root)
	}
}

// Node finds a node by name.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Start runs "paddock node" for n and waits until its control socket
// answers. Its output goes to node.log in its data dir. The process gets
// its own process group (a Ctrl-C meant for the parent does not reach it;
// the parent stops it) and is killed if the parent dies.
func (n *Node) Start(ctx context.Context) error {
	if n.Running() {
		return fmt.Errorf("%s is already running", n.Name)
	}
	logf, err := os.OpenFile(n.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(n.bin, "node", "--data-dir", n.Dir, "--log-level", n.logLevel)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	n.cmd, n.done = cmd, done
	deadline := time.Now().Add(nodeStartTimeout)
	for {
		var s node.Status
		if err := n.Ctl.Call("GET", "/v1/status", nil, &s); err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited at start: %s", n.Name, n.LogTail(20))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer on its control socket within %v: %s", n.Name, nodeStartTimeout, n.LogTail(20))
		}
	}
}

// Running says whether n's process is alive.
func (n *Node) Running() bool {
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Pid is the process id of n's node process, 0 when it is not running.
func (n *Node) Pid() int {
	if !n.Running() {
		return 0
	}
	return n.cmd.Process.Pid
}

// Kill sends SIGKILL (kill -9) to n's process and waits for it to be gone.
func (n *Node) Kill() {
	if !n.Running() {
		return
	}
	n.cmd.Process.Kill()
	<-n.done
}

// LogPath is n's log file.
func (n *Node) LogPath() string { return filepath.Join(n.Dir, "node.log") }

// LogTail is the last lines of n's log.
func (n *Node) LogTail(lines int) string {
	b, _ := os.ReadFile(n.LogPath())
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// URI is the NBD URI of a volume on n.
func (n *Node) URI(volume string) string { return "nbd://" + n.StorageAddr + "/" + volume }

// DataPath is the data file of n's replica of a volume.
func (n *Node) DataPath(volumeID uint64) string {
	return filepath.Join(n.Dir, "volumes", strconv.FormatUint(volumeID, 10), "data")
}

func (n *Node) waitMembers(ctx context.Context, want int) error {
	deadline := time.Now().Add(membershipTimeout)
	var s node.Status
	for {
		s = node.Status{}
		if err := n.Ctl.Call("GET", "/v1/status", nil, &s); err == nil && s.Quorum.Quorate && s.Nodes == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d members, quorate not reached within %v (last: %d members, quorate %v)",
				n.Name, want, membershipTimeout, s.Nodes, s.Quorum.Quorate)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// CreateVolume creates a volume whose replicas are on the named nodes (the
// first is the primary), asking the first node of the cluster.
func (c *Cluster) CreateVolume(name string, sizeBytes int64, nodes ...string) (node.VolumeConfig, error) {
	var v node.VolumeConfig
	err := c.Nodes[0].Ctl.Call("POST", "/v1/volumes", node.VolumeCreateRequest{Name: name, SizeBytes: sizeBytes,
		Replicas: len(nodes), Nodes: nodes}, &v)
	if err != nil {
		return v, fmt.Errorf("creating volume %s: %w", name, err)
	}
	return v, nil
}

// VolumeStatus is "paddock volume status NAME" as asked of the given node.
func (n *Node) VolumeStatus(volume string) (node.VolumeStatus, error) {
	var st node.VolumeStatus
	err := n.Ctl.Call("GET", "/v1/volumes/"+volume, nil, &st)
	return st, err
}

// UpToDate says whether every replica of a volume status is UpToDate with
// nothing left to send, and a primary serves.
func UpToDate(st node.VolumeStatus) bool {
	if len(st.Replicas) == 0 {
		return false
	}
	primary := false
	for _, r := range st.Replicas {
		if r.State != "UpToDate" || r.OutOfSyncBytes != 0 {
			return false
		}
		primary = primary || r.Role == "primary"
	}
	return primary
}

// PrimaryPeer is the primary's view of one peer in a volume status (nil
// when no primary reported or it has no such peer).
func PrimaryPeer(st node.VolumeStatus, peer *Node) *PeerView {
	for _, r := range st.Reports {
		if r.Primary == nil {
			continue
		}
		for _, p := range r.Primary.Peers {
			for _, rr := range st.Reports {
				if rr.Node == peer.Name && uint32(p.Node) == rr.NodeID {
					pv := PeerView{State: p.State, OutOfSyncBytes: p.OutOfSyncBytes, ResentBytes: p.ResentBytes, MissedBytes: p.MissedBytes}
					if p.ResyncStartedAgo != "" {
						pv.SyncingFor, _ = time.ParseDuration(p.ResyncStartedAgo)
					}
					if p.LastResyncEndedAgo != "" {
						pv.LastResyncEndedAgo, _ = time.ParseDuration(p.LastResyncEndedAgo)
						pv.LastResync = time.Duration(p.LastResyncSeconds * float64(time.Second))
					}
					return &pv
				}
			}
		}
	}
	return nil
}

// PeerView is what the primary says of one peer.
type PeerView struct {
	State          string
	OutOfSyncBytes int64
	ResentBytes    int64
	MissedBytes    int64
	// SyncingFor is how long the peer has been resyncing (0 when not).
	SyncingFor time.Duration
	// LastResync is what the last finished resync took, from its start
	// to the peer's return to the generation, LastResyncEndedAgo how
	// long ago that return was (0: none yet).
	LastResync, LastResyncEndedAgo time.Duration
}

// WaitUpToDate polls a volume's status on node n until UpToDate; each
// status is passed to progress (when not nil) as it arrives.
func (n *Node) WaitUpToDate(ctx context.Context, volume string, timeout time.Duration, progress func(node.VolumeStatus)) (node.VolumeStatus, error) {
	deadline := time.Now().Add(timeout)
	var st node.VolumeStatus
	var err error
	for {
		st, err = n.VolumeStatus(volume)
		if err == nil {
			if progress != nil {
				progress(st)
			}
			if UpToDate(st) {
				return st, nil
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("replicas %+v", st.Replicas)
			}
			return st, fmt.Errorf("volume %s not up to date within %v: %v", volume, timeout, err)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(statusPollStep):
		}
	}
}

func run(ctx context.Context, bin string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// freePort finds a port free for both TCP and UDP on ip (a cluster
// address carries heartbeats over UDP and control over TCP).
func freePort(ip string) (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port))); err == nil {
			u.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port on %s", ip)
}

// freePortPair finds p with p (NBD) and p+1 (replication) free for TCP on
// ip, trying want first; avoid is a port already handed out on ip.
func freePortPair(ip string, want, avoid int) (int, error) {
	free := func(p int) bool {
		if p <= 0 || p+1 > 65535 || p == avoid || p+1 == avoid {
			return false
		}
		for _, q := range []int{p, p + 1} {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(q)))
			if err != nil {
				return false
			}
			l.Close()
		}
		return true
	}
	if free(want) {
		return want, nil
	}
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if free(p) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port pair on %s", ip)
}
