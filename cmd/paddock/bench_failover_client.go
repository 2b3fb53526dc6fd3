package main

// A client of the failover bench and of the history campaign test: it
// writes unique values to blocks of a volume (and reads blocks back)
// through any node's NBD server, records every operation in a
// history.Recorder, and on any error drops the connection and dials the
// next node.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/paddock-io/paddock/internal/history"
	"github.com/paddock-io/paddock/nbd"
)

const (
	// histBlockBytes is the size of one register: one 4 KiB block.
	histBlockBytes = 4096
	// histChunkBytes: every block is its number and value repeated
	// every 16 bytes, so a torn or misplaced block is seen.
	histChunkBytes = 16
	// tornValue is what a block that is neither zero nor one whole
	// pattern reads as: no writer uses it, so the checker calls it a
	// phantom.
	tornValue = math.MaxUint64
	// histRedialPauseMs spaces dials after a failed one, so a client
	// facing a cluster with no reachable node does not spin.
	histRedialPauseMs = 100
)

// histPattern is the content of block blk holding value val.
func histPattern(blk int64, val uint64) []byte {
	b := make([]byte, histBlockBytes)
	for o := 0; o < len(b); o += histChunkBytes {
		binary.LittleEndian.PutUint64(b[o:], uint64(blk))
		binary.LittleEndian.PutUint64(b[o+8:], val)
	}
	return b
}

// histDecode says which value block blk holds: history.Initial for
// zeroes, tornValue for anything that is not one whole pattern.
func histDecode(blk int64, b []byte) uint64 {
	if len(b) != histBlockBytes {
		return tornValue
	}
	val := binary.LittleEndian.Uint64(b[8:])
	if val == history.Initial {
		if bytes.Equal(b, make([]byte, histBlockBytes)) {
			return history.Initial
		}
		return tornValue
	}
	if !bytes.Equal(b, histPattern(blk, val)) {
		return tornValue
	}
	return val
}

// histDialer connects to node i (an index into the client's node list).
type histDialer func(i int) (*nbd.Client, error)

// histClient is one client of a campaign.
type histClient struct {
	id     int
	rec    *history.Recorder
	values *atomic.Uint64 // shared by all clients: every value written once
	blocks int64
	nodes  []string // names, for the history
	dial   histDialer
	// opTimeout bounds one NBD request: past it the request counts as
	// unknown (info) and the connection is dropped.
	opTimeout time.Duration
	// readPercent of the operations are reads.
	readPercent int

	// prefer, when >= 0, is the node the client must use: it redials
	// there before its next operation (the bench points the clients at
	// the primary's node before killing it).
	prefer atomic.Int32
	// onAck, when set, is called after every acknowledged write with
	// the node it went through (the bench watches for the first write
	// after a kill).
	onAck func(node string)

	mu      sync.Mutex
	lastAck string // node of the last acknowledged write
	conns   int
	errs    int
	lastErr error
}

func newHistClient(id int, rec *history.Recorder, values *atomic.Uint64, blocks int64, nodes []string, dial histDialer) *histClient {
	c := &histClient{id: id, rec: rec, values: values, blocks: blocks, nodes: nodes, dial: dial,
		opTimeout: 10 * time.Second, readPercent: 20}
	c.prefer.Store(-1)
	return c
}

// run issues operations until stop closes (or the history is full).
func (c *histClient) run(stop <-chan struct{}, rng *rand.Rand) {
	var conn *nbd.Client
	cur := -1
	defer func() {
		if conn != nil {
			conn.Abort()
		}
	}()
	next := c.id % len(c.nodes)
	for {
		select {
		case <-stop:
			return
		default:
		}
		if p := int(c.prefer.Load()); p >= 0 && p != cur && conn != nil {
			conn.Abort()
			conn, next = nil, p
		}
		if conn == nil {
			if p := int(c.prefer.Load()); p >= 0 {
				next = p
			}
			var err error
			conn, err = c.dial(next)
			if err != nil {
				c.noteErr(err)
				next = (next + 1) % len(c.nodes)
				select {
				case <-stop:
					return
				case <-time.After(histRedialPauseMs * time.Millisecond):
				}
				continue
			}
			cur = next
			c.mu.Lock()
			c.conns++
			c.mu.Unlock()
		}
		blk := rng.Int64N(c.blocks)
		var err error
		if rng.IntN(100) < c.readPercent {
			err = c.read(conn, cur, blk)
		} else {
			err = c.write(conn, cur, blk)
		}
		if err != nil {
			if errors.Is(err, errHistoryFull) {
				return
			}
			c.noteErr(err)
			conn.Abort()
			conn = nil
			next = (cur + 1) % len(c.nodes)
			if p := int(c.prefer.Load()); p == cur {
				c.prefer.Store(-1) // the preferred node failed: any other will do
			}
		}
	}
}

