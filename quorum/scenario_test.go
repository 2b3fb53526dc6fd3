package quorum

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// TestScenarios runs testdata/*.txt against the simulator. Commands:
//
//	nodes N [options]        a new cluster of nodes 1..N, all started at t=0
//	                         and in one segment; options:
//	    two_node | wait_for_all | wait_for_all=0 | lms [window=10s]
//	    atb lowest|highest|ID,ID,... | witness ffsplit|lms [votes=N] [tb=lowest|highest|ID]
//	    votes ID=V,ID=V | expected N | up ID,ID (only these start)
//	down ID,...              the nodes stop (crash)
//	up ID,...                the nodes start again, fresh (as corosync restarts)
//	split 1,2|3,4,5          network segments; every node named once
//	isolate ID               the node alone in a new segment
//	heal                     one segment again
//	join ID [votes=V]        a configuration change adds node ID (started, in
//	                         node 1's segment); every running node reconfigures
//	leave ID                 a configuration change removes node ID
//	witness on|off           the witness process runs or not
//	witness cut|link ID,...  a node's link to the witness breaks or mends
//	advance DURATION         virtual time passes (10s, 500ms)
//	expected N on ID         SetExpected on ID (applied by its partition)
//	cancel_wfa on ID         CancelWaitForAll on ID
//	status ID                the corosync-quorumtool -s text of ID
//	corosync_atb on|off      corosync's exact auto_tie_breaker rule (to show
//	                         the split brains paddock's rule avoids)
//	assert quorate|inquorate ID,...
//	print                    every node's view
//
// Every event prints every node's view afterwards, and any breach of the
// safety checks (two disjoint quorate partitions, expected votes falling
// on their own) as a VIOLATION line: scenarios of options that are unsafe
// by design show them on purpose.
func TestScenarios(t *testing.T) {
	paths, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) {
			var s *sim
			datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
				var b strings.Builder
				var reported int
				if s != nil {
					reported = len(s.violations)
				}
				next, err := runCommand(t, s, d, &b)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				if next != nil {
					s, reported = next, 0
				}
				if s != nil {
					for _, v := range s.violations[reported:] {
						fmt.Fprintf(&b, "VIOLATION %s\n", v)
					}
				}
				if b.Len() == 0 {
					return "ok\n"
				}
				return b.String()
			})
		})
	}
}

