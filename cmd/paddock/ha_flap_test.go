package main

// A flapping link, in network namespaces: the link of the volume's
// primary (its veth's bridge end, as a pulled cable) goes down and up six
// times, for 0.3 to 3 s, some downs shorter than the token, some past the
// lease, some past the survivors' wait so they promote another replica.
// A client writes unique values through h3 all along (its socket inside
// h3's namespace, so only the links between nodes flap). Afterwards:
// every acknowledged write reads back (or a later write to its block
// does), no epoch was promoted by two nodes, a node never cut never
// self-fenced, and the cluster settles with one primary and three
// byte-identical UpToDate replicas.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
	"github.com/paddock-io/paddock/nbd"
)

// haLineRE picks the log lines that tell a failover's story (go test -v
// prints them).
var haLineRE = regexp.MustCompile(`(?m)^.*(promoted|promotion failed|failover|self-fence|deposed|taking the primary|takeover|stepping down|inquorate).*$`)

const (
	flapTokenMs      = 400
	flapBlockBytes   = 4096
	flapBlocks       = 1024 // the first 4 MiB of the volume
	flapWriteTimeout = 20 * time.Second
)

// flapWrite is one write of the history: seq is unique and is what the
// block holds if the write took effect.
type flapWrite struct {
	seq   uint64
	acked bool
}

// flapBlock fills a block with its number and seq, repeated, so a torn or
// misplaced block is seen too.
func flapBlock(blk int, seq uint64) []byte {
	b := make([]byte, flapBlockBytes)
	for o := 0; o < len(b); o += 16 {
		binary.LittleEndian.PutUint64(b[o:], uint64(blk))
		binary.LittleEndian.PutUint64(b[o+8:], seq)
	}
	return b
}

// flapWriter writes through one node until stop closes, reconnecting
// after any error; a write that errs or times out is not acknowledged (it
// may or may not have taken effect).
type flapWriter struct {
	ns, addr string

	mu      sync.Mutex
	history [flapBlocks][]flapWrite
	acked   int
	failed  int
	conns   int
}

