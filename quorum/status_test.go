package quorum

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestStatusJSON(t *testing.T) {
	cfg := Config{Nodes: []Node{{ID: 1, Name: "pve1", Votes: 1}, {ID: 2, Name: "pve2", Votes: 1}}, Witness: &WitnessConfig{Algorithm: FFSplit}}
	m, _ := New(cfg, 1, 0)
	m.Update(0, View{Members: members(1, 2), WitnessVoteFor: []NodeID{1, 2}})
	b, err := json.Marshal(m.Status())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"quorate":true`, `"expected_votes":3`, `"highest_expected":3`, `"total_votes":3`, `"quorum":2`,
		`"flags":["Quorate","Qdevice"]`, `"members":[{"id":1,"name":"pve1","votes":1,"local":true}`,
		`"witness":{"algorithm":"ffsplit","votes":1,"vote":true}`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	var back Status
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Flags != FlagQuorate|FlagQdevice || back.Witness == nil || !back.Witness.Vote {
		t.Errorf("round trip: %+v", back)
	}
	if err := json.Unmarshal([]byte(`{"flags":["Quorate","Bogus"]}`), &back); err == nil {
		t.Error("an unknown flag was read")
	}
}

func TestFlagsOrder(t *testing.T) {
	all := FlagQdevice | FlagAutoTieBreaker | FlagLastManStanding | FlagWaitForAll | FlagQuorate | FlagTwoNode
	if got := all.String(); got != "2Node Quorate WaitForAll LastManStanding AutoTieBreaker Qdevice" {
		t.Fatalf("flags in the wrong order: %q", got)
	}
	if got := Flags(0).String(); got != "" {
		t.Fatalf("no flags: %q", got)
	}
}
