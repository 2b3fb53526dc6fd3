package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Guest receivers: the destination side of "paddock migrate G --to NODE".
// The node NODE starts "paddock guest receive" (its own binary) as a child
// process that listens on one of the node's migration ports with the
// node's data dir (so it shows the node's cluster certificate and trusts
// the cluster CA), waits until the child listens, and answers with the
// address. The source's guest then migrates to that address as to any
// receiver, and the volume hand-off goes to NODE.
//
// The CLI asks its own node (POST /v1/guests/receive on the control
// socket, with "node"); that node forwards to NODE over the peer API
// (POST /peer/v1/guests/receive, mutual TLS with the cluster CA), so only
// cluster members can make a node start processes.
//
// The manager is started lazily at the first request: the daemon has no
// field for it, so it is found through receiverManagers. Its children are
// stopped when the control server stops (serveControl calls stopChildren)
// and, should the node die without stopping them, by the kernel
// (Pdeathsig): a receiver never outlives its node.

// Limits of the guest receivers of one node.
const (
	// MaxGuestReceivers: receivers waiting for a migration at once. Each
	// is a process that will hold a guest's RAM.
	MaxGuestReceivers = 4
	// maxGuestChildren bounds every child the node started, waiting or
	// already running a guest that migrated in.
	maxGuestChildren = 16
	// DefaultReceiverIdleTimeoutMs: a receiver no migration has used for
	// this long stops (the child measures it: only it knows whether a
	// migration is under way).
	DefaultReceiverIdleTimeoutMs = 120_000
	minReceiverIdleTimeoutMs     = 1_000
	maxReceiverIdleTimeoutMs     = 3_600_000
	// receiverStartTimeoutMs bounds the wait for a child to listen.
	receiverStartTimeoutMs = 20_000
	// receiverStopGraceMs: a child that ignores SIGTERM this long is killed.
	receiverStopGraceMs = 5_000
	// receiverStartAttempts bounds the ports tried when a child cannot
	// bind the one probed free (someone took it meanwhile).
	receiverStartAttempts = 3
	// receiverStderrTailBytes: how much of a child's stderr an error quotes.
	receiverStderrTailBytes = 2048
	// maxReceiverLineBytes bounds one line of a child's output.
	maxReceiverLineBytes = 4096
	// Without a configured migration address, receivers listen on the
	// storage IP at a port of receiverPortBase..+receiverPortCount-1.
	receiverPortBase  = 7800
	receiverPortCount = 64
	// maxGuestRAMBytes bounds the RAM a receiver is asked to hold.
	maxGuestRAMBytes = 1 << 40
	guestPageBytes   = 4096
	// maxUnixSocketPathBytes: sun_path holds 108 bytes with the NUL.
	maxUnixSocketPathBytes = 107
	// receiverPeerTimeoutMs bounds forwarding a request to another node.
	receiverPeerTimeoutMs = receiverStartTimeoutMs + 10_000
	// maxReceiverBodyBytes bounds a receive request.
	maxReceiverBodyBytes = 4096
)

// The lines of "paddock guest run" (cmd/paddock/guest.go) the manager
// follows to know a child's state.
const (
	receiverWaitingLine = "waiting for a migration on"
	receiverResumedLine = "resumed from a migration"
	receiverMigratedOut = "migrated to"
)

// guestNameRE: a guest's name becomes a file name (its control socket);
// no separators, no leading dot, so no path tricks.
var guestNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// GuestReceiveRequest is the body of POST /v1/guests/receive (control)
// and /peer/v1/guests/receive (peer).
type GuestReceiveRequest struct {
	Name     string `json:"name"`
	RAMBytes int64  `json:"ram_bytes"`
	// Node is the node that starts the receiver; "" = the one asked.
	// On the peer API it must be "" or the node's own name.
	Node string `json:"node,omitempty"`
	// IdleTimeoutMs: stop the receiver if no migration used it for this
	// long; 0 = DefaultReceiverIdleTimeoutMs.
	IdleTimeoutMs int64 `json:"idle_timeout_ms,omitempty"`
	// HugePages: receive into RAM on 2 MiB huge pages (the source
	// guest's is; guest receive --hugepages).
	HugePages bool `json:"huge_pages,omitempty"`
}

