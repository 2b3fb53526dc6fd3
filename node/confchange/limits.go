package confchange

// Limits. Every input is checked against them before it can change any
// state, so a forged or corrupt message or state file gets an error.
const (
	// MaxConfigBytes bounds a configuration's data. A configuration
	// travels whole in Accept, Commit and catch-up messages and sits in
	// every acceptor's persisted state, so it must stay small next to the
	// network and the disk; 1 MiB is far above a 32-node cluster's needs.
	// Options.MaxConfigBytes may lower it, never raise it.
	MaxConfigBytes = 1 << 20

	// MaxMembers bounds the members (voters and learners) of a
	// configuration: DESIGN.md says 2 to 32 nodes; the rest leaves room
	// for witnesses.
	MaxMembers = 64

	// MaxVotes bounds one member's votes (the same bound as the node
	// configuration's), so sums of votes never come near overflow.
	MaxVotes = 255

	// MaxRound bounds ballot rounds. An honest proposer uses one round per
	// attempt and never gets near it; a forged huge round is refused, so
	// "highest round seen + 1" cannot overflow.
	MaxRound = 1 << 62

	// MaxVersion bounds configuration versions for the same reason.
	MaxVersion = 1 << 62

	// maxServedPerTick bounds the catch-up replies sent within one tick
	// (each carries up to MaxConfigBytes): peers that flood catch-up
	// requests cost at most this many configurations per tick.
	maxServedPerTick = 2 * MaxMembers

	// maxLocalSteps bounds the in-process delivery of messages a node sends
	// to itself within one input (prepare, promise, accept, accepted: four
	// are enough); reaching it is a bug.
	maxLocalSteps = 64
)

// Defaults for the tick-driven timers. The daemon chooses the tick length;
// the numbers below assume a 100 ms tick (a retry after 1 s, a proposal
// gives up after 30 s).
const (
	// DefaultRetryTicks: a phase that has not reached its quorum after this
	// many ticks is retried with a higher ballot (messages may have been
	// lost). Later retries back off exponentially.
	DefaultRetryTicks = 10
	// DefaultMaxBackoffTicks caps the exponential backoff between retries.
	DefaultMaxBackoffTicks = 80
	// DefaultProposalTimeoutTicks: a proposal that is not decided after this
	// many ticks reports TimedOut and is dropped.
	DefaultProposalTimeoutTicks = 300
	// maxTimerTicks bounds every timer option (a day at 100 ms ticks).
	maxTimerTicks = 864000
)
