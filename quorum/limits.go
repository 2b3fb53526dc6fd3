package quorum

// Limits. Everything the package accepts is bounded so that sums never
// overflow and a corrupt configuration cannot make a node allocate or loop
// without end.
const (
	// MaxNodes is the largest cluster (DESIGN.md: 2 to 32 nodes).
	MaxNodes = 32
	// MaxVotes bounds one node's votes (corosync's quorum_votes).
	MaxVotes = 255
	// MaxNodeID bounds node ids. corosync keeps node ids in signed ints in
	// places (lowest_node_id), so stay below 2^31. Id 0 is reserved: it is
	// the quorum device's id in votequorum (VOTEQUORUM_QDEVICE_NODEID).
	MaxNodeID = 1<<31 - 1
	// MaxWitnessVotes bounds the witness's votes; the lms algorithm gives
	// it one vote less than the nodes have together.
	MaxWitnessVotes = MaxNodes*MaxVotes - 1
	// MaxExpectedVotes bounds expected votes, from the configuration or
	// from SetExpected: every configured vote plus the witness's, twice
	// over, leaves room for an operator who wants a higher quorum.
	MaxExpectedVotes = 2 * (MaxNodes*MaxVotes + MaxWitnessVotes)
	// DefaultLastManStandingWindowMs is corosync's
	// last_man_standing_window default (votequorum(5)).
	DefaultLastManStandingWindowMs = 10_000
	// MinLastManStandingWindowMs and MaxLastManStandingWindowMs bound the
	// window: shorter than a heartbeat round makes no sense, longer than
	// a day is a typo.
	MinLastManStandingWindowMs = 100
	MaxLastManStandingWindowMs = 24 * 60 * 60 * 1000
	// maxNameBytes bounds a node name (the node package allows 63).
	maxNameBytes = 63
)