var errHistoryFull = errors.New("history full")

func (c *histClient) noteErr(err error) {
	c.mu.Lock()
	c.errs++
	c.lastErr = err
	c.mu.Unlock()
}

// withTimeout runs f, giving up after opTimeout (f may still be running:
// the caller aborts the connection, which ends it).
func (c *histClient) withTimeout(f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	t := time.NewTimer(c.opTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("no reply within %v", c.opTimeout)
	}
}

func (c *histClient) write(conn *nbd.Client, node int, blk int64) error {
	val := c.values.Add(1)
	id, ok := c.rec.Invoke(c.id, history.Write, blk, val)
	if !ok {
		return errHistoryFull
	}
	err := c.withTimeout(func() error { return conn.WriteAt(histPattern(blk, val), blk*histBlockBytes, 0) })
	if err != nil {
		// An error reply or a broken connection: the write may have
		// reached the primary (and its replicas) or not.
		c.rec.Complete(id, history.Info, 0, c.nodes[node])
		return err
	}
	c.rec.Complete(id, history.OK, 0, c.nodes[node])
	c.mu.Lock()
	c.lastAck = c.nodes[node]
	c.mu.Unlock()
	if c.onAck != nil {
		c.onAck(c.nodes[node])
	}
	return nil
}

func (c *histClient) read(conn *nbd.Client, node int, blk int64) error {
	id, ok := c.rec.Invoke(c.id, history.Read, blk, 0)
	if !ok {
		return errHistoryFull
	}
	buf := make([]byte, histBlockBytes)
	err := c.withTimeout(func() error { return conn.ReadAt(buf, blk*histBlockBytes) })
	if err != nil {
		c.rec.Complete(id, history.Fail, 0, c.nodes[node]) // a read that returned nothing changed nothing
		return err
	}
	c.rec.Complete(id, history.OK, histDecode(blk, buf), c.nodes[node])
	return nil
}

func (c *histClient) stats() (conns, errs int, lastErr error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns, c.errs, c.lastErr
}

// histReadBack reads every block through conn into the history as final
// reads; it returns how many blocks were torn (also phantoms to the
// checker).
func histReadBack(rec *history.Recorder, conn *nbd.Client, blocks int64, node string) (torn int, err error) {
	buf := make([]byte, histBlockBytes)
	for blk := int64(0); blk < blocks; blk++ {
		if err := conn.ReadAt(buf, blk*histBlockBytes); err != nil {
			return torn, fmt.Errorf("final read of block %d through %s: %w", blk, node, err)
		}
		v := histDecode(blk, buf)
		if v == tornValue {
			torn++
		}
		rec.FinalRead(blk, v, node)
	}
	return torn, nil
}

// promotedRE picks a promotion from a node log (blockrep logs it with the
// node's and the volume's names and the new epoch).
var promotedRE = regexp.MustCompile(`msg=promoted node=(\S+) .*volume_name=(\S+) .*epoch=(\d+)`)

// histEpochClaims lists the epochs in which nodes became the primary of
// volume, from the text of node logs.
func histEpochClaims(volume string, logs ...string) []history.EpochClaim {
	var out []history.EpochClaim
	for _, l := range logs {
		for _, m := range promotedRE.FindAllStringSubmatch(l, -1) {
			if m[2] != volume {
				continue
			}
			e, err := strconv.ParseUint(m[3], 10, 64)
			if err == nil {
				out = append(out, history.EpochClaim{Node: m[1], Epoch: e})
			}
		}
	}
	return out
}

// newRand is a generator for one client (math/rand/v2's PCG).
func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }
