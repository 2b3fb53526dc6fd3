package main

// The campaign client's block format and the epoch claims it reads from
// node logs: a torn or misplaced block must decode to a value no writer
// used, and a log with two promotions in one epoch must fail the check.

import (
	"testing"

	"github.com/paddock-io/paddock/internal/history"
)

func TestHistBlockDecode(t *testing.T) {
	if v := histDecode(7, make([]byte, histBlockBytes)); v != history.Initial {
		t.Fatalf("zero block decodes to %d", v)
	}
	if v := histDecode(7, histPattern(7, 42)); v != 42 {
		t.Fatalf("block 7 holding 42 decodes to %d", v)
	}
	if v := histDecode(8, histPattern(7, 42)); v != tornValue {
		t.Fatalf("block 7's content read at block 8 decodes to %d, want torn", v)
	}
	torn := histPattern(7, 42)
	copy(torn[histBlockBytes/2:], histPattern(7, 43)) // half of a later write
	if v := histDecode(7, torn); v != tornValue {
		t.Fatalf("half-written block decodes to %d, want torn", v)
	}
	zeroTail := histPattern(7, 42)
	clear(zeroTail[histBlockBytes-histChunkBytes:])
	if v := histDecode(7, zeroTail); v != tornValue {
		t.Fatalf("block with a zero tail decodes to %d, want torn", v)
	}
}

func TestHistEpochClaimsFromLogs(t *testing.T) {
	h1 := `time=2026-12-02T11:32:20.078Z level=INFO msg=promoted node=h1 part=volumes volume_name=vm volume=1 epoch=1 generation=1.1 members="[1 2 3]" newest_before=0.0
time=2026-12-02T11:32:29.580Z level=INFO msg=promoted node=h1 part=volumes volume_name=other volume=2 epoch=2 generation=2.1 members="[1 2]" newest_before=1.1
`
	h2 := `time=2026-12-02T11:32:30.000Z level=INFO msg=promoted node=h2 part=volumes volume_name=vm volume=1 epoch=2 generation=2.1 members="[2 3]" newest_before=1.1
`
	claims := histEpochClaims("vm", h1, h2)
	if len(claims) != 2 || claims[0] != (history.EpochClaim{Node: "h1", Epoch: 1}) || claims[1] != (history.EpochClaim{Node: "h2", Epoch: 2}) {
		t.Fatalf("claims %v", claims)
	}
	if res := history.Check(nil, claims, true); !res.OK() {
		t.Fatalf("distinct epochs rejected: %v", res)
	}
	h3 := `time=2026-12-02T11:32:31.000Z level=INFO msg=promoted node=h3 part=volumes volume_name=vm volume=1 epoch=2 generation=2.1 members="[1 3]" newest_before=1.1
`
	res := history.Check(nil, histEpochClaims("vm", h1, h2, h3), true)
	if res.OK() || res.Violations[0].Kind != history.SplitBrain {
		t.Fatalf("two promotions in epoch 2 not found: %v", res)
	}
}
