package main

// Helpers shared by the namespace HA tests (ha_flap_test.go,
// ha_twonode_test.go): a volume cluster whose nodes live in the hosts of
// a netLab, a "power off" that kills a node with everything it started,
// and an NBD client whose socket lives in a host's namespace.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/nbd"
)

// makeNetVolumeCluster creates a cluster of one node per lab host
// (h1..hn on 10.77.0.i) with storage addresses, starts every node in its
// namespace and waits until all are members. extra are flags for
// "cluster create" (--token-ms, say).
func makeNetVolumeCluster(t *testing.T, lab *netLab, extra ...string) []*volNode {
	bin := testbin.Paddock(t)
	root := t.TempDir()
	var nodes []*volNode
	for i := 1; i <= len(lab.hosts); i++ {
		nodes = append(nodes, &volNode{testNode: testNode{name: fmt.Sprintf("h%d", i), dir: filepath.Join(root, fmt.Sprintf("h%d", i)),
			addr: fmt.Sprintf("10.77.0.%d:5405", i)}, storage: fmt.Sprintf("10.77.0.%d:10809", i)})
	}
	create := append([]string{"netns", "exec", lab.hosts[0], bin, "cluster", "create", "lab", "--data-dir", nodes[0].dir,
		"--node-name", "h1", "--cluster-addr", nodes[0].addr, "--storage-addr", nodes[0].storage}, extra...)
	testbin.Run(t, 30*time.Second, "ip", create...)
	startNetNode(t, lab, nodes, 0)
	for i := 1; i < len(nodes); i++ {
		tok := strings.Fields(testbin.Run(t, 30*time.Second, bin, "cluster", "add-token", "--data-dir", nodes[0].dir))[0]
		testbin.Run(t, 60*time.Second, "ip", "netns", "exec", lab.hosts[i], bin, "cluster", "join", nodes[0].addr, "--token", tok,
			"--data-dir", nodes[i].dir, "--node-name", nodes[i].name, "--cluster-addr", nodes[i].addr, "--storage-addr", nodes[i].storage)
		startNetNode(t, lab, nodes, i)
		nodes[0].waitStatus(t, fmt.Sprintf("%d members", i+1), 20*time.Second, members(i+1))
	}
	for _, n := range nodes {
		n.waitStatus(t, fmt.Sprintf("%d members", len(nodes)), 20*time.Second, members(len(nodes)))
	}
	return nodes
}

// startNetNode starts (or restarts) node i in its namespace.
func startNetNode(t *testing.T, lab *netLab, nodes []*volNode, i int) {
	nodes[i].proc = testbin.Start(t, "ip", "netns", "exec", lab.hosts[i], testbin.Paddock(t), "node", "--data-dir", nodes[i].dir, "--log-level", "debug")
	nodes[i].proc.WaitFor(t, "node started", 10*time.Second)
}

// powerOff kills a process and every process it started, whatever their
// process group (fence agents run in their own): what pulling the power
// does to a host. "ip netns exec" execs, so the pid is the node's.
func powerOff(p *testbin.Proc) {
	if p.Cmd.Process == nil {
		return
	}
	pids := []int{p.Cmd.Process.Pid}
	for i := 0; i < len(pids) && i < 1000; i++ {
		pids = append(pids, childrenOf(pids[i])...)
	}
	// Stop them all first, so none starts anything new meanwhile.
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGSTOP)
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	p.Kill()
}

// childrenOf lists the processes whose parent is pid (from /proc).
func childrenOf(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut
		// after the last ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndex(s, ")")+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, c)
		}
	}
	return out
}

// dialNBDInNS connects an NBD client to addr from inside the network
// namespace ns (a lab host): the socket is made on a thread that joined
// the namespace, and a socket keeps its namespace for life. The thread
// stays locked and is thrown away when the goroutine ends.
func dialNBDInNS(ns, addr, export string, timeout time.Duration) (*nbd.Client, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, timeout)
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	c, err := nbd.NewClient(r.c, nbd.ClientOptions{Export: export, Timeout: timeout})
	if err != nil {
		r.c.Close()
		return nil, err
	}
	return c, nil
}

// powerSwitch pulls a node's plug when its fence_dummy status file says
// off, as a fence device's outlet would, and records when.
type powerSwitch struct {
	mu    sync.Mutex
	offAt map[int]time.Time
}

// watchPower watches the status files (node index to file) of nodes every
// 20 ms until the test ends.
func watchPower(t *testing.T, nodes []*volNode, files map[int]string) *powerSwitch {
	ps := &powerSwitch{offAt: map[int]time.Time{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			for i, f := range files {
				b, _ := os.ReadFile(f)
				ps.mu.Lock()
				if _, done := ps.offAt[i]; !done && strings.TrimSpace(string(b)) == "off" {
					powerOff(nodes[i].proc)
					ps.offAt[i] = time.Now()
				}
				ps.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
	return ps
}

// off says whether (and when) node i's plug was pulled.
func (ps *powerSwitch) off(i int) (time.Time, bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	at, ok := ps.offAt[i]
	return at, ok
}

// count is how many plugs were pulled.
func (ps *powerSwitch) count() int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return len(ps.offAt)
}

// on forgets that node i was powered off (it is on again).
func (ps *powerSwitch) on(i int) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	delete(ps.offAt, i)
}
