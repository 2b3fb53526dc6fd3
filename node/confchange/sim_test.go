package confchange

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// sim is a cluster of Nodes over a network it controls: messages wait in
// a queue until a command delivers, drops, duplicates, holds or reorders
// them; partitions and crashes lose them. It plays the daemon's part as
// the package doc says: persist first, then send, then apply and report.
// After every output it checks the safety invariants and records a
// violation in s.violations.

// simOptions are the timers of simulated nodes: small, so scenarios stay
// short.
func simOptions(id NodeID) Options {
	return Options{ID: id, Members: simMembers, RetryTicks: 3, MaxBackoffTicks: 12, ProposalTimeoutTicks: 30}
}

type crashPoint int

const (
	noCrash            crashPoint = iota
	crashBeforePersist            // the output is lost whole
	crashBeforeSend               // persisted, nothing sent or applied
)

type simNode struct {
	id      NodeID
	n       *Node // nil while down
	disk    HardState
	applied []Config // every configuration this node installed, across restarts
	crashAt crashPoint
	// proposals in flight: proposal id -> what was proposed
	props map[uint64]Config
}

type envelope struct {
	from, to NodeID
	raw      []byte
	held     bool
}

type sim struct {
	nodes map[NodeID]*simNode
	net   []envelope
	group map[NodeID]int // partition groups; nil when healed
	// cuts lose every message that matches one of them (a broken link,
	// possibly for one message type), at send and at delivery.
	cuts []netArgs
	// committed is every version ever applied anywhere, by digest: the
	// safety checker's "one sequence".
	committed map[uint64]Config
	// results counts proposal outcomes (property test).
	results map[Outcome]int
	// lastResult is the most recent result per node.
	lastResult map[NodeID]Result
	out        io.Writer
	violations []string
	maxNet     int
}

func newSim(out io.Writer) *sim {
	return &sim{nodes: map[NodeID]*simNode{}, committed: map[uint64]Config{}, results: map[Outcome]int{},
		lastResult: map[NodeID]Result{}, out: out, maxNet: 5000}
}

func (s *sim) printf(format string, args ...any) { fmt.Fprintf(s.out, format, args...) }

func (s *sim) violate(format string, args ...any) {
	v := fmt.Sprintf(format, args...)
	s.violations = append(s.violations, v)
	s.printf("VIOLATION: %s\n", v)
}