// GuestReceiver describes one child of a node: the answer to a receive
// request and a row of GET /v1/guests.
type GuestReceiver struct {
	Node        string    `json:"node"`
	Name        string    `json:"name"`
	RAMBytes    int64     `json:"ram_bytes"`
	HugePages   bool      `json:"huge_pages,omitempty"`
	Addr        string    `json:"addr"`         // where it receives (QUIC and TCP)
	ControlSock string    `json:"control_sock"` // its guest control socket on the node
	Pid         int       `json:"pid"`
	State       string    `json:"state"` // starting, waiting, running, exited
	StartedAt   time.Time `json:"started_at"`
	// Reused: a receiver of that name and size was waiting already (a
	// migration that failed before leaves it waiting); it is answered
	// again instead of a second one.
	Reused bool   `json:"reused,omitempty"`
	Exit   string `json:"exit,omitempty"` // how an exited child ended
}

// checkGuestReceive validates a request before anything acts on it.
func checkGuestReceive(req *GuestReceiveRequest) error {
	if !guestNameRE.MatchString(req.Name) {
		return fmt.Errorf("guest name %q: 1-64 letters, digits, '.', '_', '-', starting with a letter or digit", req.Name)
	}
	if req.RAMBytes <= 0 || req.RAMBytes > maxGuestRAMBytes || req.RAMBytes%guestPageBytes != 0 {
		return fmt.Errorf("guest RAM %d bytes: want a multiple of %d up to %d", req.RAMBytes, guestPageBytes, int64(maxGuestRAMBytes))
	}
	if req.HugePages && req.RAMBytes%(2<<20) != 0 {
		return fmt.Errorf("guest RAM %d bytes on huge pages: want a multiple of 2 MiB", req.RAMBytes)
	}
	if req.Node != "" && !nameRE.MatchString(req.Node) {
		return fmt.Errorf("node %q: not a node name", req.Node)
	}
	if req.IdleTimeoutMs == 0 {
		req.IdleTimeoutMs = DefaultReceiverIdleTimeoutMs
	}
	if req.IdleTimeoutMs < minReceiverIdleTimeoutMs || req.IdleTimeoutMs > maxReceiverIdleTimeoutMs {
		return fmt.Errorf("idle timeout %d ms: want %d..%d", req.IdleTimeoutMs, minReceiverIdleTimeoutMs, maxReceiverIdleTimeoutMs)
	}
	return nil
}

// receiverChild is one child process.
type receiverChild struct {
	info   GuestReceiver // under guestReceivers.mu
	cmd    *exec.Cmd
	ready  chan struct{} // closed when it listens
	done   chan struct{} // closed when it exited
	stderr *tailBuffer
}

// guestReceivers is one node's manager of receiver children.
type guestReceivers struct {
	d       *Daemon
	exe     string // the binary children run: this one
	mu      sync.Mutex
	byName  map[string]*receiverChild
	stopped bool
}

var (
	receiverManagersMu sync.Mutex
	receiverManagers   = map[*Daemon]*guestReceivers{}
)

// guestReceivers returns the node's manager, starting it at first use.
func (d *Daemon) guestReceivers() *guestReceivers {
	receiverManagersMu.Lock()
	defer receiverManagersMu.Unlock()
	m := receiverManagers[d]
	if m == nil {
		// The binary children run is this one; "" is reported at the
		// first request.
		exe, _ := os.Executable()
		m = &guestReceivers{d: d, exe: exe, byName: map[string]*receiverChild{}}
		receiverManagers[d] = m
	}
	return m
}

// admitReceiver decides whether a receiver for req may start next to the
// children in byName: it returns the waiting receiver to answer again,
// or nil to start one, or why not.
func admitReceiver(byName map[string]*receiverChild, req GuestReceiveRequest) (*receiverChild, error) {
	if c, ok := byName[req.Name]; ok {
		switch {
		case c.info.State == "waiting" && c.info.RAMBytes == req.RAMBytes && c.info.HugePages == req.HugePages:
			return c, nil
		case c.info.State == "waiting" || c.info.State == "starting":
			return nil, fmt.Errorf("a receiver for guest %s of %d bytes of RAM is %s here already (pid %d)", req.Name, c.info.RAMBytes, c.info.State, c.info.Pid)
		default:
			return nil, fmt.Errorf("guest %s is %s here already (pid %d)", req.Name, c.info.State, c.info.Pid)
		}
	}
	waiting := 0
	for _, c := range byName {
		if c.info.State == "starting" || c.info.State == "waiting" {
			waiting++
		}
	}
	if waiting >= MaxGuestReceivers {
		return nil, fmt.Errorf("%d receivers wait for a migration on this node already (at most %d): retry when one is used or stopped", waiting, MaxGuestReceivers)
	}
	if len(byName) >= maxGuestChildren {
		return nil, fmt.Errorf("this node runs %d guests it received already (at most %d)", len(byName), maxGuestChildren)
	}
	return nil, nil
}

