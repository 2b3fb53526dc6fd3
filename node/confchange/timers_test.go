package confchange

import "testing"

// A proposal that hears nothing retries at growing intervals (bounded by
// MaxBackoffTicks plus jitter), persists each new round before its
// Prepares, and reports TimedOut at ProposalTimeoutTicks exactly.
func TestRetriesBackOffAndTimeOut(t *testing.T) {
	opts := Options{ID: 1, Members: simMembers, RetryTicks: 4, MaxBackoffTicks: 20, ProposalTimeoutTicks: 100}
	hs := Bootstrap(simData{members: Votes{1: 1, 2: 1, 3: 1}, note: "initial"}.encode())
	n, err := New(opts, hs)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := applyChange(hs.Committed, "note x")
	_, out, err := n.Propose(true, 1, data)
	if err != nil {
		t.Fatal(err)
	}
	if out.Persist == nil || out.Persist.Round != 1 || len(out.Messages) != 2 {
		t.Fatalf("first attempt: %+v", out)
	}
	var attempts []int64
	for tick := int64(1); tick <= 200; tick++ {
		out := n.Tick()
		if len(out.Messages) > 0 {
			attempts = append(attempts, tick)
			if out.Persist == nil || out.Persist.Round != out.Messages[0].Ballot.Round {
				t.Fatalf("tick %d: Prepare at round %d without persisting it", tick, out.Messages[0].Ballot.Round)
			}
		}
		if len(out.Results) > 0 {
			r := out.Results[0]
			if r.Outcome != TimedOut || r.Version != 2 || tick != 100 {
				t.Fatalf("tick %d: %+v", tick, r)
			}
			break
		}
		if tick == 200 {
			t.Fatal("never timed out")
		}
	}
	prev := int64(0)
	for i, at := range attempts {
		gap := at - prev
		minGap := int64(opts.RetryTicks) << min(i, 10)
		if gap < min(minGap, int64(opts.MaxBackoffTicks)) || gap >= int64(opts.MaxBackoffTicks+opts.RetryTicks) {
			t.Errorf("retry %d after %d ticks (attempts at %v)", i+1, gap, attempts)
		}
		prev = at
	}
	if len(attempts) < 4 || len(attempts) > 100/opts.RetryTicks {
		t.Errorf("%d retries: %v", len(attempts), attempts)
	}
	if n.Status().Proposal != nil {
		t.Error("proposal still in flight after timing out")
	}
}
