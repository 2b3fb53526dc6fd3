package blockrep

import (
	"flag"
	"fmt"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// The model: data replicas and maybe a witness exchange messages through a
// network that delays, reorders and drops them; any replica may try to
// become primary at any time with a fresh epoch; nodes crash and lose
// everything but their VoterState and data. The checks:
//
//   - a write acknowledged under an older epoch is held by every newer
//     primary (invariant 2: no two primaries acknowledge diverging
//     histories);
//   - a candidate that passes Decide holds every write acknowledged before
//     (invariants 1 and 4);
//   - no two nodes pass Decide for the same epoch.

type msgKind int

const (
	mPrepare msgKind = iota
	mPromise
	mRefuse
	mStoreGen
	mStoreGenOK
	mWrite
	mWriteOK
)

type msg struct {
	kind     msgKind
	from, to NodeID
	epoch    Epoch
	gen      Gen
	members  []NodeID
	write    int
	promise  Promise
}

type primaryRole struct {
	epoch    Epoch
	gen      Gen
	members  []NodeID
	live     bool // its first generation is committed: it may write
	next     *pendingGen
	accepted map[int]map[NodeID]bool
	acked    map[int]bool
}

type pendingGen struct {
	gen     Gen
	members []NodeID
	stored  map[NodeID]bool
}

type candidateRole struct {
	epoch    Epoch
	promises []Promise
}

type simNode struct {
	state     VoterState
	data      map[int]bool // writes applied (data replicas)
	maxSeen   Epoch
	primary   *primaryRole
	candidate *candidateRole
	wipes     int
}

// failer is what the world reports violations to (*rapid.T, or a recorder).
type failer interface {
	Fatalf(format string, args ...any)
}

type world struct {
	t       failer
	voters  []NodeID
	nodes   map[NodeID]*simNode
	net     []msg
	now     int
	writeID int
	// ackedAt: write -> (epoch, time) of its acknowledgement.
	acked       map[int]Epoch
	quorumSince map[Epoch]int // when a quorum of voters had promised >= epoch
	// ackRule decides acknowledgements: WriteAcked, or a broken rule in
	// the test that shows the model can fail.
	ackRule func(voters, members []NodeID, accepted map[NodeID]bool) bool
	// primaryOf: the node that passed Decide for each epoch.
	primaryOf map[Epoch]NodeID
}

func newWorld(t failer, data int, witness bool) *world {
	w := &world{t: t, nodes: map[NodeID]*simNode{}, acked: map[int]Epoch{}, quorumSince: map[Epoch]int{}, ackRule: WriteAcked, primaryOf: map[Epoch]NodeID{}}
	var members []NodeID
	for i := 1; i <= data; i++ {
		members = append(members, NodeID(i))
	}
	for _, id := range members {
		w.voters = append(w.voters, id)
		w.nodes[id] = &simNode{state: VoterState{ID: id, HasData: true, Gen: Gen{0, 1}, Members: members}, data: map[int]bool{}}
	}
	if witness {
		w.voters = append(w.voters, 99)
		w.nodes[99] = &simNode{state: VoterState{ID: 99, Gen: Gen{0, 1}, Members: members}}
	}
	return w
}

func (w *world) send(m msg) { w.net = append(w.net, m) }

func (w *world) broadcast(from NodeID, m msg) {
	for _, v := range w.voters {
		m.from, m.to = from, v
		w.send(m)
	}
}

func (w *world) dataNodes() []NodeID {
	var out []NodeID
	for _, v := range w.voters {
		if w.nodes[v].state.HasData {
			out = append(out, v)
		}
	}
	return out
}

// notePromises records the first moment a quorum promised each epoch.
func (w *world) notePromises() {
	for e := Epoch(1); e <= w.maxEpoch(); e++ {
		if _, ok := w.quorumSince[e]; ok {
			continue
		}
		n := 0
		for _, v := range w.voters {
			if w.nodes[v].state.Promised >= e {
				n++
			}
		}
		if n >= Quorum(len(w.voters)) {
			w.quorumSince[e] = w.now
		}
	}
}

func (w *world) maxEpoch() Epoch {
	var m Epoch
	for _, n := range w.nodes {
		m = max(m, n.state.Promised, n.maxSeen)
	}
	return m
}

func (w *world) deliver(i int) {
	m := w.net[i]
	w.net = slices.Delete(w.net, i, i+1)
	n := w.nodes[m.to]
	n.maxSeen = max(n.maxSeen, m.epoch)
	switch m.kind {
	case mPrepare:
		if p, r := n.state.Prepare(m.epoch); r == nil {
			w.send(msg{kind: mPromise, from: m.to, to: m.from, epoch: m.epoch, promise: p})
		} else {
			w.send(msg{kind: mRefuse, from: m.to, to: m.from, epoch: r.Promised})
		}
		w.notePromises()
	case mPromise:
		if c := n.candidate; c != nil && c.epoch == m.epoch {
			c.promises = append(c.promises, m.promise)
			w.decide(m.to) // a candidate acts as soon as it can
		}
	case mRefuse:
		// maxSeen already learned the higher epoch.
	case mStoreGen:
		if n.state.StoreGen(m.epoch, m.gen, m.members) == nil {
			w.send(msg{kind: mStoreGenOK, from: m.to, to: m.from, epoch: m.epoch, gen: m.gen})
		}
	case mStoreGenOK:
		p := n.primary
		if p == nil || p.epoch != m.epoch || p.next == nil || p.next.gen != m.gen {
			return
		}
		p.next.stored[m.from] = true
		if GenCommitted(w.voters, p.next.members, p.next.stored) {
			p.gen, p.members, p.next, p.live = p.next.gen, p.next.members, nil, true
		}
	case mWrite:
		if n.state.AcceptWrite(m.epoch, m.gen) == nil {
			if n.state.HasData {
				n.data[m.write] = true
			}
			w.send(msg{kind: mWriteOK, from: m.to, to: m.from, epoch: m.epoch, gen: m.gen, write: m.write})
		}
	case mWriteOK:
		p := n.primary
		if p == nil || p.epoch != m.epoch || p.gen != m.gen || p.acked[m.write] {
			return
		}
		acc := p.accepted[m.write]
		if acc == nil {
			return
		}
		acc[m.from] = true
		if w.ackRule(w.voters, p.members, acc) {
			p.acked[m.write] = true
			w.acked[m.write] = p.epoch
			// Invariant 2: the old primary may finish a write only
			// if a newer primary already holds it (its acceptances
			// came before the new epoch's promises): otherwise two
			// primaries would acknowledge diverging histories.
			for id, o := range w.nodes {
				if o.primary != nil && o.primary.epoch > p.epoch && !o.data[m.write] {
					w.t.Fatalf("write %d acknowledged under epoch %d, missing on node %d, primary of epoch %d", m.write, p.epoch, id, o.primary.epoch)
				}
			}
		}
	}
}

func (w *world) campaign(id NodeID) {
	n := w.nodes[id]
	e := max(n.state.Promised, n.maxSeen) + 1
	n.maxSeen = e
	n.primary = nil
	n.candidate = &candidateRole{epoch: e}
	w.broadcast(id, msg{kind: mPrepare, epoch: e})
}

func (w *world) decide(id NodeID) {
	n := w.nodes[id]
	c := n.candidate
	if c == nil {
		return
	}
	d, err := Decide(id, w.voters, c.epoch, c.promises)
	if err != nil {
		return
	}
	// Invariants 1 and 4: the candidate holds every acknowledged write.
	for wr := range w.acked {
		if !n.data[wr] {
			w.t.Fatalf("node %d passed Decide for epoch %d without acknowledged write %d (newest %v %v)", id, c.epoch, wr, d.Newest, d.NewestMembers)
		}
	}
	// One epoch, one primary: a write history is ordered within an
	// epoch only because a single node issues it.
	if other, ok := w.primaryOf[c.epoch]; ok && other != id {
		w.t.Fatalf("nodes %d and %d both passed Decide for epoch %d", other, id, c.epoch)
	}
	w.primaryOf[c.epoch] = id
	n.candidate = nil
	g := Gen{c.epoch, 1}
	n.primary = &primaryRole{epoch: c.epoch, next: &pendingGen{gen: g, members: d.Members, stored: map[NodeID]bool{}},
		accepted: map[int]map[NodeID]bool{}, acked: map[int]bool{}}
	w.broadcast(id, msg{kind: mStoreGen, epoch: c.epoch, gen: g, members: d.Members})
}

func (w *world) write(id NodeID) {
	p := w.nodes[id].primary
	if p == nil || !p.live {
		return
	}
	w.writeID++
	p.accepted[w.writeID] = map[NodeID]bool{}
	w.broadcast(id, msg{kind: mWrite, epoch: p.epoch, gen: p.gen, write: w.writeID})
}

func (w *world) shrink(id NodeID, drop NodeID) {
	p := w.nodes[id].primary
	if p == nil || !p.live || p.next != nil || drop == id || !slices.Contains(p.members, drop) {
		return
	}
	members := slices.DeleteFunc(slices.Clone(p.members), func(m NodeID) bool { return m == drop })
	g := Gen{p.epoch, p.gen.Seq + 1}
	p.next = &pendingGen{gen: g, members: members, stored: map[NodeID]bool{}}
	w.broadcast(id, msg{kind: mStoreGen, epoch: p.epoch, gen: g, members: members})
}

func (w *world) crash(id NodeID) {
	n := w.nodes[id]
	n.primary, n.candidate = nil, nil
}

// wipe: the node loses its disk and is created again, blank (rule 4),
// or, with forgetful, as if it were new (the broken alternative the
// scenario test shows failing). Only while a majority of the data replicas
// remember, as invariant 1 asks of the world ("while a write quorum
// survives").
func (w *world) wipe(id NodeID, forgetful bool) {
	remembering := 0
	for _, v := range w.voters {
		if v != id && w.nodes[v].wipes == 0 {
			remembering++
		}
	}
	if remembering < Quorum(len(w.voters)) {
		return
	}
	n := w.nodes[id]
	n.primary, n.candidate = nil, nil
	n.data = map[int]bool{}
	n.wipes++
	n.state = VoterState{ID: id, HasData: true, Blank: !forgetful}
	if forgetful {
		n.state.Gen, n.state.Members = Gen{0, 1}, w.dataNodes()
	}
}

func runEpochModel(t *rapid.T, data int, witness, wipes bool) *world {
	w := newWorld(t, data, witness)
	ids := w.dataNodes()
	pick := rapid.SampledFrom(ids)
	for i := 0; i < 300; i++ {
		w.now++
		// rapid favours small numbers, so the common action, delivering
		// a message, gets them.
		switch a := rapid.IntRange(0, 79).Draw(t, "action"); {
		case a <= 59 || a >= 76:
			if len(w.net) > 0 {
				w.deliver(rapid.IntRange(0, len(w.net)-1).Draw(t, "msg"))
			}
		case a == 60:
			w.campaign(pick.Draw(t, "campaigner"))
		case a <= 72:
			w.write(pick.Draw(t, "writer"))
		case a == 73:
			w.shrink(pick.Draw(t, "shrinker"), pick.Draw(t, "dropped"))
		case a == 74:
			w.crash(pick.Draw(t, "crashed"))
		case a == 75 && wipes:
			w.wipe(pick.Draw(t, "wiped"), false)
		default:
			if len(w.net) > 0 {
				w.net = slices.Delete(w.net, 0, 1) // lose the oldest message
			}
		}
	}
	// Drain, then let everyone try once more to take over: whoever
	// passes Decide must hold every acknowledged write.
	for len(w.net) > 0 {
		w.now++
		w.deliver(0)
	}
	for _, id := range ids {
		w.campaign(id)
		for len(w.net) > 0 {
			w.now++
			w.deliver(0)
		}
		w.decide(id)
	}
	return w
}

// modelCoverage counts what the random runs exercised, so a model that
// never reaches the interesting states fails instead of passing vacuously.
type modelCoverage struct{ acked, takeovers, wipes int }

func checkEpochModel(t *testing.T, data int, witness, wipes bool) {
	// The model is cheap: run ten times rapid's default number of cases.
	if f := flag.Lookup("rapid.checks"); f != nil && f.Value.String() == "100" {
		f.Value.Set("1000")
		defer f.Value.Set("100")
	}
	var cov modelCoverage
	rapid.Check(t, func(rt *rapid.T) {
		w := runEpochModel(rt, data, witness, wipes)
		cov.acked += len(w.acked)
		cov.takeovers += len(w.quorumSince)
		for _, n := range w.nodes {
			cov.wipes += n.wipes
		}
	})
	if wipes && cov.wipes < 100 {
		t.Fatalf("the model wiped only %d replicas", cov.wipes)
	}
	if cov.acked < 1000 || cov.takeovers < 1000 {
		t.Fatalf("the model exercised too little: %d acknowledged writes, %d epochs with a promise quorum", cov.acked, cov.takeovers)
	}
	t.Logf("coverage: %d acknowledged writes, %d epochs with a promise quorum, %d replicas wiped", cov.acked, cov.takeovers, cov.wipes)
}

func TestEpochModelThreeReplicas(t *testing.T) { checkEpochModel(t, 3, false, false) }

func TestEpochModelTwoReplicasAndWitness(t *testing.T) { checkEpochModel(t, 2, true, false) }

// The same with replicas that lose their disk and come back blank.
func TestEpochModelThreeReplicasWiped(t *testing.T) { checkEpochModel(t, 3, false, true) }

func TestEpochModelTwoReplicasAndWitnessWiped(t *testing.T) { checkEpochModel(t, 2, true, true) }

// TestEpochModelCatchesForgetfulReplica: replicas 1 and 2 make the
// first generation of epoch 1 and acknowledge a write while 3 is cut off; then loses its disk; 1 goes away
// and 3 campaigns. A replica created again as if new (generation 0.1, all
// members) completes 3's promise quorum and 3, which misses the write, is
// elected: the model must catch that. Created blank, 2's promise does not
// count and 3 cannot pass Decide.
func TestEpochModelCatchesForgetfulReplica(t *testing.T) {
	for _, forgetful := range []bool{false, true} {
		v := &violation{}
		w := newWorld(v, 3, false)
		cutOff3 := func() { w.net = slices.DeleteFunc(w.net, func(m msg) bool { return m.to == 3 }) }
		w.campaign(1)
		cutOff3()
		w.deliverAll()
		w.write(1)
		cutOff3()
		w.deliverAll()
		if len(w.acked) != 1 {
			t.Fatalf("setup: acknowledged %v", w.acked)
		}
		w.wipe(2, forgetful)
		w.crash(1)
		w.campaign(3)
		w.net = slices.DeleteFunc(w.net, func(m msg) bool { return m.to == 1 })
		w.deliverAll()
		if forgetful && v.msg == "" {
			t.Fatal("the model did not catch a stale replica elected with a forgetful voter's promise")
		}
		if !forgetful && v.msg != "" {
			t.Fatalf("blank rule: %s", v.msg)
		}
		if !forgetful {
			c := w.nodes[3].candidate
			if _, err := Decide(3, w.voters, c.epoch, c.promises); err == nil {
				t.Fatal("stale replica 3 passed Decide with a blank replica's promise")
			}
		}
	}
}

// deliverAll delivers every message in order.
func (w *world) deliverAll() {
	for len(w.net) > 0 {
		w.now++
		w.deliver(0)
	}
}

// violation records the first violation instead of failing.
type violation struct{ msg string }

func (v *violation) Fatalf(format string, args ...any) {
	if v.msg == "" {
		v.msg = fmt.Sprintf(format, args...)
	}
}

// staleWitnessScenario: replica 1 is primary, drops replica 2 (so its
// generation is {1}, stored with the witness), then replica 2 and the
// witness promise a new epoch, and the old primary writes again.
func staleWitnessScenario(w *world) {
	w.campaign(1)
	w.deliverAll()
	w.shrink(1, 2)
	w.deliverAll()
	w.campaign(2)                                                           // 2 and the witness promise; 2 is not up to date
	w.net = slices.DeleteFunc(w.net, func(m msg) bool { return m.to == 1 }) // 1 is cut off
	w.deliverAll()
	w.write(1)
	w.deliverAll()
}

// TestEpochRuleScenario runs the scenario with the real rule: the old
// primary's write is refused by the witness, and 2 may not take over.
func TestEpochRuleScenario(t *testing.T) {
	v := &violation{}
	w := newWorld(v, 2, true)
	staleWitnessScenario(w)
	if v.msg != "" {
		t.Fatal(v.msg)
	}
	if len(w.acked) != 0 {
		t.Fatalf("acknowledged %v after the witness promised a newer epoch", w.acked)
	}
	if _, err := Decide(2, w.voters, w.nodes[2].candidate.epoch, w.nodes[2].candidate.promises); err == nil {
		t.Fatal("out-of-date replica 2 passed Decide")
	}
}

// TestEpochModelCatchesBrokenRule: acknowledging on a voter quorum without
// every member of the generation loses a write when the member that missed
// it takes over; the model's check must catch that.
func TestEpochModelCatchesBrokenRule(t *testing.T) {
	for _, broken := range []bool{false, true} {
		v := &violation{}
		w := newWorld(v, 2, true)
		if broken {
			w.ackRule = func(voters, _ []NodeID, acc map[NodeID]bool) bool {
				return GenCommitted(voters, nil, acc)
			}
		}
		w.campaign(1)
		w.deliverAll()
		w.write(1)
		w.net = slices.DeleteFunc(w.net, func(m msg) bool { return m.to == 2 }) // 2 misses the write
		w.deliverAll()
		w.crash(1)
		w.campaign(2)
		w.net = slices.DeleteFunc(w.net, func(m msg) bool { return m.to == 1 }) // 1 is gone
		w.deliverAll()
		if broken && v.msg == "" {
			t.Fatal("the model did not catch a write lost by a broken acknowledgement rule")
		}
		if !broken && (v.msg != "" || len(w.acked) != 0) {
			t.Fatalf("real rule: %q, acknowledged %v", v.msg, w.acked)
		}
	}
}
