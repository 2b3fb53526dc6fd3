package quorum

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Flags are votequorum's info flags, as corosync-quorumtool prints them.
type Flags uint8

const (
	FlagTwoNode Flags = 1 << iota
	FlagQuorate
	FlagWaitForAll
	FlagLastManStanding
	FlagAutoTieBreaker
	FlagQdevice
)

// flagNames is in corosync-quorumtool's order (display_quorum_data).
var flagNames = []struct {
	f    Flags
	name string
}{
	{FlagTwoNode, "2Node"},
	{FlagQuorate, "Quorate"},
	{FlagWaitForAll, "WaitForAll"},
	{FlagLastManStanding, "LastManStanding"},
	{FlagAutoTieBreaker, "AutoTieBreaker"},
	{FlagQdevice, "Qdevice"},
}

// Names lists the flags that are set, in corosync-quorumtool's order.
func (f Flags) Names() []string {
	names := []string{}
	for _, fn := range flagNames {
		if f&fn.f != 0 {
			names = append(names, fn.name)
		}
	}
	return names
}

// String is the Flags line of corosync-quorumtool -s.
func (f Flags) String() string { return strings.Join(f.Names(), " ") }

// MarshalJSON writes the flags as a list of names.
func (f Flags) MarshalJSON() ([]byte, error) { return json.Marshal(f.Names()) }

// UnmarshalJSON reads a list of names.
func (f *Flags) UnmarshalJSON(b []byte) error {
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return err
	}
	var out Flags
next:
	for _, n := range names {
		for _, fn := range flagNames {
			if fn.name == n {
				out |= fn.f
				continue next
			}
		}
		return fmt.Errorf("unknown quorum flag %q", n)
	}
	*f = out
	return nil
}

// MemberStatus is one line of the membership list.
type MemberStatus struct {
	ID    NodeID `json:"id"`
	Name  string `json:"name"`
	Votes uint32 `json:"votes"`
	Local bool   `json:"local"`
}

// WitnessStatus is the witness line of the membership list.
type WitnessStatus struct {
	Algorithm WitnessAlgorithm `json:"algorithm"`
	Votes     uint32           `json:"votes"`
	// Vote says the witness's vote counts here now.
	Vote bool `json:"vote"`
}

// Status is one node's votequorum state, with every field of
// "corosync-quorumtool -s" / "pvecm status" that votequorum knows.
type Status struct {
	NodeID          NodeID `json:"node_id"`
	Quorate         bool   `json:"quorate"`
	ExpectedVotes   uint32 `json:"expected_votes"`
	HighestExpected uint32 `json:"highest_expected"`
	TotalVotes      uint32 `json:"total_votes"`
	Quorum          uint32 `json:"quorum"`
	Flags           Flags  `json:"flags"`
	// WaitingForAll: wait_for_all is still waiting for every vote.
	WaitingForAll bool           `json:"waiting_for_all"`
	Members       []MemberStatus `json:"members"`
	Witness       *WitnessStatus `json:"witness,omitempty"`
	// LastManStandingDeadlineMs is when the armed last_man_standing
	// timer fires (virtual time); nil when it is not armed.
	LastManStandingDeadlineMs *int64 `json:"last_man_standing_deadline_ms,omitempty"`
}

// Status reports the current state.
func (m *Machine) Status() Status {
	s := Status{
		NodeID:          m.self,
		Quorate:         m.quorate,
		ExpectedVotes:   m.expected,
		HighestExpected: m.highestExpected(),
		TotalVotes:      m.total,
		Quorum:          m.quorum,
		WaitingForAll:   m.waiting,
	}
	if m.r.twoNode {
		s.Flags |= FlagTwoNode
	}
	if m.quorate {
		s.Flags |= FlagQuorate
	}
	if m.r.waitForAll {
		s.Flags |= FlagWaitForAll
	}
	if m.r.lms {
		s.Flags |= FlagLastManStanding
	}
	if m.r.atb {
		s.Flags |= FlagAutoTieBreaker
	}
	if w := m.r.witness; w != nil {
		s.Flags |= FlagQdevice
		s.Witness = &WitnessStatus{Algorithm: w.Algorithm, Votes: w.Votes, Vote: m.witnessVote}
	}
	names := map[NodeID]string{}
	for _, n := range m.r.nodes {
		names[n.ID] = n.Name
	}
	for _, id := range m.members() {
		s.Members = append(s.Members, MemberStatus{ID: id, Name: names[id], Votes: m.r.votes[id], Local: id == m.self})
	}
	if m.lmsTimerSet {
		d := m.lmsDeadlineMs
		s.LastManStandingDeadlineMs = &d
	}
	return s
}

// WriteVotequorum writes the "Votequorum information" block of
// corosync-quorumtool -s, with "Activity blocked" after the quorum when
// inquorate.
func (s *Status) WriteVotequorum(w io.Writer) error {
	blocked := ""
	if !s.Quorate {
		blocked = " Activity blocked"
	}
	// No trailing blanks when no flag is set (corosync-quorumtool leaves
	// them; they only get in the way of copies and diffs).
	flags := strings.TrimRight("Flags:            "+s.Flags.String(), " ")
	_, err := fmt.Fprintf(w, "Votequorum information\n"+
		"----------------------\n"+
		"Expected votes:   %d\n"+
		"Highest expected: %d\n"+
		"Total votes:      %d\n"+
		"Quorum:           %d%s\n"+
		"%s\n",
		s.ExpectedVotes, s.HighestExpected, s.TotalVotes, s.Quorum, blocked, flags)
	return err
}

// WriteMembership writes the "Membership information" block: node id in
// hex, votes, name, "(local)" for this node, and the witness as the
// quorum device (id 0), with its votes shown as 0 and "(votes N)" when it
// does not vote here, as corosync-quorumtool shows a qdevice.
func (s *Status) WriteMembership(w io.Writer) error {
	var b strings.Builder
	b.WriteString("Membership information\n----------------------\n")
	fmt.Fprintf(&b, "%10s %10s %s\n", "Nodeid", "Votes", "Name")
	for _, mb := range s.Members {
		local := ""
		if mb.Local {
			local = " (local)"
		}
		fmt.Fprintf(&b, "0x%08x %10d %s%s\n", mb.ID, mb.Votes, mb.Name, local)
	}
	if wt := s.Witness; wt != nil {
		if wt.Vote {
			fmt.Fprintf(&b, "0x%08x %10d Qdevice\n", 0, wt.Votes)
		} else {
			fmt.Fprintf(&b, "0x%08x %10d Qdevice (votes %d)\n", 0, 0, wt.Votes)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteText writes both blocks, separated by a blank line.
func (s *Status) WriteText(w io.Writer) error {
	if err := s.WriteVotequorum(w); err != nil {
		return err
	}
	if _, err := io.WriteString(w, "\n"); err != nil {
		return err
	}
	return s.WriteMembership(w)
}