// receiverListen says where this node's receivers listen: the IP of its
// migration address and ports from that address's port on, when one is
// configured (cluster create/join --migration-addr: the operator chose the
// network and opened MaxGuestReceivers ports from it); else the storage
// IP, the bulk-data network, at receiverPortBase.. . Either IP is in the
// node's certificate (node/pki.go), so the source verifies the receiver
// by the address it dials.
func receiverListen(n NodeConfig) (ip netip.Addr, ports []int, err error) {
	if n.MigrationAddr != "" {
		ap, err := netip.ParseAddrPort(n.MigrationAddr)
		if err != nil {
			return netip.Addr{}, nil, fmt.Errorf("migration address %q: %w", n.MigrationAddr, err)
		}
		for i := range MaxGuestReceivers {
			if p := int(ap.Port()) + i; p <= 65535 {
				ports = append(ports, p)
			}
		}
		return ap.Addr(), ports, nil
	}
	if n.StorageAddr != "" {
		ap, err := netip.ParseAddrPort(n.StorageAddr)
		if err != nil {
			return netip.Addr{}, nil, fmt.Errorf("storage address %q: %w", n.StorageAddr, err)
		}
		for i := range receiverPortCount {
			ports = append(ports, receiverPortBase+i)
		}
		return ap.Addr(), ports, nil
	}
	return netip.Addr{}, nil, fmt.Errorf("node %s has neither a migration nor a storage address: it cannot receive guests (give it --migration-addr)", n.Name)
}

// portFree says whether port is free on ip for both TCP and UDP (a
// receiver listens for QUIC and TCP on the same number). The probe is a
// hint: the child's bind is what counts.
func portFree(ip netip.Addr, port int) bool {
	addr := netip.AddrPortFrom(ip, uint16(port)).String()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// receive starts a receiver here, or answers with the one waiting.
func (m *guestReceivers) receive(ctx context.Context, req GuestReceiveRequest) (GuestReceiver, error) {
	if err := checkGuestReceive(&req); err != nil {
		return GuestReceiver{}, err
	}
	me, _ := m.d.config().Node(m.d.loaded.Identity.ID)
	ip, ports, err := receiverListen(me)
	if err != nil {
		return GuestReceiver{}, err
	}
	sock := filepath.Join(m.d.dir.Path, "guests", req.Name+".sock")
	if len(sock) > maxUnixSocketPathBytes {
		return GuestReceiver{}, fmt.Errorf("control socket path %s is longer than %d bytes: use a shorter guest name or data dir", sock, maxUnixSocketPathBytes)
	}
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		return GuestReceiver{}, err
	}
	if m.exe == "" {
		return GuestReceiver{}, errors.New("cannot find this program's path to start a receiver")
	}
	var lastErr error
	tried := 0
	for _, port := range ports {
		if tried >= receiverStartAttempts {
			break
		}
		m.mu.Lock()
		if m.stopped {
			m.mu.Unlock()
			return GuestReceiver{}, errors.New("node stopping")
		}
		reuse, err := admitReceiver(m.byName, req)
		if err != nil || reuse != nil {
			var info GuestReceiver
			if reuse != nil {
				info = reuse.info
				info.Reused = true
			}
			m.mu.Unlock()
			return info, err
		}
		addr := netip.AddrPortFrom(ip, uint16(port)).String()
		used := false
		for _, c := range m.byName {
			used = used || c.info.Addr == addr
		}
		if used || !portFree(ip, port) {
			m.mu.Unlock()
			continue
		}
		tried++
		c, err := m.start(req, me.Name, addr, sock)
		m.mu.Unlock()
		if err != nil {
			return GuestReceiver{}, err
		}
		info, err := m.waitReady(ctx, c)
		if err == nil {
			return info, nil
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			return GuestReceiver{}, err
		}
	}
	if lastErr != nil {
		return GuestReceiver{}, lastErr
	}
	return GuestReceiver{}, fmt.Errorf("no free port for a receiver on %s (ports %d..%d)", ip, ports[0], ports[len(ports)-1])
}