func (w *flapWriter) run(stop <-chan struct{}, rng *rand.Rand) {
	var c *nbd.Client
	defer func() {
		if c != nil {
			c.Abort()
		}
	}()
	for seq := uint64(1); ; seq++ {
		select {
		case <-stop:
			return
		default:
		}
		if c == nil {
			var err error
			if c, err = dialNBDInNS(w.ns, w.addr, "vm", 5*time.Second); err != nil {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			w.mu.Lock()
			w.conns++
			w.mu.Unlock()
		}
		blk := rng.IntN(flapBlocks)
		w.mu.Lock()
		w.history[blk] = append(w.history[blk], flapWrite{seq: seq})
		i := len(w.history[blk]) - 1
		w.mu.Unlock()
		done := make(chan error, 1)
		go func(c *nbd.Client) { done <- c.WriteAt(flapBlock(blk, seq), int64(blk)*flapBlockBytes, 0) }(c)
		var err error
		select {
		case err = <-done:
		case <-time.After(flapWriteTimeout):
			err = fmt.Errorf("no reply within %v", flapWriteTimeout)
		}
		w.mu.Lock()
		if err == nil {
			w.history[blk][i].acked = true
			w.acked++
		} else {
			w.failed++
		}
		w.mu.Unlock()
		if err != nil {
			c.Abort()
			c = nil
		}
	}
}

// allowed says whether a block's final seq is one the history permits:
// the last acknowledged write, or any write after it (not acknowledged,
// so it may have landed); 0 (never written) only when no write was
// acknowledged.
func (w *flapWriter) allowed(blk int, seq uint64) bool {
	h := w.history[blk]
	last := -1
	for i, wr := range h {
		if wr.acked {
			last = i
		}
	}
	if last < 0 && seq == 0 {
		return true
	}
	for _, wr := range h[max(last, 0):] {
		if wr.seq == seq {
			return true
		}
	}
	return false
}

func TestFlappingPrimaryLink(t *testing.T) {
	lab := newNetLab(t, 3)
	bin := testbin.Paddock(t)
	nodes := makeNetVolumeCluster(t, lab, "--token-ms", strconv.Itoa(flapTokenMs))
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "h1,h2,h3", "--data-dir", nodes[0].dir)
	nodes[2].waitUpToDate(t, "vm", 30*time.Second)

	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("PADDOCK_FLAP_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("PADDOCK_FLAP_SEED=%d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	w := &flapWriter{ns: lab.hosts[2], addr: nodes[2].storage}
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); w.run(stop, rand.New(rand.NewPCG(seed, 2))) }()
	stopWriter := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-writerDone
	}
	t.Cleanup(stopWriter)
	time.Sleep(time.Second)

	// Six downs: two shorter than the token, two between the token and
	// about 5 tokens (past the survivors' wait of about 2.1 tokens +
	// 0.1 s after the last heartbeat heard, fence/lease.go, for some),
	// two near 3 s, well past it: a failover. In random order.
	ms := func(lo, hi int) time.Duration { return time.Duration(lo+rng.IntN(hi-lo+1)) * time.Millisecond }
	downs := []time.Duration{ms(300, flapTokenMs-50), ms(300, flapTokenMs-50), ms(flapTokenMs+100, 2000), ms(flapTokenMs+100, 2000),
		ms(2700, 3000), ms(2700, 3000)}
	rng.Shuffle(len(downs), func(i, j int) { downs[i], downs[j] = downs[j], downs[i] })
	cut := map[string]bool{}
	for round, down := range downs {
		st := nodes[2].volumeStatus(t, "vm")
		victim := 0
		for i, n := range nodes {
			if n.name == st.Primary {
				victim = i + 1
			}
		}
		if victim == 0 {
			victim = 1 + rng.IntN(3) // no primary right now: flap anyone
		}
		cut[nodes[victim-1].name] = true
		port := fmt.Sprintf("v%d", victim)
		sh(t, "ip", "-n", lab.bridge, "link", "set", port, "down")
		time.Sleep(down)
		sh(t, "ip", "-n", lab.bridge, "link", "set", port, "up")
		t.Logf("round %d: primary %q; link of h%d down for %v", round+1, st.Primary, victim, down)
		time.Sleep(ms(300, 1000))
	}

	// Settle: all members, every replica UpToDate, one primary.
	for _, n := range nodes {
		n.waitStatus(t, "3 members after the flapping", 30*time.Second, members(3))
	}
	time.Sleep(time.Second) // a few more writes after the last heal
	stopWriter()
	st := nodes[0].waitUpToDate(t, "vm", 60*time.Second)
	primaries := 0
	for _, r := range st.Replicas {
		if r.Role == "primary" {
			primaries++
		}
	}
	if primaries != 1 || st.Primary == "" {
		t.Fatalf("after settling: primary %q, %d replicas in the primary role: %+v", st.Primary, primaries, st.Replicas)
	}
	t.Logf("writes: %d acknowledged, %d failed or timed out, %d connections; final primary %s", w.acked, w.failed, w.conns, st.Primary)
	if w.acked == 0 {
		t.Fatal("no write was acknowledged at all")
	}

	// Every acknowledged write is there (or a later one to its block).
	c, err := dialNBDInNS(lab.hosts[0], nodes[0].storage, "vm", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, flapBlockBytes)
	for blk := 0; blk < flapBlocks; blk++ {
		if err := c.ReadAt(buf, int64(blk)*flapBlockBytes); err != nil {
			t.Fatalf("read block %d after settling: %v", blk, err)
		}
		seq := binary.LittleEndian.Uint64(buf[8:])
		want := flapBlock(blk, seq)
		if seq == 0 {
			want = make([]byte, flapBlockBytes)
		}
		if !bytes.Equal(buf, want) {
			t.Fatalf("block %d is torn or misplaced (starts %x)", blk, buf[:16])
		}
		if !w.allowed(blk, seq) {
			t.Fatalf("block %d holds seq %d; its history %+v: an acknowledged write was lost", blk, seq, w.history[blk])
		}
	}

	// Replicas byte-identical.
	want := replicaData(t, nodes[0], st.Volume.ID)
	for _, n := range nodes[1:] {
		if !bytes.Equal(want, replicaData(t, n, st.Volume.ID)) {
			t.Fatalf("replica on %s differs from h1's after settling", n.name)
		}
	}

	// Epochs: no epoch was promoted by two nodes (so no two primaries
	// could get writes acknowledged under one epoch), and only nodes
	// that were cut self-fenced.
	promotedRE := regexp.MustCompile(`msg=promoted node=(h\d) .*volume_name=vm .*epoch=(\d+)`)
	byEpoch := map[string]string{}
	for _, n := range nodes {
		out := n.proc.Output()
		var epochs []string
		for _, m := range promotedRE.FindAllStringSubmatch(out, -1) {
			if other, ok := byEpoch[m[2]]; ok && other != m[1] {
				t.Fatalf("epoch %s promoted by both %s and %s", m[2], other, m[1])
			}
			byEpoch[m[2]] = m[1]
			epochs = append(epochs, m[2])
		}
		selfFences := regexp.MustCompile(`self-fence: closing the primary`).FindAllStringIndex(out, -1)
		stepDowns := regexp.MustCompile(`primary role moved to another node; stepping down`).FindAllStringIndex(out, -1)
		t.Logf("%s: promoted in epochs %v, self-fenced %d times, stepped down %d times, cut: %v", n.name, epochs, len(selfFences), len(stepDowns), cut[n.name])
		if testing.Verbose() {
			for _, l := range haLineRE.FindAllString(out, -1) {
				t.Log(l)
			}
		}
		if len(selfFences) > 0 && !cut[n.name] {
			t.Errorf("%s self-fenced but its link never went down", n.name)
		}
	}
}
