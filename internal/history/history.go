// Package history records what clients of a replicated volume did during
// a fault campaign and checks it, in the manner of Jepsen: every block is a
// register, every write puts a value no other write uses, every operation
// is recorded with the time it was invoked and the time its outcome was
// known, and the checker decides whether some order of the operations,
// each taking effect at one instant between its invocation and its
// completion, explains every value read (linearizability per block).
//
// Outcomes follow Jepsen: OK (the write was acknowledged, the read
// returned), Fail (the operation certainly did not take effect) and Info
// (unknown: the connection broke or the reply never came; the write may
// or may not have landed, now or later). An operation still pending when
// the history is checked counts as Info.
//
// The checker is pure: no clock, no I/O. The Recorder is the only part
// with a clock, and it only stamps times.
package history

import (
	"fmt"
	"sync"
	"time"
)

// Kind is what an operation did.
type Kind uint8

const (
	Write Kind = iota + 1
	Read
)

func (k Kind) String() string {
	switch k {
	case Write:
		return "write"
	case Read:
		return "read"
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Status is an operation's outcome as its client knows it.
type Status uint8

const (
	Pending Status = iota // invoked, no outcome yet
	OK                    // acknowledged (write) or returned data (read)
	Fail                  // certainly had no effect
	Info                  // outcome unknown: may have taken effect
)

func (s Status) String() string {
	switch s {
	case Pending:
		return "pending"
	case OK:
		return "ok"
	case Fail:
		return "fail"
	case Info:
		return "info"
	}
	return fmt.Sprintf("status(%d)", s)
}

// Initial is the value of a block nobody wrote: writers must never use it.
const Initial uint64 = 0

// Op is one operation of the history.
type Op struct {
	Client int
	Kind   Kind
	Block  int64
	// Value is what a write wrote, or what a read returned (Initial for
	// a block never written). Writes use each value at most once.
	Value  uint64
	Status Status
	// Node is the node the client talked to, Epoch the primary's epoch
	// that acknowledged, when known (0: unknown). Informational.
	Node  string
	Epoch uint64
	// StartNs and EndNs are the invocation and completion times on one
	// monotonic clock (EndNs is meaningless unless Status is OK or Fail).
	StartNs, EndNs int64
	// Final marks the reads made after every client stopped and the
	// cluster healed: the "is every acknowledged write still there" reads.
	Final bool
}

func (o Op) String() string {
	s := fmt.Sprintf("c%d %s blk %d val %d %s [%d,", o.Client, o.Kind, o.Block, o.Value, o.Status, o.StartNs)
	if o.Status == OK || o.Status == Fail {
		s += fmt.Sprintf("%d]", o.EndNs)
	} else {
		s += "?]"
	}
	if o.Final {
		s += " final"
	}
	if o.Node != "" {
		s += " via " + o.Node
	}
	return s
}

// DefaultMaxOps bounds a Recorder made with MaxOps 0: about 100 bytes an
// operation, so at most ~400 MB of history.
const DefaultMaxOps = 4 << 20

// Recorder collects operations from concurrent clients.
type Recorder struct {
	mu     sync.Mutex
	origin time.Time
	maxOps int
	ops    []Op
}

// NewRecorder starts a history whose clock starts now. maxOps bounds the
// number of operations (0: DefaultMaxOps); Invoke refuses beyond it.
func NewRecorder(maxOps int) *Recorder {
	if maxOps <= 0 {
		maxOps = DefaultMaxOps
	}
	return &Recorder{origin: time.Now(), maxOps: maxOps}
}

// Origin is the wall-clock time of the recorder's zero, to match
// operations with node logs.
func (r *Recorder) Origin() time.Time { return r.origin }

// Now is the recorder's clock: nanoseconds since NewRecorder.
func (r *Recorder) Now() int64 { return int64(time.Since(r.origin)) }

// Invoke records the start of an operation and returns its id for
// Complete; ok is false (and nothing is recorded) when the history is
// full: the client must stop.
func (r *Recorder) Invoke(client int, kind Kind, block int64, value uint64) (id int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ops) >= r.maxOps {
		return -1, false
	}
	r.ops = append(r.ops, Op{Client: client, Kind: kind, Block: block, Value: value, Status: Pending, StartNs: r.Now()})
	return len(r.ops) - 1, true
}

// Complete records an operation's outcome. For a read, value is what it
// returned; for a write it is ignored. node is the node that answered
// ("" if unknown).
func (r *Recorder) Complete(id int, st Status, value uint64, node string) {
	now := r.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	o := &r.ops[id]
	o.Status, o.EndNs, o.Node = st, now, node
	if o.Kind == Read {
		o.Value = value
	}
}

// FinalRead records a read made after the campaign (Final), already
// completed.
func (r *Recorder) FinalRead(block int64, value uint64, node string) {
	now := r.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, Op{Client: -1, Kind: Read, Block: block, Value: value, Status: OK, StartNs: now, EndNs: now, Final: true, Node: node})
}

// Ops is a copy of the history so far.
func (r *Recorder) Ops() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Op(nil), r.ops...)
}

// Count says how many operations were recorded, and of the writes how
// many were acknowledged and how many ended unknown.
func (r *Recorder) Count() (ops, ackedWrites, infoWrites int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.ops {
		if o.Kind != Write {
			continue
		}
		switch o.Status {
		case OK:
			ackedWrites++
		case Info, Pending:
			infoWrites++
		}
	}
	return len(r.ops), ackedWrites, infoWrites
}