// start runs the child; m.mu is held.
func (m *guestReceivers) start(req GuestReceiveRequest, nodeName, addr, sock string) (*receiverChild, error) {
	cmd := exec.Command(m.exe, "guest", "receive", "--name", req.Name, "--ram", strconv.FormatInt(req.RAMBytes, 10),
		"--listen", addr, "--data-dir", m.d.dir.Path, "--control-sock", sock,
		"--idle-timeout", (time.Duration(req.IdleTimeoutMs) * time.Millisecond).String())
	if req.HugePages {
		cmd.Args = append(cmd.Args, "--hugepages")
	}
	// Pdeathsig: the child is told to stop if the node dies without
	// stopping it. (The kernel ties it to the thread that forks; Go
	// ends a thread only when a goroutine locked to it exits, and
	// request handlers are not locked to theirs.) Setpgid: a Ctrl-C meant for a node in a terminal
	// reaches the child through the node's orderly stop, not twice.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c := &receiverChild{cmd: cmd, ready: make(chan struct{}), done: make(chan struct{}), stderr: newTailBuffer(receiverStderrTailBytes)}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting a receiver: %w", err)
	}
	c.info = GuestReceiver{Node: nodeName, Name: req.Name, RAMBytes: req.RAMBytes, HugePages: req.HugePages, Addr: addr, ControlSock: sock,
		Pid: cmd.Process.Pid, State: "starting", StartedAt: time.Now().UTC()}
	m.byName[req.Name] = c
	log := m.d.log.With("guest", req.Name, "pid", c.info.Pid)
	log.Info("guest receiver started", "addr", addr)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, maxReceiverLineBytes), maxReceiverLineBytes)
		var readyOnce sync.Once
		for sc.Scan() {
			line := sc.Text()
			log.Info("guest receiver", "line", line)
			m.mu.Lock()
			switch {
			case strings.Contains(line, receiverWaitingLine):
				c.info.State = "waiting"
				readyOnce.Do(func() { close(c.ready) })
			case strings.Contains(line, receiverResumedLine):
				c.info.State = "running"
			case strings.Contains(line, receiverMigratedOut):
				c.info.State = "migrated"
			}
			m.mu.Unlock()
		}
		io.Copy(io.Discard, stdout) // a line too long: keep the child from blocking
		err := cmd.Wait()
		m.mu.Lock()
		c.info.State, c.info.Exit = "exited", "exit status 0"
		if err != nil {
			c.info.Exit = err.Error()
		}
		if m.byName[req.Name] == c {
			delete(m.byName, req.Name)
		}
		m.mu.Unlock()
		log.Info("guest receiver exited", "err", err, "stderr", c.stderr.String())
		close(c.done)
	}()
	return c, nil
}

// waitReady waits until c listens, exits or the start timeout passes.
func (m *guestReceivers) waitReady(ctx context.Context, c *receiverChild) (GuestReceiver, error) {
	t := time.NewTimer(receiverStartTimeoutMs * time.Millisecond)
	defer t.Stop()
	select {
	case <-c.ready:
		m.mu.Lock()
		defer m.mu.Unlock()
		return c.info, nil
	case <-c.done:
		return GuestReceiver{}, fmt.Errorf("the receiver for guest %s exited before listening (%s): %s", c.info.Name, c.info.Exit, strings.TrimSpace(c.stderr.String()))
	case <-t.C:
	case <-ctx.Done():
	}
	m.stopChild(c)
	return GuestReceiver{}, fmt.Errorf("the receiver for guest %s did not listen within %d ms (stopped): %s", c.info.Name, receiverStartTimeoutMs, strings.TrimSpace(c.stderr.String()))
}

// stopChild asks c to stop, then kills it after the grace time.
func (m *guestReceivers) stopChild(c *receiverChild) {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(receiverStopGraceMs * time.Millisecond):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// list returns the children, by name.
func (m *guestReceivers) list() []GuestReceiver {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]GuestReceiver, 0, len(m.byName))
	for _, c := range m.byName {
		out = append(out, c.info)
	}
	slices.SortFunc(out, func(a, b GuestReceiver) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// stopAll stops every child and refuses new ones: the node stops.
func (m *guestReceivers) stopAll() {
	m.mu.Lock()
	m.stopped = true
	var cs []*receiverChild
	for _, c := range m.byName {
		cs = append(cs, c)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { m.stopChild(c) })
	}
	wg.Wait()
	// The manager stays in receiverManagers, stopped: a request that
	// arrives after the node stopped must not start a child nobody stops.
}

