package main

// A Jepsen-style campaign over a 3-node volume cluster in network
// namespaces: clients write unique values to blocks (and read blocks)
// through any node, a nemesis injects random faults on the primary's
// node (kill -9 and restart, partition, SIGSTOP/SIGCONT) or on a
// secondary (kill -9 and restart), bounded in count and time; at the end
// everything heals, every block is read back through the primary, the
// history is checked (internal/history) and the replicas are compared
// byte for byte.

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/history"
	"github.com/paddock-io/paddock/nbd"
	"github.com/paddock-io/paddock/node"
)

// Fault kinds of the nemesis.
const (
	faultKillPrimary      = "kill-primary"
	faultPartitionPrimary = "partition-primary"
	faultPausePrimary     = "pause-primary"
	faultRestartSecondary = "restart-secondary"
)

// maxShownOps bounds the operations a failed check prints.
const maxShownOps = 400

var allFaults = []string{faultKillPrimary, faultPartitionPrimary, faultPausePrimary, faultRestartSecondary}

// campaign is one run: its cluster, clients and limits.
type campaign struct {
	t      *testing.T
	lab    *netLab
	nodes  []*volNode
	volume string
	rng    *rand.Rand
	// tokenMs is the cluster's token: fault lengths are chosen around
	// the survivors' wait (about 5.65 tokens from the cut to a
	// promotion without a fence device, fence/lease.go).
	tokenMs int
	// faults is how many faults the nemesis injects; maxFaultMs bounds
	// the length of one.
	faults     int
	maxFaultMs int
	// kinds are the faults the nemesis picks from (allFaults if empty).
	kinds   []string
	clients int
	blocks  int64
	// recoverTimeout bounds the wait for 3 members and UpToDate replicas
	// after each fault and at the end.
	recoverTimeout time.Duration

	rec  *history.Recorder
	log  []string // what the nemesis did, for the failure message
	hcls []*histClient
	// oldLogs are the outputs of node processes killed and replaced:
	// their promotions count for the epoch check too.
	oldLogs []string
}

// restart starts node i again, keeping the killed process's log.
func (c *campaign) restart(i int) {
	c.oldLogs = append(c.oldLogs, c.nodes[i].proc.Output())
	startNetNode(c.t, c.lab, c.nodes, i)
}

func (c *campaign) logf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	c.log = append(c.log, s)
	c.t.Log(s)
}

// primary finds the volume's primary (index), asking the live nodes.
func (c *campaign) primary() int {
	for _, n := range c.nodes {
		if n.proc == nil || n.proc.Exited() {
			continue
		}
		st := n.volumeStatus(c.t, c.volume)
		for i, m := range c.nodes {
			if st.Primary != "" && m.name == st.Primary {
				return i
			}
		}
	}
	return -1
}

func (c *campaign) ms(lo, hi int) time.Duration {
	return time.Duration(lo+c.rng.IntN(hi-lo+1)) * time.Millisecond
}

// inject runs one fault and heals it.
func (c *campaign) inject(round int, kind string) {
	p := c.primary()
	if p < 0 {
		p = c.rng.IntN(len(c.nodes))
		c.logf("round %d: no primary known; fault on h%d", round, p+1)
	}
	// Long enough, often, for the survivors to take over (about 5.65
	// tokens), sometimes shorter.
	long := c.ms(c.tokenMs*6, c.maxFaultMs)
	switch kind {
	case faultKillPrimary:
		c.logf("round %d: kill -9 %s (primary), restart after %v", round, c.nodes[p].name, long)
		powerOff(c.nodes[p].proc)
		time.Sleep(long)
		c.restart(p)
	case faultPartitionPrimary:
		c.logf("round %d: partition %s (primary) for %v", round, c.nodes[p].name, long)
		c.lab.cut(p + 1)
		time.Sleep(long)
		c.lab.heal(p + 1)
	case faultPausePrimary:
		c.logf("round %d: SIGSTOP %s (primary) for %v", round, c.nodes[p].name, long)
		c.nodes[p].proc.Cmd.Process.Signal(syscall.SIGSTOP)
		time.Sleep(long)
		c.nodes[p].proc.Cmd.Process.Signal(syscall.SIGCONT)
	case faultRestartSecondary:
		s := (p + 1 + c.rng.IntN(len(c.nodes)-1)) % len(c.nodes)
		short := c.ms(200, c.tokenMs*4)
		c.logf("round %d: kill -9 %s (secondary), restart after %v", round, c.nodes[s].name, short)
		powerOff(c.nodes[s].proc)
		time.Sleep(short)
		c.restart(s)
	}
}

