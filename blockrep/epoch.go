package blockrep

import (
	"fmt"
	"slices"
)

// The epoch rule: how a volume's primary is made, and why two primaries
// can never both get a write acknowledged.
//
// The voters of a volume are its data replicas plus, for a 2-replica
// volume, the witness (which stores epochs and generations, never data).
// A quorum is a majority of the voters.
//
//  1. Promise. A would-be primary picks an epoch above every epoch it has
//     seen and asks every voter to promise it. A voter promises only an
//     epoch above the one it promised before, remembers it durably, and
//     answers with its generation and the members of that generation.
//     From then on it refuses anything carrying an older epoch.
//
//  2. Generation. A generation (epoch, seq) names a set of data replicas
//     that are all up to date. The candidate, once a quorum promised,
//     takes the newest generation among the answers; only a member of that
//     generation's set holds every acknowledged write, so only such a
//     member may become primary (another must be resynced first). It then
//     starts generation (E, 1) with the members of the newest set that
//     promised it. A primary changes the set (drops a replica it cannot
//     reach, adds one that finished resync) by a new generation (E, seq+1),
//     which counts only once every member of the new set and a quorum of
//     voters have stored it.
//
//     A data replica that crashed may lack writes it acknowledged without
//     a FLUSH, in the extents its activity log named (recovered.go); it
//     says so in every promise until a primary resent them. A primary
//     keeps such a replica out of the set until then; a candidate that
//     is itself recovering first fetches those extents from a member
//     that is not recovering them (when every member it reached is, its
//     copy is as good as any, and it says so loudly).
//
//  3. Write. A data replica accepts a write only under the epoch it
//     promised and in the generation it is in; the witness checks the
//     same and stores nothing. The primary acknowledges a write only when
//     every member of the current generation accepted it and, with them, a
//     quorum of the voters (so with one of two replicas away, each write is
//     confirmed by the witness).
//
//  4. Memory. The rule rests on voters never forgetting what they
//     promised and stored. A replica whose directory was lost (a replaced
//     disk, a deleted directory) and created again is Blank: it promises
//     (and so refuses older epochs from then on), but its promise carries
//     no knowledge, so Decide does not count it, and it cannot be a
//     candidate. It stops being Blank when it stores a generation (it then
//     knows the newest one again); it holds data again only when it is
//     named a member after a full resync. Without this, a forgetful
//     voter could complete a promise quorum that misses the newest
//     generation and elect a stale replica.
//
//  5. Read lease. A primary serves reads from its own copy for a while
//     (the read lease) after each quorum answer, without asking anyone;
//     so a new primary waits out that lease before it serves, lest an old
//     one still serving reads miss its writes. The wait is skipped only
//     when the old one said it stopped: a primary that steps down (the
//     role moved by hand or with a migrating guest) first stops serving,
//     then tells the voters "epoch E released" (MsgRelease). A voter
//     marks its promise released only when the release comes from the
//     node it promised that very epoch to, and forgets the mark when it
//     restarts (it is kept in memory). A new primary skips the wait when
//     every voter whose promise it counts said its previous promise was
//     released (a voter that never promised anything counts as released:
//     no primary holds a promise of it). Why that suffices: the last
//     epoch that gathered a promise quorum (the only primary that may
//     still serve; older ones were waited out or released in turn)
//     shares a voter with the new quorum; that voter's previous promise
//     is that epoch (a higher one would have to come from a candidate
//     that failed its quorum, and such a candidate never serves, so never
//     releases), and it was released. A node fenced by the cluster (its
//     power verified off, or inquorate past its self-fence lease) serves
//     nothing either: the node acting for the cluster releases, on its
//     behalf, every promise a voter holds for it (MsgRelease with
//     FlagFenced), so a failover need not wait out the read lease.
//
// Why it holds: two quorums of one voter set intersect. Once a quorum
// promised epoch E, any quorum a primary of an older epoch could gather
// holds a voter that refuses it: it can get no write acknowledged and make
// no new generation (invariant 2). A generation is stored by a quorum, so
// a promise quorum always reports the newest generation that ever held
// acknowledged writes; its members accepted every one of them, and only
// such a member may become primary (invariants 1 and 4).

// NodeID names a voter.
type NodeID uint32

// Epoch only grows.
type Epoch uint64