func (s *sim) ids() []NodeID {
	ids := make([]NodeID, 0, len(s.nodes))
	for id := range s.nodes {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// addNode starts a node from a state.
func (s *sim) addNode(id NodeID, hs HardState) error {
	n, err := New(simOptions(id), hs)
	if err != nil {
		return err
	}
	sn := &simNode{id: id, n: n, disk: hs, props: map[uint64]Config{}}
	s.nodes[id] = sn
	if !hs.Committed.IsZero() {
		s.record(sn, hs.Committed)
	}
	return nil
}

// record notes that a node installed a configuration, and checks the
// invariants: versions strictly increase on each node; one configuration
// per version anywhere; each version built on the one before.
func (s *sim) record(sn *simNode, c Config) {
	if k := len(sn.applied); k > 0 && sn.applied[k-1].Version >= c.Version {
		s.violate("node %d applied v%d after v%d", sn.id, c.Version, sn.applied[k-1].Version)
	}
	sn.applied = append(sn.applied, c)
	if prev, ok := s.committed[c.Version]; ok {
		if prev.Digest != c.Digest {
			s.violate("version %d committed twice: %s and %s (node %d)", c.Version, label(prev), label(c), sn.id)
		}
		return
	}
	s.committed[c.Version] = c
	d, err := parseSimData(c.Data)
	if err != nil {
		s.violate("committed garbage: %v", err)
		return
	}
	if p, ok := s.committed[c.Version-1]; ok && c.Version > 1 && d.parent != fmt.Sprintf("%x", p.Digest[:]) {
		s.violate("v%d was not built on the committed v%d", c.Version, c.Version-1)
	}
	if nx, ok := s.committed[c.Version+1]; ok {
		if dn, _ := parseSimData(nx.Data); dn.parent != fmt.Sprintf("%x", c.Digest[:]) {
			s.violate("v%d was not built on the committed v%d", c.Version+1, c.Version)
		}
	}
}

func (s *sim) connected(a, b NodeID) bool {
	return s.group == nil || s.group[a] == s.group[b]
}

// passes says whether an envelope gets through the partition and cuts.
func (s *sim) passes(e envelope) bool {
	if !s.connected(e.from, e.to) {
		return false
	}
	for _, c := range s.cuts {
		if match(e, c.filter, c.typ) {
			return false
		}
	}
	return true
}

// handle is the daemon's output loop: persist, send, apply, report.
func (s *sim) handle(sn *simNode, out Output) {
	switch sn.crashAt {
	case crashBeforePersist:
		s.printf("n%d: crashed before persisting\n", sn.id)
		sn.n, sn.crashAt = nil, noCrash
		return
	case crashBeforeSend:
		if out.Persist != nil {
			sn.disk = *out.Persist
		}
		s.printf("n%d: crashed after persisting, before sending\n", sn.id)
		sn.n, sn.crashAt = nil, noCrash
		return
	}
	if out.Persist != nil {
		sn.disk = *out.Persist
	}
	for _, m := range out.Messages {
		if m.From != sn.id {
			s.violate("node %d sent a message from %d", sn.id, m.From)
		}
		s.checkPersisted(sn, m)
		e := envelope{from: m.From, to: m.To, raw: EncodeMessage(m)}
		if s.passes(e) && len(s.net) < s.maxNet {
			s.net = append(s.net, e)
		}
	}
	for _, c := range out.Applied {
		if out.Persist == nil || out.Persist.Committed.Version < c.Version {
			s.violate("node %d applied v%d without persisting it", sn.id, c.Version)
		}
		s.record(sn, c)
		s.printf("n%d: applied %s %s\n", sn.id, label(c), votesString(mustMembers(c)))
	}
	for _, r := range out.Results {
		s.checkResult(sn, r)
		s.results[r.Outcome]++
		s.lastResult[sn.id] = r
		s.printf("n%d: proposal %d %s v%d\n", sn.id, r.ID, r.Outcome, r.Version)
		delete(sn.props, r.ID)
	}
}

// checkPersisted checks the persist-before-send rule for one message: what
// it tells the receiver is on the sender's disk already.
func (s *sim) checkPersisted(sn *simNode, m Message) {
	d := sn.disk
	switch m.Type {
	case MsgPrepare, MsgAccept:
		if d.Round < m.Ballot.Round {
			s.violate("node %d sent %s before persisting round %d", sn.id, m, m.Ballot.Round)
		}
	case MsgPromise, MsgAccepted:
		if d.Committed.Version >= m.Version {
			return // committed in the same output: the promise no longer matters
		}
		if d.Committed.Version+1 != m.Version || d.Promised.Less(m.Ballot) {
			s.violate("node %d sent %s before persisting the promise", sn.id, m)
		}
		if m.Type == MsgAccepted && d.AcceptedBallot != m.Ballot {
			s.violate("node %d sent %s before persisting the value", sn.id, m)
		}
	}
}

// checkResult checks that an outcome tells the truth about what was
// committed.
func (s *sim) checkResult(sn *simNode, r Result) {
	own, ok := sn.props[r.ID]
	if !ok {
		s.violate("node %d reported unknown proposal %d", sn.id, r.ID)
		return
	}
	got, known := s.committed[r.Version]
	switch r.Outcome {
	case Committed:
		if !known || got.Digest != own.Digest || r.Version != own.Version {
			s.violate("node %d: proposal %d reported committed as v%d, but v%d is %s", sn.id, r.ID, r.Version, r.Version, label(got))
		}
	case Lost:
		if !known || got.Digest == own.Digest || r.Version != own.Version {
			s.violate("node %d: proposal %d reported lost at v%d, but v%d is %s", sn.id, r.ID, r.Version, r.Version, label(got))
		}
	case Superseded:
		if !known || r.Version <= own.Version {
			s.violate("node %d: proposal %d for v%d reported superseded by v%d", sn.id, r.ID, own.Version, r.Version)
		}
	case TimedOut:
		if r.Version != own.Version {
			s.violate("node %d: proposal %d for v%d timed out at v%d", sn.id, r.ID, own.Version, r.Version)
		}
	}
}

func mustMembers(c Config) Votes {
	v, _ := simMembers(c.Data)
	return v
}

// propose proposes a change at a node, on top of its committed version
// (or base, when >= 0).
func (s *sim) propose(id NodeID, change string, quorate bool, base int64) {
	sn := s.nodes[id]
	if sn == nil || sn.n == nil {
		s.printf("n%d: down\n", id)
		return
	}
	c := sn.n.Committed()
	if c.IsZero() {
		c = Config{Data: simData{members: Votes{}}.encode()}
	}
	data, err := applyChange(c, change)
	if err != nil {
		s.printf("n%d: bad change: %v\n", id, err)
		return
	}
	b := c.Version
	if base >= 0 {
		b = uint64(base)
	}
	pid, out, err := sn.n.Propose(quorate, b, data)
	if err != nil {
		s.printf("n%d: refused: %v\n", id, err)
		if !out.IsEmpty() {
			s.violate("a refused proposal produced output")
		}
		return
	}
	sn.props[pid] = NewConfig(b+1, data)
	s.printf("n%d: proposal %d: v%d %q\n", id, pid, b+1, change)
	s.handle(sn, out)
}

// deliver takes envelope i off the network and steps its receiver.
func (s *sim) deliver(i int, verbose bool) {
	e := s.net[i]
	s.net = append(s.net[:i], s.net[i+1:]...)
	m, err := DecodeMessage(e.raw, 0)
	if err != nil {
		s.violate("undecodable message %d->%d: %v", e.from, e.to, err)
		return
	}
	to := s.nodes[e.to]
	if verbose {
		s.printf("%s\n", describe(m))
	}
	if to == nil || to.n == nil || !s.passes(e) {
		if verbose {
			s.printf("  (lost: n%d is down or cut off)\n", e.to)
		}
		return
	}
	out, err := to.n.Step(m)
	if err != nil {
		s.violate("n%d refused %s: %v", e.to, describe(m), err)
		return
	}
	s.handle(to, out)
}

// match says whether an envelope matches a filter "a->b" (a, b: ids or *)
// and a message type ("" for any).
func match(e envelope, filter, typ string) bool {
	if filter != "" && filter != "all" {
		a, b, _ := strings.Cut(filter, "->")
		if a != "*" && a != fmt.Sprint(e.from) || b != "*" && b != fmt.Sprint(e.to) {
			return false
		}
	}
	if typ != "" {
		m, err := DecodeMessage(e.raw, 0)
		if err != nil || !strings.EqualFold(m.Type.String(), typ) {
			return false
		}
	}
	return true
}

// deliverPass delivers the messages pending now that match, once, in order
// (or in reverse); what they cause stays pending.
func (s *sim) deliverPass(filter, typ string, reverse, verbose bool) int {
	var picked, keep []envelope
	for _, e := range s.net {
		if !e.held && match(e, filter, typ) {
			picked = append(picked, e)
		} else {
			keep = append(keep, e)
		}
	}
	if reverse {
		for i, j := 0, len(picked)-1; i < j; i, j = i+1, j-1 {
			picked[i], picked[j] = picked[j], picked[i]
		}
	}
	s.net = keep
	for _, e := range picked {
		s.net = append([]envelope{e}, s.net...)
		s.deliver(0, verbose)
	}
	return len(picked)
}

// deliverAll delivers until nothing (unheld) is pending, at most limit
// messages.
func (s *sim) deliverAll(verbose bool, limit int) {
	for k := 0; k < limit; k++ {
		i := -1
		for j, e := range s.net {
			if !e.held {
				i = j
				break
			}
		}
		if i < 0 {
			return
		}
		s.deliver(i, verbose)
	}
}

func (s *sim) tick(id NodeID) {
	if sn := s.nodes[id]; sn != nil && sn.n != nil {
		s.handle(sn, sn.n.Tick())
	}
}

func (s *sim) crash(id NodeID) {
	if sn := s.nodes[id]; sn != nil {
		sn.n = nil
		sn.props = map[uint64]Config{}
	}
}

func (s *sim) restart(id NodeID) error {
	sn := s.nodes[id]
	if sn == nil || sn.n != nil {
		return fmt.Errorf("n%d is not down", id)
	}
	// The state goes through its disk encoding, as a daemon's would.
	hs, err := DecodeHardState(EncodeHardState(sn.disk))
	if err != nil {
		return err
	}
	n, err := New(simOptions(id), hs)
	if err != nil {
		return err
	}
	sn.n = n
	// The daemon installs the persisted configuration at start; it may be
	// newer than what it applied before crashing (a crash after persisting,
	// before applying).
	if c := hs.Committed; !c.IsZero() && (len(sn.applied) == 0 || sn.applied[len(sn.applied)-1].Version < c.Version) {
		s.record(sn, c)
	}
	return nil
}

// gossip plays heartbeats: every live node hears every connected live
// node's version.
func (s *sim) gossip() {
	for _, a := range s.ids() {
		for _, b := range s.ids() {
			na, nb := s.nodes[a], s.nodes[b]
			if a == b || na.n == nil || nb.n == nil || !s.connected(a, b) {
				continue
			}
			out, err := na.n.ObservePeerVersion(b, nb.n.Committed().Version)
			if err != nil {
				s.violate("observe: %v", err)
				continue
			}
			s.handle(na, out)
		}
	}
}

// describe is a message with values labelled by their note.
func describe(m Message) string {
	s := fmt.Sprintf("%d->%d %s v%d", m.From, m.To, m.Type, m.Version)
	if !m.Ballot.IsZero() {
		s += " b" + m.Ballot.String()
	}
	switch m.Type {
	case MsgPromise:
		if !m.AcceptedBallot.IsZero() {
			s += fmt.Sprintf(" accepted b%s %s", m.AcceptedBallot, label(m.Value))
		}
	case MsgAccept:
		s += " " + fmt.Sprintf("%q", noteOf(m.Value))
	case MsgNack:
		switch m.Reason {
		case NackBallot:
			s += " refused: promised b" + m.Promised.String()
		case NackDecided:
			s += " refused: committed " + label(m.Value)
		case NackBehind:
			s += fmt.Sprintf(" refused: behind at v%d", m.Committed)
		}
	case MsgCommit, MsgCatchUp:
		s += " " + fmt.Sprintf("%q", noteOf(m.Value))
	case MsgCatchUpRequest:
		s = fmt.Sprintf("%d->%d %s have v%d", m.From, m.To, m.Type, m.Version)
	}
	return s
}

func noteOf(c Config) string {
	d, _ := parseSimData(c.Data)
	return d.note
}

// status is one line per node.
func (s *sim) status() string {
	var b strings.Builder
	for _, id := range s.ids() {
		sn := s.nodes[id]
		if sn.n == nil {
			fmt.Fprintf(&b, "n%d: down; disk: %s promised=%s accepted=%s\n", id, label(sn.disk.Committed),
				ballotOrDash(sn.disk.Promised), acceptedString(sn.disk.AcceptedBallot, sn.disk.Accepted))
			continue
		}
		st := sn.n.Status()
		c := sn.n.Committed()
		fmt.Fprintf(&b, "n%d: %s %s promised=%s accepted=%s", id, label(c), votesString(mustMembers(c)),
			ballotOrDash(st.Promised), acceptedString(sn.disk.AcceptedBallot, sn.disk.Accepted))
		if p := st.Proposal; p != nil {
			fmt.Fprintf(&b, " proposal=%d(v%d b%s %s", p.ID, p.Version, p.Ballot, p.Phase)
			if p.Adopted {
				b.WriteString(" adopted")
			}
			b.WriteString(")")
		}
		b.WriteString("\n")
	}
	var pending []string
	for _, e := range s.net {
		h := ""
		if e.held {
			h = "(held)"
		}
		pending = append(pending, fmt.Sprintf("%d->%d%s", e.from, e.to, h))
	}
	if len(pending) > 0 {
		fmt.Fprintf(&b, "pending: %s\n", strings.Join(pending, " "))
	}
	return b.String()
}

func ballotOrDash(b Ballot) string {
	if b.IsZero() {
		return "-"
	}
	return "b" + b.String()
}

func acceptedString(b Ballot, c Config) string {
	if b.IsZero() {
		return "-"
	}
	return fmt.Sprintf("b%s:%s", b, label(c))
}
