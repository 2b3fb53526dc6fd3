package history

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Violation kinds.
const (
	// LostWrite: a final read returned a value older than an
	// acknowledged write (or the initial value although a write was
	// acknowledged): the acknowledged write is gone.
	LostWrite = "lost-write"
	// Phantom: a read returned a value no write put in that block, or
	// one whose write certainly failed.
	Phantom = "phantom"
	// FutureRead: a read returned a value whose write was invoked only
	// after the read had completed.
	FutureRead = "future-read"
	// StaleRead: a read returned a value older than a write acknowledged
	// before the read began.
	StaleRead = "stale-read"
	// NotLinearizable: no single order explains the block's reads,
	// although no read is stale on its own (say two reads in sequence
	// saw the new value, then the old).
	NotLinearizable = "not-linearizable"
	// NoFinalRead: a block with an acknowledged write was not read at
	// the end, so its survival is unchecked.
	NoFinalRead = "no-final-read"
	// SplitBrain: two nodes acted as primary (acknowledged writes) in the
	// same epoch.
	SplitBrain = "split-brain"
	// BadHistory: the history breaks the recording rules (a value
	// written twice, a write of Initial): the checker cannot judge it.
	BadHistory = "bad-history"
)

// Violation is one thing the history shows went wrong.
type Violation struct {
	Kind   string
	Block  int64
	Detail string
}

func (v Violation) String() string {
	if v.Kind == SplitBrain {
		return v.Kind + ": " + v.Detail
	}
	return fmt.Sprintf("%s on block %d: %s", v.Kind, v.Block, v.Detail)
}

// EpochClaim says that Node held the primary role, able to acknowledge
// writes, in Epoch (from a node's log or its status).
type EpochClaim struct {
	Node  string
	Epoch uint64
}

// Result is the checker's verdict.
type Result struct {
	Violations []Violation
	// Counts over the history.
	Writes, AckedWrites, UnknownWrites, FailedWrites int
	Reads, FinalReads                                int
	Blocks                                           int
}

// OK says whether the history has no violation.
func (r Result) OK() bool { return len(r.Violations) == 0 }

// maxReported bounds how many violations a Result lists: one bad run can
// produce thousands of the same kind and the first ones tell the story.
const maxReported = 100

func (r Result) String() string {
	s := fmt.Sprintf("%d writes (%d acknowledged, %d unknown, %d failed), %d reads (%d final) over %d blocks: ",
		r.Writes, r.AckedWrites, r.UnknownWrites, r.FailedWrites, r.Reads, r.FinalReads, r.Blocks)
	if r.OK() {
		return s + "ok"
	}
	var b strings.Builder
	b.WriteString(s)
	fmt.Fprintf(&b, "%d violations", len(r.Violations))
	for _, v := range r.Violations {
		b.WriteString("\n  " + v.String())
	}
	return b.String()
}

func (r *Result) add(v Violation) {
	if len(r.Violations) < maxReported {
		r.Violations = append(r.Violations, v)
	}
}

// Check judges a history. requireFinal says every block with an
// acknowledged write must have a final read (a campaign that reads
// everything back); claims are the epochs nodes held the primary role in.
func Check(ops []Op, claims []EpochClaim, requireFinal bool) Result {
	var res Result
	byBlock := map[int64][]Op{}
	for _, o := range ops {
		if o.Status == Pending {
			o.Status = Info
		}
		switch o.Kind {
		case Write:
			res.Writes++
			switch o.Status {
			case OK:
				res.AckedWrites++
			case Info:
				res.UnknownWrites++
			case Fail:
				res.FailedWrites++
			}
		case Read:
			if o.Status != OK {
				continue // a read that returned nothing tells nothing
			}
			res.Reads++
			if o.Final {
				res.FinalReads++
			}
		default:
			res.add(Violation{BadHistory, o.Block, "unknown kind in " + o.String()})
			continue
		}
		byBlock[o.Block] = append(byBlock[o.Block], o)
	}
	blocks := make([]int64, 0, len(byBlock))
	for b := range byBlock {
		blocks = append(blocks, b)
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i] < blocks[j] })
	res.Blocks = len(blocks)
	for _, b := range blocks {
		checkBlock(&res, b, byBlock[b], requireFinal)
	}
	checkEpochs(&res, claims)
	return res
}

// checkEpochs: the storage epoch is the fencing token, so one epoch must
// belong to one primary.
func checkEpochs(res *Result, claims []EpochClaim) {
	owner := map[uint64]string{}
	reported := map[uint64]bool{}
	for _, c := range claims {
		if o, ok := owner[c.Epoch]; ok && o != c.Node && !reported[c.Epoch] {
			reported[c.Epoch] = true
			res.add(Violation{Kind: SplitBrain, Detail: fmt.Sprintf("epoch %d held by both %s and %s", c.Epoch, o, c.Node)})
			continue
		}
		owner[c.Epoch] = c.Node
	}
}

// end is when an operation's effect is certainly over: its completion
// for a known outcome, never for an unknown write (it may land later).
func end(o Op) int64 {
	if o.Status == Info {
		return math.MaxInt64
	}
	return o.EndNs
}