// runCommand runs one command; it returns a new simulator for "nodes".
func runCommand(t *testing.T, s *sim, d *datadriven.TestData, b *strings.Builder) (*sim, error) {
	args := strings.Fields(strings.TrimPrefix(d.FullCmd(), d.Cmd))
	if d.Cmd == "nodes" {
		cfg, up, err := parseCluster(args)
		if err != nil {
			return nil, err
		}
		ns, err := newSim(cfg, up)
		if err != nil {
			return nil, err
		}
		ns.print(b)
		return ns, nil
	}
	if s == nil {
		return nil, fmt.Errorf("no cluster yet: start with nodes N")
	}
	one := func() (NodeID, error) {
		if len(args) != 1 {
			return 0, fmt.Errorf("%s takes one node id", d.Cmd)
		}
		ids, err := parseIDs(args[0])
		if err != nil || len(ids) != 1 {
			return 0, fmt.Errorf("%s takes one node id", d.Cmd)
		}
		return ids[0], nil
	}
	list := func(words []string) ([]NodeID, error) {
		if len(words) != 1 {
			return nil, fmt.Errorf("%s takes a list of node ids like 1,2", d.Cmd)
		}
		return parseIDs(words[0])
	}
	onNode := func() (uint32, NodeID, error) {
		// "expected N on ID", "cancel_wfa on ID"
		var n uint64
		rest := args
		if d.Cmd == "expected" {
			if len(args) != 3 {
				return 0, 0, fmt.Errorf("use: expected N on ID")
			}
			var err error
			if n, err = strconv.ParseUint(args[0], 10, 32); err != nil {
				return 0, 0, fmt.Errorf("bad expected votes %q", args[0])
			}
			rest = args[1:]
		}
		if len(rest) != 2 || rest[0] != "on" {
			return 0, 0, fmt.Errorf("use: %s on ID", d.Cmd)
		}
		ids, err := parseIDs(rest[1])
		if err != nil || len(ids) != 1 {
			return 0, 0, fmt.Errorf("bad node id %q", rest[1])
		}
		return uint32(n), ids[0], nil
	}

	switch d.Cmd {
	case "down", "up":
		ids, err := list(args)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			if d.Cmd == "down" {
				err = s.stop(id)
			} else {
				err = s.start(id)
			}
			if err != nil {
				return nil, err
			}
		}
		s.settle()
	case "split":
		if len(args) != 1 {
			return nil, fmt.Errorf("use: split 1,2|3,4")
		}
		if err := s.split(args[0]); err != nil {
			return nil, err
		}
	case "isolate":
		id, err := one()
		if err != nil {
			return nil, err
		}
		if err := s.isolate(id); err != nil {
			return nil, err
		}
	case "heal":
		s.heal()
	case "join", "leave":
		if len(args) < 1 || len(args) > 2 {
			return nil, fmt.Errorf("use: %s ID", d.Cmd)
		}
		ids, err := parseIDs(args[0])
		if err != nil || len(ids) != 1 {
			return nil, fmt.Errorf("bad node id %q", args[0])
		}
		cfg := cloneConfig(s.cfg)
		if d.Cmd == "join" {
			votes := uint32(1)
			if len(args) == 2 {
				v, ok := strings.CutPrefix(args[1], "votes=")
				n, err := strconv.ParseUint(v, 10, 32)
				if !ok || err != nil {
					return nil, fmt.Errorf("use: join ID [votes=V]")
				}
				votes = uint32(n)
			}
			cfg.Nodes = append(cfg.Nodes, Node{ID: ids[0], Name: fmt.Sprintf("node%d", ids[0]), Votes: votes})
		} else {
			cfg.Nodes = slices.DeleteFunc(cfg.Nodes, func(n Node) bool { return n.ID == ids[0] })
		}
		if err := s.reconfigure(cfg); err != nil {
			return nil, err
		}
		if d.Cmd == "join" {
			if err := s.start(ids[0]); err != nil {
				return nil, err
			}
		}
		s.settle()
	case "witness":
		if len(args) == 0 {
			return nil, fmt.Errorf("use: witness on|off|cut ID|link ID")
		}
		if s.arb == nil {
			return nil, fmt.Errorf("no witness configured")
		}
		switch args[0] {
		case "on", "off":
			if len(args) != 1 {
				return nil, fmt.Errorf("use: witness on|off")
			}
			s.witnessUp = args[0] == "on"
		case "cut", "link":
			ids, err := list(args[1:])
			if err != nil {
				return nil, err
			}
			for _, id := range ids {
				n, err := s.node(id)
				if err != nil {
					return nil, err
				}
				n.witnessLink = args[0] == "link"
			}
		default:
			return nil, fmt.Errorf("use: witness on|off|cut ID|link ID")
		}
		s.settle()
	case "advance":
		if len(args) != 1 {
			return nil, fmt.Errorf("use: advance 10s")
		}
		dur, err := time.ParseDuration(args[0])
		if err != nil || dur < 0 {
			return nil, fmt.Errorf("bad duration %q", args[0])
		}
		s.advance(dur.Milliseconds())
	case "expected":
		n, id, err := onNode()
		if err != nil {
			return nil, err
		}
		res, err := s.setExpected(id, n)
		if err != nil {
			fmt.Fprintf(b, "refused: %v\n", err)
			return nil, nil
		}
		fmt.Fprintf(b, "accepted: expected=%d quorum=%d\n%s\n", res.ExpectedVotes, res.Quorum, res.Warning)
	case "cancel_wfa":
		_, id, err := onNode()
		if err != nil {
			return nil, err
		}
		n, err := s.node(id)
		if err != nil || !n.up {
			return nil, fmt.Errorf("node %d is not running", id)
		}
		n.m.CancelWaitForAll(s.nowMs)
		s.settle()
	case "status":
		id, err := one()
		if err != nil {
			return nil, err
		}
		n, err := s.node(id)
		if err != nil || !n.up {
			return nil, fmt.Errorf("node %d is not running", id)
		}
		st := n.m.Status()
		if err := st.WriteText(b); err != nil {
			return nil, err
		}
		return nil, nil
	case "assert":
		if len(args) != 2 || (args[0] != "quorate" && args[0] != "inquorate") {
			return nil, fmt.Errorf("use: assert quorate|inquorate 1,2")
		}
		ids, err := parseIDs(args[1])
		if err != nil {
			return nil, err
		}
		want := args[0] == "quorate"
		for _, id := range ids {
			n, err := s.node(id)
			if err != nil {
				return nil, err
			}
			if !n.up || n.m.Quorate() != want {
				t.Errorf("%s: node %d is not %s", d.Pos, id, args[0])
				fmt.Fprintf(b, "FAILED: node %d is not %s\n", id, args[0])
			}
		}
		return nil, nil
	case "corosync_atb":
		// Switch to corosync's exact auto_tie_breaker rule (see
		// corosyncATB) for the rest of the file, to show what it does.
		if len(args) != 1 || (args[0] != "on" && args[0] != "off") {
			return nil, fmt.Errorf("use: corosync_atb on|off")
		}
		corosyncATB = args[0] == "on"
		t.Cleanup(func() { corosyncATB = false })
		return nil, nil
	case "print":
	default:
		return nil, fmt.Errorf("unknown command %q", d.Cmd)
	}
	s.print(b)
	return nil, nil
}

