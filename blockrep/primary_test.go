package blockrep

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testCluster runs replicas of one volume in this process, each behind a
// real TCP listener serving the peer protocol. The dialer announces its
// node id in 4 bytes (the daemon uses the TLS certificate instead).
type testCluster struct {
	t       testing.TB
	size    int64
	ids     []NodeID
	mu      sync.Mutex
	nodes   map[NodeID]*testNode
	baseDir string
}

type testNode struct {
	id    NodeID
	rep   *Replica
	srv   *Server
	ln    net.Listener
	addr  string
	conns []net.Conn
	ctx   context.Context
	stop  context.CancelFunc
}

const testVolume = 77

func newTestCluster(t testing.TB, n int, size int64) *testCluster {
	c := &testCluster{t: t, size: size, nodes: map[NodeID]*testNode{}, baseDir: t.TempDir()}
	for i := 1; i <= n; i++ {
		c.ids = append(c.ids, NodeID(i))
	}
	for _, id := range c.ids {
		c.start(id, "")
	}
	t.Cleanup(func() {
		for _, id := range c.ids {
			c.kill(id)
		}
	})
	return c
}

// start opens (or creates) a node's replica and serves it; addr reuses the
// node's previous address when set.
func (c *testCluster) start(id NodeID, addr string) *testNode {
	c.t.Helper()
	rep, err := OpenReplica(filepath.Join(c.baseDir, "n", string(rune('0'+id))), ReplicaOptions{Self: id, VolumeID: testVolume, SizeBytes: c.size, Members: c.ids})
	if err != nil {
		c.t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		c.t.Fatal(err)
	}
	n := &testNode{id: id, rep: rep, ln: ln, addr: ln.Addr().String()}
	n.ctx, n.stop = context.WithCancel(context.Background())
	n.srv = &Server{Self: id, Lookup: func(v uint64) Handler {
		if v == testVolume {
			return rep
		}
		return nil
	}, Logger: quietLog()}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			var b [4]byte
			if _, err := io.ReadFull(conn, b[:]); err != nil {
				conn.Close()
				continue
			}
			c.mu.Lock()
			n.conns = append(n.conns, conn)
			c.mu.Unlock()
			go n.srv.ServeConn(n.ctx, conn, NodeID(binary.BigEndian.Uint32(b[:])))
		}
	}()
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	return n
}

// kill stops a node abruptly: its connections drop mid-flight.
func (c *testCluster) kill(id NodeID) string {
	c.mu.Lock()
	n := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	if n == nil {
		return ""
	}
	n.ln.Close()
	n.stop()
	c.mu.Lock()
	for _, conn := range n.conns {
		conn.Close()
	}
	c.mu.Unlock()
	// Let in-flight handlers finish before the files close.
	time.Sleep(50 * time.Millisecond)
	n.rep.Close()
	return n.addr
}