// initialWrite stands for the block's content before the history: it
// completed before anything began.
var initialWrite = Op{Kind: Write, Value: Initial, Status: OK, StartNs: math.MinInt64, EndNs: math.MinInt64}

// checkBlock checks one register. The named checks (phantom, future,
// stale, lost) give clear messages for the usual failures; the zone check
// after them is exact for a register whose writes are unique (Gibbons and
// Korach's result as stated by Golab, Li and Shah, PODC 2011: with each
// read's write known, a history is linearizable iff no read precedes its
// write, no two forward zones overlap and no backward zone lies inside a
// forward zone).
func checkBlock(res *Result, blk int64, ops []Op, requireFinal bool) {
	writes := map[uint64]Op{Initial: initialWrite}
	var acked []Op
	for _, o := range ops {
		if o.Kind != Write {
			continue
		}
		if o.Value == Initial {
			res.add(Violation{BadHistory, blk, "a write of the initial value: " + o.String()})
			return
		}
		if _, dup := writes[o.Value]; dup {
			res.add(Violation{BadHistory, blk, fmt.Sprintf("value %d written twice", o.Value)})
			return
		}
		writes[o.Value] = o
		if o.Status == OK {
			acked = append(acked, o)
		}
	}
	// clusters: each write and the reads that returned its value.
	type cluster struct {
		w     Op
		reads []Op
	}
	clusters := map[uint64]*cluster{}
	named := 0
	finals := 0
	for _, r := range ops {
		if r.Kind != Read {
			continue
		}
		if r.Final {
			finals++
		}
		w, ok := writes[r.Value]
		if !ok {
			res.add(Violation{Phantom, blk, fmt.Sprintf("read returned %d, never written to this block: %s", r.Value, r)})
			named++
			continue
		}
		if w.Status == Fail {
			res.add(Violation{Phantom, blk, fmt.Sprintf("read returned %d, whose write failed: %s; write %s", r.Value, r, w)})
			named++
			continue
		}
		if r.EndNs < w.StartNs {
			res.add(Violation{FutureRead, blk, fmt.Sprintf("%s; write %s", r, w)})
			named++
			continue
		}
		// A newer acknowledged write: one that began after w was over
		// and was acknowledged before r began.
		for _, n := range acked {
			if end(w) < n.StartNs && n.EndNs < r.StartNs {
				kind := StaleRead
				if r.Final {
					kind = LostWrite
				}
				res.add(Violation{kind, blk, fmt.Sprintf("%s returned the value of %s, but %s was acknowledged after it and before the read", r, w, n)})
				named++
				break
			}
		}
		c := clusters[r.Value]
		if c == nil {
			c = &cluster{w: w}
			clusters[r.Value] = c
		}
		c.reads = append(c.reads, r)
	}
	if requireFinal && finals == 0 && len(acked) > 0 {
		res.add(Violation{NoFinalRead, blk, fmt.Sprintf("%d acknowledged writes, no final read", len(acked))})
	}
	if named > 0 {
		return // the zone check would only say the same again
	}
	// Acknowledged writes nobody read are clusters too (a write that
	// must have happened, so it must fit somewhere); unread unknown
	// writes may never have happened and are left out.
	for _, w := range acked {
		if clusters[w.Value] == nil {
			clusters[w.Value] = &cluster{w: w}
		}
	}
	type zone struct {
		lo, hi  int64 // forward: [min end, max start]; backward: [max start, min end]
		forward bool
		value   uint64
	}
	var zones []zone
	for v, c := range clusters {
		minEnd, maxStart := end(c.w), c.w.StartNs
		for _, r := range c.reads {
			minEnd = min(minEnd, r.EndNs)
			maxStart = max(maxStart, r.StartNs)
		}
		if minEnd < maxStart {
			zones = append(zones, zone{minEnd, maxStart, true, v})
		} else {
			zones = append(zones, zone{maxStart, minEnd, false, v})
		}
	}
	sort.Slice(zones, func(i, j int) bool { return zones[i].lo < zones[j].lo })
	var fwd []zone
	for _, z := range zones {
		if z.forward {
			fwd = append(fwd, z)
		}
	}
	for i := 1; i < len(fwd); i++ {
		if fwd[i].lo < fwd[i-1].hi {
			res.add(Violation{NotLinearizable, blk, fmt.Sprintf("the reads of values %d and %d overlap in a way no order explains (forward zones [%d,%d] and [%d,%d])",
				fwd[i-1].value, fwd[i].value, fwd[i-1].lo, fwd[i-1].hi, fwd[i].lo, fwd[i].hi)})
			return
		}
	}
	for _, b := range zones {
		if b.forward {
			continue
		}
		// fwd is sorted by lo and disjoint: the only candidate holder
		// of b is the last forward zone starting before b.
		k := sort.Search(len(fwd), func(i int) bool { return fwd[i].lo >= b.lo }) - 1
		if k >= 0 && fwd[k].lo < b.lo && b.hi < fwd[k].hi {
			res.add(Violation{NotLinearizable, blk, fmt.Sprintf("value %d was written and acknowledged entirely while value %d had to stay visible (zone [%d,%d] inside [%d,%d])",
				b.value, fwd[k].value, b.lo, b.hi, fwd[k].lo, fwd[k].hi)})
			return
		}
	}
}
