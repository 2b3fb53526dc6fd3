package quorum

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestValidateRefusesBadNodes(t *testing.T) {
	long := strings.Repeat("n", maxNameBytes+1)
	for _, tc := range []struct {
		name  string
		nodes []Node
		want  string
	}{
		{"id 0", []Node{{ID: 0, Votes: 1}, {ID: 2, Votes: 1}}, "node id 0 is reserved"},
		{"id too big", []Node{{ID: MaxNodeID + 1, Votes: 1}}, "use 1..2147483647"},
		{"duplicate id", []Node{{ID: 1, Votes: 1}, {ID: 1, Votes: 1}}, "node id 1 appears twice"},
		{"duplicate name", []Node{{ID: 1, Name: "a", Votes: 1}, {ID: 2, Name: "a", Votes: 1}}, `node name "a" is used by nodes 1 and 2`},
		{"name with space", []Node{{ID: 1, Name: "a b", Votes: 1}}, "no spaces"},
		{"name too long", []Node{{ID: 1, Name: long, Votes: 1}}, "longer than 63 bytes"},
		{"votes 0", []Node{{ID: 1, Votes: 0}}, "node 1 has 0 votes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Config{Nodes: tc.nodes}.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestValidateRefusesBadTieBreakers(t *testing.T) {
	nodes := simNodes(4)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"atb node without atb", Config{Nodes: nodes, AutoTieBreakerNode: TieBreaker{Mode: TieBreakHighest}}, "auto_tie_breaker is off"},
		{"empty list", Config{Nodes: nodes, AutoTieBreaker: true, AutoTieBreakerNode: TieBreaker{Mode: TieBreakList}}, "an empty node list"},
		{"lowest with nodes", Config{Nodes: nodes, AutoTieBreaker: true, AutoTieBreakerNode: TieBreaker{Mode: TieBreakLowest, Nodes: []NodeID{1}}}, "takes no node list"},
		{"bad mode", Config{Nodes: nodes, AutoTieBreaker: true, AutoTieBreakerNode: TieBreaker{Mode: 9}}, "unknown mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestParseTieBreaker(t *testing.T) {
	for in, want := range map[string]string{
		"":        "lowest",
		"lowest":  "lowest",
		"highest": "highest",
		"1 3 5":   "1 3 5",
		"1,3, 5":  "1 3 5",
		" 7 ":     "7",
	} {
		tb, err := ParseTieBreaker(in)
		if err != nil || tb.String() != want {
			t.Errorf("ParseTieBreaker(%q) = %v, %v; want %q", in, tb, err, want)
		}
	}
	for _, in := range []string{"lowest 1", "0", "-1", "1 x", "4294967296", strings.Repeat("1 ", MaxNodes+1)} {
		if _, err := ParseTieBreaker(in); err == nil {
			t.Errorf("ParseTieBreaker(%q) accepted", in)
		}
	}
}

func TestConfigJSONRoundTrip(t *testing.T) {
	wfa := true
	cfg := Config{
		Nodes:              []Node{{ID: 1, Name: "a", Votes: 1}, {ID: 2, Name: "b", Votes: 1}, {ID: 3, Name: "c", Votes: 1}, {ID: 4, Name: "d", Votes: 1}},
		WaitForAll:         &wfa,
		AutoTieBreaker:     true,
		AutoTieBreakerNode: TieBreaker{Mode: TieBreakList, Nodes: []NodeID{3, 1}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"auto_tie_breaker_node":"3 1"`) {
		t.Errorf("tie breaker not written as text: %s", b)
	}
	var back Config
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.AutoTieBreakerNode.String() != "3 1" || back.WaitForAll == nil || !*back.WaitForAll || len(back.Nodes) != 4 {
		t.Errorf("round trip lost something: %+v", back)
	}
	if err := json.Unmarshal([]byte(`{"auto_tie_breaker_node":"first"}`), &back); err == nil {
		t.Error("a bad tie breaker was read from JSON")
	}
}

func TestReconfigureRules(t *testing.T) {
	cfg := Config{Nodes: simNodes(3)}
	m, err := New(cfg, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	changed := cloneConfig(cfg)
	changed.LastManStanding = true
	if err := m.Reconfigure(0, changed); !errors.Is(err, ErrRestartRequired) {
		t.Errorf("changing last_man_standing: %v, want ErrRestartRequired", err)
	}
	wfa := false
	changed = cloneConfig(cfg)
	changed.WaitForAll = &wfa
	if err := m.Reconfigure(0, changed); !errors.Is(err, ErrRestartRequired) {
		t.Errorf("setting wait_for_all: %v, want ErrRestartRequired", err)
	}
	changed = Config{Nodes: simNodes(3)[1:]}
	if err := m.Reconfigure(0, changed); err == nil || !strings.Contains(err.Error(), "not in the new configuration") {
		t.Errorf("removing this node: %v", err)
	}
	if err := m.Reconfigure(0, Config{}); err == nil {
		t.Error("an invalid configuration was accepted")
	}
	// A witness may come at runtime, as a quorum device may.
	changed = cloneConfig(cfg)
	changed.Witness = &WitnessConfig{Algorithm: FFSplit}
	if err := m.Reconfigure(0, changed); err != nil {
		t.Fatal(err)
	}
	if st := m.Status(); st.ExpectedVotes != 4 || st.Flags&FlagQdevice == 0 {
		t.Errorf("after adding a witness: %+v", st)
	}
	// The machine kept its own copy: changing the caller's does nothing.
	changed.Nodes[0].Votes = 9
	if m.Config().Nodes[0].Votes != 1 {
		t.Error("Config shares memory with the caller")
	}
}

func TestNewRefusesUnknownSelf(t *testing.T) {
	if _, err := New(Config{Nodes: simNodes(2)}, 3, 0); err == nil {
		t.Error("a machine for an unconfigured node was made")
	}
	if _, err := New(Config{}, 1, 0); err == nil {
		t.Error("a machine for an empty configuration was made")
	}
}