// receiveOn starts a receiver on the node named by req.Node: here, or
// through that node's peer API.
func (d *Daemon) receiveOn(ctx context.Context, req GuestReceiveRequest) (GuestReceiver, error) {
	if err := checkGuestReceive(&req); err != nil {
		return GuestReceiver{}, err
	}
	cfg := d.config()
	me, _ := cfg.Node(d.loaded.Identity.ID)
	if req.Node == "" || req.Node == me.Name {
		req.Node = ""
		return d.guestReceivers().receive(ctx, req)
	}
	n, ok := cfg.NodeByName(req.Node)
	if !ok {
		names := make([]string, 0, len(cfg.Nodes))
		for _, x := range cfg.Nodes {
			names = append(names, x.Name)
		}
		return GuestReceiver{}, fmt.Errorf("no node named %q in the cluster (nodes: %s)", req.Node, strings.Join(names, ", "))
	}
	d.mu.Lock()
	member := slices.Contains(d.status.Quorum.Members, n.ID)
	d.mu.Unlock()
	if !member {
		return GuestReceiver{}, fmt.Errorf("node %s is down: it is not in this node's membership (see paddock status)", n.Name)
	}
	fwd := req
	fwd.Node = ""
	// Its own timeout: the configuration messages' 2 s is shorter than a
	// child's start may take on a busy host.
	status, data, err := d.peerCall(ctx, n, "POST", "/peer/v1/guests/receive", fwd, receiverPeerTimeoutMs*time.Millisecond, maxControlBodyBytes)
	if err != nil {
		return GuestReceiver{}, err
	}
	if status == http.StatusNotFound {
		return GuestReceiver{}, fmt.Errorf("node %s does not start guest receivers (its paddock is older): start \"paddock guest receive\" there by hand", n.Name)
	}
	if status != http.StatusOK {
		return GuestReceiver{}, fmt.Errorf("node %s: %s", n.Name, peerError(status, data))
	}
	var out GuestReceiver
	if err := json.Unmarshal(data, &out); err != nil {
		return GuestReceiver{}, fmt.Errorf("node %s answered: %w", n.Name, err)
	}
	return out, nil
}

// guestReceiveHandler serves POST /v1/guests/receive on the control API.
func (d *Daemon) guestReceiveHandler(w http.ResponseWriter, r *http.Request) {
	var req GuestReceiveRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if err := checkGuestReceive(&req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	out, err := d.receiveOn(r.Context(), req)
	if err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	writeJSONResponse(w, http.StatusOK, out)
}

// guestListHandler serves GET /v1/guests: this node's children.
func (d *Daemon) guestListHandler(w http.ResponseWriter, r *http.Request) {
	writeJSONResponse(w, http.StatusOK, d.guestReceivers().list())
}

// peerGuestReceiveHandler serves POST /peer/v1/guests/receive: another
// node of the cluster (its certificate chains to the cluster CA) asks this
// one to start a receiver.
func (d *Daemon) peerGuestReceiveHandler(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		writeError(w, http.StatusUnauthorized, errors.New("a cluster certificate is required"))
		return
	}
	var req GuestReceiveRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxReceiverBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("bad request body: %w", err))
		return
	}
	me, _ := d.config().Node(d.loaded.Identity.ID)
	if req.Node != "" && req.Node != me.Name {
		writeError(w, http.StatusBadRequest, fmt.Errorf("this is node %s, not %s", me.Name, req.Node))
		return
	}
	req.Node = ""
	if err := checkGuestReceive(&req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	out, err := d.guestReceivers().receive(r.Context(), req)
	if err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	writeJSONResponse(w, http.StatusOK, out)
}

// guestPeerRoutes registers the peer API's guest routes; servePeers
// (node/daemon.go) calls it.
func (d *Daemon) guestPeerRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /peer/v1/guests/receive", d.peerGuestReceiveHandler)
}

// controlMux is the control API's handler; serveControl calls
// stopChildren when the control server stops, that is when the node stops
// (the daemon has no other stop hook this file may use).
type controlMux struct {
	http.Handler
	d *Daemon
}

// stopChildren stops the node's receiver children and refuses new ones.
func (c controlMux) stopChildren() { c.d.guestReceivers().stopAll() }

// tailBuffer keeps the last bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func newTailBuffer(maxBytes int) *tailBuffer { return &tailBuffer{max: maxBytes} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