func (c *testCluster) dialer(self NodeID) func(ctx context.Context, peer NodeID) (net.Conn, error) {
	return func(ctx context.Context, peer NodeID) (net.Conn, error) {
		c.mu.Lock()
		n := c.nodes[peer]
		c.mu.Unlock()
		if n == nil {
			return nil, errors.New("node down")
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", n.addr)
		if err != nil {
			return nil, err
		}
		conn.Write(binary.BigEndian.AppendUint32(nil, uint32(self)))
		return conn, nil
	}
}

func (c *testCluster) promote(id NodeID) (*Primary, error) {
	c.mu.Lock()
	n := c.nodes[id]
	c.mu.Unlock()
	return Promote(context.Background(), PrimaryConfig{
		Self: id, VolumeID: testVolume, Replicas: c.ids, Local: n.rep, Dial: c.dialer(id),
		PeerTimeout: 3 * time.Second, ReadLease: 100 * time.Millisecond, OnNoQuorum: IOError,
		Logger: quietLog(),
	})
}

func (c *testCluster) dataOf(id NodeID) []byte {
	b, err := os.ReadFile(filepath.Join(c.baseDir, "n", string(rune('0'+id)), "data"))
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

// waitSynced waits until every replica is a member again with nothing
// left to send.
func waitSynced(t testing.TB, p *Primary, want int) PrimaryStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := p.Status()
		ok := len(st.Members) == want
		for _, ps := range st.Peers {
			if ps.State == PeerVoter {
				continue
			}
			if ps.State != PeerMember || ps.OutOfSyncBytes != 0 {
				ok = false
			}
		}
		if ok {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas did not catch up: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// randomWrites writes count random blocks from 8 writers at once (as a
// client with a queue depth does); the blocks do not overlap so the
// result does not depend on their order.
func randomWrites(t *testing.T, p *Primary, rng *rand.Rand, count int, blockBytes int64) int64 {
	t.Helper()
	blocks := p.Size() / blockBytes
	offs := rng.Perm(int(blocks))[:count]
	seeds := make([]uint64, count)
	for i := range seeds {
		seeds[i] = rng.Uint64()
	}
	var wg sync.WaitGroup
	errs := make(chan error, count)
	next := make(chan int, count)
	for i := range offs {
		next <- i
	}
	close(next)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, blockBytes)
			for i := range next {
				r := rand.New(rand.NewPCG(seeds[i], 0))
				for j := range buf {
					buf[j] = byte(r.Uint32())
				}
				off := int64(offs[i]) * blockBytes
				if err := p.WriteAt(buf, off, false); err != nil {
					errs <- fmt.Errorf("write %d at %d: %w", i, off, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return int64(count) * blockBytes
}

func TestPrimaryMirrorsAndResyncsOnlyWhatWasMissed(t *testing.T) {
	const size = 16 << 20
	c := newTestCluster(t, 3, size)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	randomWrites(t, p, rng, 200, 64<<10)
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []NodeID{2, 3} {
		if !bytes.Equal(c.dataOf(1), c.dataOf(id)) {
			t.Fatalf("replica %d differs from the primary after mirrored writes", id)
		}
	}
	// Node 3 goes away; writes go on with 1 and 2 (a majority).
	addr := c.kill(3)
	missed := randomWrites(t, p, rng, 100, 64<<10)
	if st := p.Status(); len(st.Members) != 2 {
		t.Fatalf("node 3 still a member after it died: %+v", st)
	}
	c.start(3, addr)
	st := waitSynced(t, p, 3)
	var resent int64
	for _, ps := range st.Peers {
		if ps.Node == 3 {
			resent = ps.ResentBytes
			// Status reports the resync that brought it back.
			if ps.LastResyncResentBytes != resent || ps.LastResyncSeconds <= 0 || ps.LastResyncEndedAgo == "" {
				t.Fatalf("last resync %v s, %d bytes, ended %q ago; resent %d", ps.LastResyncSeconds, ps.LastResyncResentBytes, ps.LastResyncEndedAgo, resent)
			}
		}
		if ps.Node == 2 && ps.LastResyncEndedAgo != "" {
			t.Fatalf("node 2 never resynced, yet status shows a last resync: %+v", ps)
		}
	}
	if resent == 0 || float64(resent) > 1.25*float64(missed) {
		t.Fatalf("resent %d bytes for %d missed (want at most 1.25x)", resent, missed)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []NodeID{2, 3} {
		if !bytes.Equal(c.dataOf(1), c.dataOf(id)) {
			t.Fatalf("replica %d differs from the primary after resync", id)
		}
	}
}

func TestPrimaryWithoutQuorumFails(t *testing.T) {
	c := newTestCluster(t, 3, 4<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c.kill(2)
	c.kill(3)
	err = p.WriteAt(make([]byte, 4096), 0, false)
	if !errors.Is(err, unix.EIO) {
		t.Fatalf("write without a quorum: %v, want EIO (on-no-quorum io-error)", err)
	}
}

// A primary that a newer one superseded gets no write acknowledged and
// serves no reads (its clients see errors, not old data).
func TestStalePrimaryIsRefused(t *testing.T) {
	c := newTestCluster(t, 3, 4<<20)
	old, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.WriteAt(bytes.Repeat([]byte{1}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	newer, err := c.promote(2)
	if err != nil {
		t.Fatal(err)
	}
	defer newer.Close()
	if err := newer.WriteAt(bytes.Repeat([]byte{2}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := old.WriteAt(bytes.Repeat([]byte{3}, 4096), 0, false); !errors.Is(err, unix.EIO) {
		t.Fatalf("stale primary's write: %v, want EIO", err)
	}
	time.Sleep(150 * time.Millisecond) // past the read lease
	buf := make([]byte, 4096)
	if err := old.ReadAt(buf, 0); err == nil {
		t.Fatalf("stale primary served a read: %x", buf[:4])
	}
	if err := newer.ReadAt(buf, 0); err != nil || buf[0] != 2 {
		t.Fatalf("new primary read %x, %v", buf[:4], err)
	}
}

// A primary restarted without its bitmaps compares digests with a replica
// whose history it does not know, and sends only what differs.
func TestPromotionComparesDigestsOfUnknownReplicas(t *testing.T) {
	const size = 8 << 20
	c := newTestCluster(t, 3, size)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	randomWrites(t, p, rng, 50, 64<<10)
	addr := c.kill(3)
	missed := randomWrites(t, p, rng, 20, 64<<10)
	p.Flush()
	p.Close()
	// Node 2 takes over (it was a member all along); node 3 returns.
	c.start(3, addr)
	p2, err := c.promote(2)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	st := waitSynced(t, p2, 3)
	for _, ps := range st.Peers {
		if ps.Node == 3 && float64(ps.ResentBytes) > 1.25*float64(missed) {
			t.Fatalf("digest resync sent %d bytes for %d missed", ps.ResentBytes, missed)
		}
	}
	p2.Flush()
	for _, id := range []NodeID{1, 3} {
		if !bytes.Equal(c.dataOf(2), c.dataOf(id)) {
			t.Fatalf("replica %d differs after the new primary's resync", id)
		}
	}
}

// A corrupt block on the primary is read from a replica and repaired.
func TestPrimaryRepairsCorruptBlockOnRead(t *testing.T) {
	c := newTestCluster(t, 3, 4<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	want := bytes.Repeat([]byte("paddock!"), 512)
	if err := p.WriteAt(want, 8192, true); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(c.baseDir, "n", "1", "data"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("XX"), 8192+100)
	f.Close()
	got := make([]byte, 4096)
	if err := p.ReadAt(got, 8192); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read of a corrupt block: %v", err)
	}
	if p.Status().RepairedBlocks != 1 {
		t.Fatalf("repaired %d blocks, want 1", p.Status().RepairedBlocks)
	}
	if bad, err := p.Store().VerifyBlocks(0, 4<<20); err != nil || len(bad) != 0 {
		t.Fatalf("after repair: bad %v, %v", bad, err)
	}
}

// A peer message claiming another sender, or an old epoch, changes
// nothing.
func TestServerRefusesForgedAndStaleMessages(t *testing.T) {
	c := newTestCluster(t, 3, 4<<20)
	first, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	p, err := c.promote(1) // epoch 2: epoch 1 is now old
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	conn, err := c.dialer(2)(context.Background(), 3)
	if err != nil {
		t.Fatal(err)
	}
	l := newLink(3, conn)
	defer l.close()
	// Claims to be node 1 (the primary) on node 2's connection.
	a, err := l.call(&Message{Type: MsgWrite, Volume: testVolume, From: 1, Epoch: p.Epoch(), Gen: p.Status().Gen, Length: 4, Payload: []byte("evil")}, time.Second)
	if err == nil {
		err = errors.New(string(a.Payload))
		if a.Type == MsgWriteOK {
			t.Fatal("forged write accepted")
		}
	}
	// Node 2 with an old epoch.
	a, err = l.call(&Message{Type: MsgWrite, Volume: testVolume, From: 2, Epoch: p.Epoch() - 1, Gen: Gen{p.Epoch() - 1, 1}, Length: 4, Payload: []byte("evil")}, time.Second)
	if err != nil || a.Type != MsgRefuse {
		t.Fatalf("old-epoch write: %v %v", a, err)
	}
	// Past the end.
	a, err = l.call(&Message{Type: MsgSyncWrite, Volume: testVolume, From: 2, Epoch: p.Epoch(), Offset: 4 << 20, Length: 4, Payload: []byte("evil")}, time.Second)
	if err != nil || a.Type != MsgFailed {
		t.Fatalf("write past the end: %v %v", a, err)
	}
	// Unknown volume.
	a, err = l.call(&Message{Type: MsgRead, Volume: 5, From: 2, Epoch: p.Epoch(), Length: 4096}, time.Second)
	if err != nil || a.Type != MsgFailed {
		t.Fatalf("unknown volume: %v %v", a, err)
	}
	p.Flush()
	if bytes.Contains(c.dataOf(3), []byte("evil")) {
		t.Fatal("a refused message changed data")
	}
}

func quietLog() *slog.Logger {
	if testing.Verbose() {
		return slog.Default()
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// A primary that stops and is promoted again (same history) takes its
// saved bitmaps: the replica that was away gets only what it missed, with
// no digest comparison.
func TestPrimaryRestartKeepsBitmaps(t *testing.T) {
	c := newTestCluster(t, 3, 32<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	addr := c.kill(3)
	missed := randomWrites(t, p, rng, 40, 64<<10)
	p.Close()
	c.start(3, addr)
	p2, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	for _, ps := range p2.Status().Peers {
		if ps.Node == 3 && ps.CompareDigests {
			t.Fatal("the restarted primary compares digests although its bitmaps were saved")
		}
	}
	st := waitSynced(t, p2, 3)
	for _, ps := range st.Peers {
		if ps.Node == 3 && (ps.ResentBytes == 0 || float64(ps.ResentBytes) > 1.25*float64(missed)+float64(2*ExtentBytes)) {
			t.Fatalf("resent %d bytes for %d missed", ps.ResentBytes, missed)
		}
	}
	p2.Flush()
	if !bytes.Equal(c.dataOf(1), c.dataOf(3)) {
		t.Fatal("replica 3 differs after resync from saved bitmaps")
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// Scrub finds exactly the corrupted blocks, on the primary and on a
// secondary, repairs them from a good copy, and leaves the replicas
// identical.
func TestScrubFindsAndRepairsCorruption(t *testing.T) {
	c := newTestCluster(t, 3, 16<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	rng := rand.New(rand.NewPCG(7, 8))
	randomWrites(t, p, rng, 100, 64<<10)
	p.Flush()
	flipByte(t, filepath.Join(c.baseDir, "n", "2", "data"), 5*BlockBytes+17)
	flipByte(t, filepath.Join(c.baseDir, "n", "2", "data"), 1000*BlockBytes+1)
	flipByte(t, filepath.Join(c.baseDir, "n", "1", "data"), 77*BlockBytes+4095)
	rep, err := p.Scrub(context.Background(), false, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[NodeID][]int64{1: {77}, 2: {5, 1000}, 3: nil}
	for _, n := range rep.Nodes {
		if fmt.Sprint(n.BadBlocks) != fmt.Sprint(want[n.Node]) {
			t.Errorf("node %d: bad blocks %v, want %v", n.Node, n.BadBlocks, want[n.Node])
		}
	}
	if rep.Clean() {
		t.Fatal("verify found nothing")
	}
	rep, err = p.Scrub(context.Background(), true, 0)
	if err != nil {
		t.Fatal(err)
	}
	rep, err = p.Scrub(context.Background(), false, 0)
	if err != nil || !rep.Clean() {
		t.Fatalf("after repair: %+v %v", rep, err)
	}
	p.Flush()
	for _, id := range []NodeID{2, 3} {
		if !bytes.Equal(c.dataOf(1), c.dataOf(id)) {
			t.Fatalf("replica %d differs after scrub", id)
		}
	}
}

// Discard overwrites a replica's differing data from the primary; the
// primary refuses to discard itself.
func TestDiscardResyncsReplica(t *testing.T) {
	c := newTestCluster(t, 3, 8<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	randomWrites(t, p, rand.New(rand.NewPCG(9, 9)), 40, 64<<10)
	p.Flush()
	flipByte(t, filepath.Join(c.baseDir, "n", "3", "data"), 3<<20)
	if err := p.Discard(1); err == nil {
		t.Fatal("the primary discarded its own data")
	}
	if err := p.Discard(3); err != nil {
		t.Fatal(err)
	}
	waitSynced(t, p, 3)
	p.Flush()
	if !bytes.Equal(c.dataOf(1), c.dataOf(3)) {
		t.Fatal("replica 3 differs after discard")
	}
}

// Two candidates that pick the same epoch: only the first gets promises;
// the first asking again (it reconnected) gets the same promise back.
func TestPrepareFromSameEpoch(t *testing.T) {
	v := VoterState{ID: 3, HasData: true, Members: []NodeID{1, 2, 3}}
	if _, ref := v.PrepareFrom(5, 1); ref != nil {
		t.Fatal(ref)
	}
	if _, ref := v.PrepareFrom(5, 2); ref == nil {
		t.Fatal("a second candidate got a promise for the same epoch")
	}
	if p, ref := v.PrepareFrom(5, 1); ref != nil || p.Epoch != 5 {
		t.Fatalf("the same candidate asking again: %v %v", p, ref)
	}
	if _, ref := v.PrepareFrom(5, 0); ref == nil {
		t.Fatal("an anonymous candidate got a repeated promise")
	}
}

// startWitness serves a witness voter on a TCP listener; the returned
// dial function reaches it, kill stops it.
func startWitness(t *testing.T, dir string) (dial func(ctx context.Context) (net.Conn, error), kill func()) {
	w, err := OpenWitnessVoters(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &Server{Self: WitnessID, Lookup: func(uint64) Handler { return w }, Logger: quietLog()}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			go srv.ServeConn(ctx, conn, 0)
		}
	}()
	addr := ln.Addr().String()
	dial = func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	kill = func() {
		ln.Close()
		cancel()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}
	t.Cleanup(kill)
	return dial, kill
}

// 2 replicas + witness: either replica may die and writes go on with the
// other and the witness; the one that was away comes back and resyncs.
// Without the witness, the survivor could not acknowledge anything.
func TestTwoReplicasWithWitness(t *testing.T) {
	c := newTestCluster(t, 2, 8<<20)
	wdial, _ := startWitness(t, filepath.Join(c.baseDir, "witness"))
	promote := func(id NodeID) (*Primary, error) { return c.promoteWithWitness(id, wdial) }
	p, err := promote(1)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(11, 12))
	randomWrites(t, p, rng, 20, 64<<10)
	// The secondary dies: writes go on, confirmed by the witness.
	addr := c.kill(2)
	randomWrites(t, p, rng, 20, 64<<10)
	if err := p.Flush(); err != nil {
		t.Fatalf("flush with one replica and the witness: %v", err)
	}
	c.start(2, addr)
	waitSynced(t, p, 2)
	p.Flush()
	if !bytes.Equal(c.dataOf(1), c.dataOf(2)) {
		t.Fatal("replica 2 differs after its resync")
	}
	// Now the primary's node dies: node 2 promotes itself with the
	// witness's promise and writes on alone.
	p.Close()
	addr1 := c.kill(1)
	p2, err := promote(2)
	if err != nil {
		t.Fatalf("promotion of the survivor with the witness: %v", err)
	}
	defer p2.Close()
	randomWrites(t, p2, rng, 20, 64<<10)
	if err := p2.Flush(); err != nil {
		t.Fatal(err)
	}
	c.start(1, addr1)
	waitSynced(t, p2, 2)
	p2.Flush()
	if !bytes.Equal(c.dataOf(1), c.dataOf(2)) {
		t.Fatal("replica 1 differs after it came back")
	}
}

// Without a witness, one of two replicas cannot acknowledge a write.
func TestTwoReplicasWithoutWitnessStop(t *testing.T) {
	c := newTestCluster(t, 2, 4<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c.kill(2)
	if err := p.WriteAt(make([]byte, 4096), 0, false); !errors.Is(err, unix.EIO) {
		t.Fatalf("write with one of two replicas and no witness: %v", err)
	}
}

// A candidate that is not up to date fails its pre-vote and leaves every
// voter's epoch alone (it would otherwise depose a serving primary for
// nothing).
func TestStaleCandidateDoesNotRaiseEpochs(t *testing.T) {
	c := newTestCluster(t, 3, 4<<20)
	p, err := c.promote(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := c.kill(3)
	randomWrites(t, p, rand.New(rand.NewPCG(1, 1)), 10, 64<<10)
	before := c.nodes[1].rep.Voter().Promised
	p.Close()
	c.start(3, addr)
	if _, err := c.promote(3); err == nil || !strings.Contains(err.Error(), "not up to date") {
		t.Fatalf("stale node 3 promoted: %v", err)
	}
	for _, id := range []NodeID{1, 2} {
		c.mu.Lock()
		got := c.nodes[id].rep.Voter().Promised
		c.mu.Unlock()
		if got != before {
			t.Fatalf("node %d promised epoch %d after a failed pre-vote (was %d)", id, got, before)
		}
	}
}
