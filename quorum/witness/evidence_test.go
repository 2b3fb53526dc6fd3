package witness

import (
	"log/slog"
	"testing"

	"github.com/paddock-io/paddock/quorum"
)

// TestEvidenceGrantAfterLapse: a grant for the same membership that
// arrives after the previous one lapsed is a new grant (the witness may
// have voted for another membership in between), so its grantedAt is its
// own arrival, not the first grant's; and the anchor is the send time of
// the report it answers.
func TestEvidenceGrantAfterLapse(t *testing.T) {
	now := int64(0)
	c, err := NewClient(ClientConfig{Addr: "127.0.0.1:1", LeaseMs: 750, IntervalMs: 125, NowMs: func() int64 { return now }, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	view := []quorum.NodeID{2}
	c.SetView(view, 1, quorum.Config{})
	c.sent[1] = sentReport{atMs: 0, view: view}
	now = 10
	c.accept(&Verdict{Seq: 1, Granted: true, Membership: view, LeaseMs: 750})
	if a, g, ok := c.Evidence(now); !ok || a != 0 || g != 10 {
		t.Fatalf("first grant: anchor %d grantedAt %d ok %v; want 0, 10, true", a, g, ok)
	}
	c.sent[2] = sentReport{atMs: 100, view: view}
	now = 120
	c.accept(&Verdict{Seq: 2, Granted: true, Membership: view, LeaseMs: 750})
	if a, g, ok := c.Evidence(now); !ok || a != 100 || g != 10 {
		t.Fatalf("renewed grant: anchor %d grantedAt %d ok %v; want 100, 10, true", a, g, ok)
	}
	now = 5000
	if _, _, ok := c.Evidence(now); ok {
		t.Fatal("the grant did not lapse")
	}
	c.sent[3] = sentReport{atMs: 9000, view: view}
	now = 9010
	c.accept(&Verdict{Seq: 3, Granted: true, Membership: view, LeaseMs: 750})
	if a, g, ok := c.Evidence(now); !ok || a != 9000 || g != 9010 {
		t.Fatalf("grant after a lapse: anchor %d grantedAt %d ok %v; want 9000, 9010, true", a, g, ok)
	}
}