// Gen identifies a replica's data history: the generation it last stored.
type Gen struct {
	Epoch Epoch  `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

// Less orders generations.
func (g Gen) Less(o Gen) bool {
	return g.Epoch < o.Epoch || (g.Epoch == o.Epoch && g.Seq < o.Seq)
}

func (g Gen) String() string { return fmt.Sprintf("%d.%d", g.Epoch, g.Seq) }

// VoterState is what one voter keeps durably for one volume. The caller
// persists it after every method that returns changed=true, before sending
// the answer.
type VoterState struct {
	ID       NodeID   `json:"id"`
	HasData  bool     `json:"has_data"` // false for the witness
	Promised Epoch    `json:"promised"`
	Gen      Gen      `json:"gen"`
	Members  []NodeID `json:"members"` // data replicas up to date at Gen
	// PromisedTo is the candidate the current epoch was promised to: the
	// same candidate asking again for the same epoch (it reconnected)
	// gets the same promise back; anyone else is refused.
	PromisedTo NodeID `json:"promised_to,omitempty"`
	// Blank: this voter was created again after losing its state; it
	// knows no generation (rule 4 above).
	Blank bool `json:"blank,omitempty"`
	// Released is the epoch whose primary said it stepped down (rule 5);
	// in memory only: a restarted voter does not know, and a new primary
	// then waits out the read lease.
	Released Epoch `json:"-"`
}

// Promise is a voter's answer to a prepare.
type Promise struct {
	From    NodeID
	Epoch   Epoch
	Gen     Gen
	Members []NodeID
	// Blank: the voter lost its state; the promise fences older epochs
	// but says nothing about the generations.
	Blank bool
	// Released: the voter's previous promise was released by the primary
	// it went to (rule 5).
	Released bool
}

// Refusal says why a voter refused.
type Refusal struct {
	From     NodeID
	Promised Epoch
	Reason   string
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("voter %d refused: %s (it promised epoch %d)", r.From, r.Reason, r.Promised)
}

// Prepare answers a would-be primary.
func (v *VoterState) Prepare(e Epoch) (Promise, *Refusal) {
	if e <= v.Promised {
		return Promise{}, &Refusal{From: v.ID, Promised: v.Promised, Reason: fmt.Sprintf("epoch %d is not above", e)}
	}
	v.Promised = e
	return v.promise(e), nil
}

func (v *VoterState) promise(e Epoch) Promise {
	return Promise{From: v.ID, Epoch: e, Gen: v.Gen, Members: slices.Clone(v.Members), Blank: v.Blank}
}

// PrepareFrom is Prepare by a known candidate: it records who the epoch
// was promised to, and repeats the promise to that candidate alone. Two
// candidates can pick the same epoch; only the first gets it.
func (v *VoterState) PrepareFrom(e Epoch, from NodeID) (Promise, *Refusal) {
	if e == v.Promised && from != 0 && from == v.PromisedTo {
		// A repeat: whether the promise before was released is no
		// longer known here, so it does not say so (the safe side).
		return v.promise(e), nil
	}
	released := v.ReleasedNow()
	p, ref := v.Prepare(e)
	if ref == nil {
		v.PromisedTo = from
		p.Released = released
	}
	return p, ref
}

// ReleasedNow says whether the primary this voter's current promise went
// to has released it (rule 5). A voter that never promised anything has
// no primary to wait for: it cannot be the voter a serving primary's
// quorum shares with the candidate's. A blank one does not know.
func (v *VoterState) ReleasedNow() bool {
	return !v.Blank && (v.Promised == 0 || v.Released == v.Promised)
}

// ReleaseFenced records that node holder was fenced (powered off, or
// self-fenced past its lease): the promise this voter holds for it, if
// any, is released. It says whether there was one.
func (v *VoterState) ReleaseFenced(holder NodeID) bool {
	if holder == 0 || v.Promised == 0 || v.PromisedTo != holder {
		return false
	}
	v.Released = v.Promised
	return true
}

// Release records that the primary of epoch e stepped down; only the
// node the epoch was promised to can release it. It says whether the
// release was taken.
func (v *VoterState) Release(e Epoch, from NodeID) bool {
	if e == 0 || e != v.Promised || from == 0 || from != v.PromisedTo {
		return false
	}
	v.Released = e
	return true
}

// StoreGen stores a new generation from the primary of epoch e.
func (v *VoterState) StoreGen(e Epoch, g Gen, members []NodeID) *Refusal {
	if e != v.Promised {
		return &Refusal{From: v.ID, Promised: v.Promised, Reason: fmt.Sprintf("generation from epoch %d", e)}
	}
	if g.Epoch != e || !v.Gen.Less(g) {
		return &Refusal{From: v.ID, Promised: v.Promised, Reason: fmt.Sprintf("generation %v is not newer than %v", g, v.Gen)}
	}
	if v.Blank && slices.Contains(members, v.ID) {
		// A primary that has not yet seen this replica's blank promise
		// still counts it a member: a blank replica holds none of the
		// data, so it must not become one without a full resync.
		return &Refusal{From: v.ID, Promised: v.Promised, Reason: "this replica lost its data and was created again: it must be resynced before it can be a member"}
	}
	v.Gen = g
	v.Members = slices.Clone(members)
	v.Blank = false
	return nil
}

// AcceptWrite says whether a voter accepts a write of the primary of epoch
// e in generation g: a data replica then applies it, the witness only
// confirms it.
func (v *VoterState) AcceptWrite(e Epoch, g Gen) *Refusal {
	switch {
	case e != v.Promised:
		return &Refusal{From: v.ID, Promised: v.Promised, Reason: fmt.Sprintf("write from epoch %d", e)}
	case g != v.Gen:
		return &Refusal{From: v.ID, Promised: v.Promised, Reason: fmt.Sprintf("write in generation %v, this voter is at %v", g, v.Gen)}
	case v.HasData && !slices.Contains(v.Members, v.ID):
		return &Refusal{From: v.ID, Promised: v.Promised, Reason: "this replica is out of date (not in the generation's set)"}
	}
	return nil
}

// Quorum is the number of voters that make a majority.
func Quorum(voters int) int { return voters/2 + 1 }

// Decision is what a candidate may do with the promises it gathered.
type Decision struct {
	// Newest is the newest generation among the promises, and
	// NewestMembers its set: they hold every acknowledged write.
	Newest        Gen
	NewestMembers []NodeID
	// Members is the set of the candidate's first generation (epoch, 1):
	// the members of the newest set that promised.
	Members []NodeID
	// LeaseReleased: every counted promise says its previous promise was
	// released, so the candidate need not wait out a read lease (rule 5).
	LeaseReleased bool
}

// NotUpToDate is in the error of a candidate that lacks the newest
// generation (the node's HA agent looks for it in a primary's promotion
// error to move the role to a replica that has it).
const NotUpToDate = "is not up to date"

// Decide checks a candidate's promises: a quorum of the voters that
// remember (blank promises do not count, rule 4), the candidate's own among
// them, and the candidate itself a member of the newest generation. The
// error says what is missing.
func Decide(self NodeID, voters []NodeID, e Epoch, promises []Promise) (Decision, error) {
	got := map[NodeID]Promise{}
	blank := 0
	for _, p := range promises {
		if p.Epoch != e || !slices.Contains(voters, p.From) {
			continue
		}
		if p.Blank {
			if p.From == self {
				return Decision{}, fmt.Errorf("node %d lost its replica's data (created again): it must be resynced before it can be primary", self)
			}
			blank++
			continue
		}
		got[p.From] = p
	}
	if len(got) < Quorum(len(voters)) {
		why := ""
		if blank > 0 {
			why = fmt.Sprintf(" (%d more promised but lost their state, so they do not count)", blank)
		}
		return Decision{}, fmt.Errorf("%d of %d voters promised epoch %d; %d needed%s", len(got), len(voters), e, Quorum(len(voters)), why)
	}
	if _, ok := got[self]; !ok {
		return Decision{}, fmt.Errorf("node %d has not promised epoch %d itself", self, e)
	}
	var d Decision
	first := true
	for _, p := range got {
		// Equal generations hold equal sets, except the first (0.0):
		// the replicas start with the volume's replicas, the witness
		// with none; take the set that names someone.
		if first || d.Newest.Less(p.Gen) || (p.Gen == d.Newest && len(d.NewestMembers) == 0) {
			d.Newest, d.NewestMembers = p.Gen, p.Members
			first = false
		}
	}
	if !slices.Contains(d.NewestMembers, self) {
		return Decision{}, fmt.Errorf("node %d %s: the newest generation %v is held by %v", self, NotUpToDate, d.Newest, d.NewestMembers)
	}
	for _, m := range d.NewestMembers {
		if _, ok := got[m]; ok {
			d.Members = append(d.Members, m)
		}
	}
	slices.Sort(d.Members)
	d.LeaseReleased = true
	for _, p := range got {
		d.LeaseReleased = d.LeaseReleased && p.Released
	}
	return d, nil
}

// GenCommitted says whether a generation change was stored where it must
// be: by every member of the new set and by a quorum of voters.
func GenCommitted(voters, members []NodeID, stored map[NodeID]bool) bool {
	n := 0
	for _, v := range voters {
		if stored[v] {
			n++
		}
	}
	if n < Quorum(len(voters)) {
		return false
	}
	for _, m := range members {
		if !stored[m] {
			return false
		}
	}
	return true
}

// WriteAcked says whether a write may be acknowledged: every member of the
// current generation accepted it, and a quorum of the voters did.
func WriteAcked(voters, members []NodeID, accepted map[NodeID]bool) bool {
	return len(members) > 0 && GenCommitted(voters, members, accepted)
}