// settle waits until every node sees 3 members and every replica is
// UpToDate.
func (c *campaign) settle(what string) {
	deadline := time.Now().Add(c.recoverTimeout)
	for _, n := range c.nodes {
		for {
			s, _ := n.status(c.t)
			if members(len(c.nodes))(s) {
				break
			}
			if time.Now().After(deadline) {
				if crash := c.crash(); crash != "" {
					c.t.Fatalf("%s; faults:\n%s", crash, joinLines(c.log))
				}
				c.dumpStacks()
				c.t.Fatalf("%s: not %d members %s within %v; last status %+v; faults:\n%s", n.name, len(c.nodes), what, c.recoverTimeout, s.Quorum, joinLines(c.log))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	c.waitServing(what, deadline)
}

// waitServing waits until every replica is UpToDate and one of them
// serves as primary (promoted, not only named in the configuration).
func (c *campaign) waitServing(what string, deadline time.Time) node.VolumeStatus {
	for {
		st := c.nodes[0].volumeStatus(c.t, c.volume)
		ok, serving := len(st.Replicas) > 0, false
		for _, r := range st.Replicas {
			ok = ok && r.State == "UpToDate" && r.OutOfSyncBytes == 0
			serving = serving || (r.Role == "primary" && r.Node == st.Primary)
		}
		if ok && serving {
			return st
		}
		if time.Now().After(deadline) {
			var errs []string
			for _, r := range st.Reports {
				if r.PromoteErr != "" {
					errs = append(errs, r.Node+": "+r.PromoteErr)
				}
			}
			c.t.Fatalf("volume %s: no promoted primary with every replica UpToDate %s within %v: primary %q, replicas %+v, promotion errors %q; faults:\n%s",
				c.volume, what, c.recoverTimeout, st.Primary, st.Replicas, errs, joinLines(c.log))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// crash names a node whose process died of a panic, with the panic's
// first lines ("" if none did).
func (c *campaign) crash() string {
	for _, n := range c.nodes {
		out := n.proc.Output()
		if i := strings.Index(out, "panic: "); i >= 0 && n.proc.Exited() {
			end := min(len(out), i+1500)
			return fmt.Sprintf("node %s crashed:\n%s", n.name, out[i:end])
		}
	}
	return ""
}

// dumpStacks makes every node print its goroutines (SIGQUIT: the Go
// runtime writes every stack to stderr and exits), so a node that hangs
// shows where; the test prints the nodes' output when it fails.
func (c *campaign) dumpStacks() {
	for _, n := range c.nodes {
		if n.proc != nil && !n.proc.Exited() {
			n.proc.Cmd.Process.Signal(syscall.SIGQUIT)
		}
	}
	time.Sleep(2 * time.Second) // let the runtime write the stacks
}

// run starts the clients, injects the faults, heals, reads back and
// checks. It fails the test on any violation.
func (c *campaign) run(seed uint64) history.Result {
	t := c.t
	c.rec = history.NewRecorder(0)
	var values atomic.Uint64
	var names []string
	for _, n := range c.nodes {
		names = append(names, n.name)
	}
	// A client reaches node i from inside host i's namespace, so a cut
	// host's clients still reach their own (cut) node, and a client
	// moving to another node is not blocked by the cut.
	dial := func(i int) (*nbd.Client, error) {
		return dialNBDInNS(c.lab.hosts[i], c.nodes[i].storage, c.volume, 2*time.Second)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < c.clients; i++ {
		hc := newHistClient(i, c.rec, &values, c.blocks, names, dial)
		hc.opTimeout = 5 * time.Second
		c.hcls = append(c.hcls, hc)
		wg.Add(1)
		go func(hc *histClient, s uint64) { defer wg.Done(); hc.run(stop, newRand(s)) }(hc, seed+uint64(i)+1)
	}
	stopClients := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	t.Cleanup(stopClients)
	time.Sleep(time.Second)

	// The first rounds go through every kind once, in random order;
	// later ones pick at random.
	kinds := c.kinds
	if len(kinds) == 0 {
		kinds = allFaults
	}
	order := append([]string(nil), kinds...)
	c.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for round := 1; round <= c.faults; round++ {
		kind := kinds[c.rng.IntN(len(kinds))]
		if round <= len(order) {
			kind = order[round-1]
		}
		c.inject(round, kind)
		c.settle(fmt.Sprintf("after round %d", round))
	}
	time.Sleep(time.Second) // writes after the last recovery too
	stopClients()

	if crash := c.crash(); crash != "" {
		t.Fatalf("%s; faults:\n%s", crash, joinLines(c.log))
	}
	st := c.waitServing("at the end", time.Now().Add(c.recoverTimeout))
	p := -1
	for i, n := range c.nodes {
		if n.name == st.Primary {
			p = i
		}
	}
	if p < 0 {
		t.Fatalf("no primary after the campaign: %+v", st)
	}
	conn, err := dial(p)
	if err != nil {
		t.Fatal(err)
	}
	torn, err := histReadBack(c.rec, conn, c.blocks, c.nodes[p].name)
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	logs := append([]string(nil), c.oldLogs...)
	for _, n := range c.nodes {
		logs = append(logs, n.proc.Output())
	}
	claims := histEpochClaims(c.volume, logs...)
	res := history.Check(c.rec.Ops(), claims, true)
	for i, hc := range c.hcls {
		conns, errs, last := hc.stats()
		t.Logf("client %d: %d connections, %d errors (last: %v)", i, conns, errs, last)
	}
	t.Logf("seed %d: %v; %d torn blocks; epochs claimed: %v", seed, res, torn, claims)
	if !res.OK() {
		t.Errorf("history check failed (seed %d); faults:\n%s", seed, joinLines(c.log))
		// Every operation on the blocks in question, with wall-clock
		// times to match the node logs below.
		bad := map[int64]bool{}
		for _, v := range res.Violations {
			bad[v.Block] = true
		}
		origin := c.rec.Origin()
		shown := 0
		for _, o := range c.rec.Ops() {
			if bad[o.Block] && shown < maxShownOps {
				shown++
				t.Logf("  %s  %s..%s", o, origin.Add(time.Duration(o.StartNs)).UTC().Format("15:04:05.000"),
					origin.Add(time.Duration(o.EndNs)).UTC().Format("15:04:05.000"))
			}
		}
		for _, n := range c.nodes {
			for _, l := range haLineRE.FindAllString(n.proc.Output(), -1) {
				t.Log(n.name + ": " + l)
			}
		}
	}
	if res.AckedWrites == 0 {
		t.Error("no write was acknowledged at all")
	}
	want := replicaData(t, c.nodes[0], st.Volume.ID)
	for _, n := range c.nodes[1:] {
		if !bytes.Equal(want, replicaData(t, n, st.Volume.ID)) {
			t.Errorf("replica on %s differs from %s's after the campaign (seed %d)", n.name, c.nodes[0].name, seed)
		}
	}
	return res
}

func joinLines(ls []string) string {
	var b bytes.Buffer
	for _, l := range ls {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}