// parseCluster reads "N [options]" (see TestScenarios).
func parseCluster(args []string) (Config, []NodeID, error) {
	var cfg Config
	if len(args) == 0 {
		return cfg, nil, fmt.Errorf("use: nodes N [options]")
	}
	count, err := strconv.Atoi(args[0])
	if err != nil || count < 0 || count > MaxNodes+1 {
		return cfg, nil, fmt.Errorf("bad node count %q", args[0])
	}
	for i := 1; i <= count; i++ {
		cfg.Nodes = append(cfg.Nodes, Node{ID: NodeID(i), Name: fmt.Sprintf("node%d", i), Votes: 1})
	}
	var up []NodeID
	value := func(i int, what string) (string, error) {
		if i+1 >= len(args) {
			return "", fmt.Errorf("%s needs a value", what)
		}
		return args[i+1], nil
	}
	for i := 1; i < len(args); i++ {
		switch a := args[i]; {
		case a == "two_node":
			cfg.TwoNode = true
		case a == "wait_for_all", a == "wait_for_all=1":
			v := true
			cfg.WaitForAll = &v
		case a == "wait_for_all=0":
			v := false
			cfg.WaitForAll = &v
		case a == "lms":
			cfg.LastManStanding = true
			if i+1 < len(args) && strings.HasPrefix(args[i+1], "window=") {
				dur, err := time.ParseDuration(strings.TrimPrefix(args[i+1], "window="))
				if err != nil {
					return cfg, nil, fmt.Errorf("bad lms window %q", args[i+1])
				}
				cfg.LastManStandingWindowMs = dur.Milliseconds()
				i++
			}
		case a == "atb":
			v, err := value(i, "atb")
			if err != nil {
				return cfg, nil, err
			}
			tb, err := ParseTieBreaker(v)
			if err != nil {
				return cfg, nil, err
			}
			cfg.AutoTieBreaker, cfg.AutoTieBreakerNode = true, tb
			i++
		case a == "witness":
			v, err := value(i, "witness")
			if err != nil {
				return cfg, nil, err
			}
			w := &WitnessConfig{Algorithm: WitnessAlgorithm(v)}
			i++
			for i+1 < len(args) {
				if n, ok := strings.CutPrefix(args[i+1], "votes="); ok {
					votes, err := strconv.ParseUint(n, 10, 32)
					if err != nil {
						return cfg, nil, fmt.Errorf("bad witness votes %q", n)
					}
					w.Votes = uint32(votes)
				} else if tbs, ok := strings.CutPrefix(args[i+1], "tb="); ok {
					tb, err := ParseTieBreaker(tbs)
					if err != nil {
						return cfg, nil, err
					}
					w.TieBreaker = tb
				} else {
					break
				}
				i++
			}
			cfg.Witness = w
		case a == "votes":
			v, err := value(i, "votes")
			if err != nil {
				return cfg, nil, err
			}
			for _, kv := range strings.Split(v, ",") {
				k, val, ok := strings.Cut(kv, "=")
				id, err1 := strconv.ParseUint(k, 10, 32)
				votes, err2 := strconv.ParseUint(val, 10, 32)
				if !ok || err1 != nil || err2 != nil || id == 0 || int(id) > count {
					return cfg, nil, fmt.Errorf("bad votes %q: use ID=V,ID=V", v)
				}
				cfg.Nodes[id-1].Votes = uint32(votes)
			}
			i++
		case a == "expected":
			v, err := value(i, "expected")
			if err != nil {
				return cfg, nil, err
			}
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return cfg, nil, fmt.Errorf("bad expected votes %q", v)
			}
			cfg.ExpectedVotes = uint32(n)
			i++
		case a == "up":
			v, err := value(i, "up")
			if err != nil {
				return cfg, nil, err
			}
			if up, err = parseIDs(v); err != nil {
				return cfg, nil, err
			}
			i++
		default:
			return cfg, nil, fmt.Errorf("unknown option %q", a)
		}
	}
	return cfg, up, nil
}
