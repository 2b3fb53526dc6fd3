package confchange

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// TestScenarios runs the scripts in testdata/*.txt against the simulator.
// Commands (node ids are numbers; a filter is "a->b" with ids or *):
//
//	cluster 1=1 2=1 3=2 [spare 4 5]   version 1 with these votes; spares start joining
//	propose N "CHANGE" [inquorate] [base=V]
//	                                  CHANGE: "add 4", "add 4 votes 2", "add 4 learner",
//	                                  "remove 3", "votes 2 3", "note TEXT", joined by ", "
//	deliver [all | FILTER] [type=T] [reverse] [quiet]
//	                                  all: until nothing is pending; a filter: one pass
//	                                  over what is pending now (replies stay pending)
//	drop FILTER [type=T]              lose pending messages
//	dup FILTER [type=T]               duplicate pending messages (copies go last)
//	hold FILTER [type=T]              delay: deliver skips them until release
//	release [FILTER]
//	partition 1,2|3                   messages across the cut are lost; heal ends it
//	cut FILTER [type=T]               messages on that link are lost from now on
//	mend FILTER [type=T]              undo a cut (heal undoes all)
//	crash N [before-persist | before-send]
//	                                  now, or at N's next output at that point
//	restart N                         from what N persisted
//	tick [K] [only=1,2]               K ticks on every live node (or those)
//	gossip                            every live node hears the others' versions
//	print                             each node's state and the pending messages
func TestScenarios(t *testing.T) {
	paths, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) { runScenario(t, path) })
	}
}

func runScenario(t *testing.T, path string) {
	var b strings.Builder
	s := newSim(&b)
	datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
		b.Reset()
		if err := runCommand(s, d); err != nil {
			return "error: " + err.Error() + "\n"
		}
		out := b.String()
		if out == "" {
			out = "ok\n"
		}
		return out
	})
	if len(s.violations) > 0 {
		t.Errorf("%s: safety violations: %v", path, s.violations)
	}
}

// words splits the directive after the command, keeping quoted strings.
func words(d *datadriven.TestData) []string {
	line := strings.TrimSpace(strings.TrimPrefix(d.FullCmd(), d.Cmd))
	var out []string
	for line != "" {
		if line[0] == '"' {
			end := strings.IndexByte(line[1:], '"')
			if end < 0 {
				out = append(out, line[1:])
				break
			}
			out = append(out, line[1:end+1])
			line = strings.TrimSpace(line[end+2:])
			continue
		}
		w, rest, _ := strings.Cut(line, " ")
		out = append(out, w)
		line = strings.TrimSpace(rest)
	}
	return out
}

func parseID(w string) (NodeID, error) {
	id, err := strconv.ParseUint(strings.TrimPrefix(w, "n"), 10, 32)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("bad node id %q", w)
	}
	return NodeID(id), nil
}

func parseIDs(w string) ([]NodeID, error) {
	var ids []NodeID
	for _, f := range strings.Split(w, ",") {
		id, err := parseID(f)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// netArgs reads a filter, type=, reverse and quiet.
type netArgs struct {
	filter, typ    string
	reverse, quiet bool
}

func parseNetArgs(ws []string) netArgs {
	var a netArgs
	for _, w := range ws {
		switch {
		case strings.HasPrefix(w, "type="):
			a.typ = strings.TrimPrefix(w, "type=")
		case w == "reverse":
			a.reverse = true
		case w == "quiet":
			a.quiet = true
		default:
			a.filter = w
		}
	}
	return a
}

func runCommand(s *sim, d *datadriven.TestData) error {
	ws := words(d)
	switch d.Cmd {
	case "cluster":
		members := Votes{}
		var spares []NodeID
		for i := 0; i < len(ws); i++ {
			if ws[i] == "spare" {
				for _, w := range ws[i+1:] {
					id, err := parseID(w)
					if err != nil {
						return err
					}
					spares = append(spares, id)
				}
				break
			}
			ids, vs, ok := strings.Cut(ws[i], "=")
			id, err := parseID(ids)
			v, err2 := strconv.ParseUint(vs, 10, 32)
			if !ok || err != nil || err2 != nil {
				return fmt.Errorf("bad member %q", ws[i])
			}
			members[id] = uint32(v)
		}
		hs := Bootstrap(simData{members: members, note: "initial"}.encode())
		for _, id := range members.IDs() {
			if err := s.addNode(id, hs); err != nil {
				return err
			}
		}
		for _, id := range spares {
			if err := s.addNode(id, Joining()); err != nil {
				return err
			}
		}
		s.printf("%s", s.status())
	case "propose":
		if len(ws) < 2 {
			return fmt.Errorf("propose N \"CHANGE\"")
		}
		id, err := parseID(ws[0])
		if err != nil {
			return err
		}
		quorate, base := true, int64(-1)
		for _, w := range ws[2:] {
			switch {
			case w == "inquorate":
				quorate = false
			case strings.HasPrefix(w, "base="):
				if base, err = strconv.ParseInt(strings.TrimPrefix(w, "base="), 10, 64); err != nil {
					return err
				}
			default:
				return fmt.Errorf("unknown argument %q", w)
			}
		}
		s.propose(id, ws[1], quorate, base)
	case "deliver":
		a := parseNetArgs(ws)
		if a.filter == "all" && a.typ == "" && !a.reverse {
			s.deliverAll(!a.quiet, 10000)
		} else if s.deliverPass(a.filter, a.typ, a.reverse, !a.quiet) == 0 {
			s.printf("nothing to deliver\n")
		}
	case "drop", "dup", "hold", "release":
		a := parseNetArgs(ws)
		var keep, copies []envelope
		k := 0
		for _, e := range s.net {
			m := match(e, a.filter, a.typ)
			switch {
			case m && d.Cmd == "drop":
				k++
				continue
			case m && d.Cmd == "dup":
				k++
				copies = append(copies, e)
			case m && d.Cmd == "hold" && !e.held:
				k++
				e.held = true
			case m && d.Cmd == "release" && e.held:
				k++
				e.held = false
			}
			keep = append(keep, e)
		}
		s.net = append(keep, copies...)
		s.printf("%s %d message(s)\n", d.Cmd, k)
	case "partition":
		if len(ws) != 1 {
			return fmt.Errorf("partition 1,2|3")
		}
		s.group = map[NodeID]int{}
		for g, part := range strings.Split(ws[0], "|") {
			ids, err := parseIDs(part)
			if err != nil {
				return err
			}
			for _, id := range ids {
				s.group[id] = g + 1
			}
		}
	case "heal":
		s.group = nil
		s.cuts = nil
	case "cut":
		s.cuts = append(s.cuts, parseNetArgs(ws))
	case "mend":
		a := parseNetArgs(ws)
		var keep []netArgs
		for _, c := range s.cuts {
			if c != a {
				keep = append(keep, c)
			}
		}
		s.cuts = keep
	case "crash":
		if len(ws) < 1 {
			return fmt.Errorf("crash N")
		}
		id, err := parseID(ws[0])
		if err != nil {
			return err
		}
		sn := s.nodes[id]
		if sn == nil {
			return fmt.Errorf("no node %d", id)
		}
		switch {
		case len(ws) == 1:
			s.crash(id)
		case ws[1] == "before-persist":
			sn.crashAt = crashBeforePersist
		case ws[1] == "before-send":
			sn.crashAt = crashBeforeSend
		default:
			return fmt.Errorf("crash N [before-persist|before-send]")
		}
	case "restart":
		if len(ws) != 1 {
			return fmt.Errorf("restart N")
		}
		id, err := parseID(ws[0])
		if err != nil {
			return err
		}
		if err := s.restart(id); err != nil {
			return err
		}
	case "tick":
		k := 1
		var only []NodeID
		for _, w := range ws {
			if strings.HasPrefix(w, "only=") {
				ids, err := parseIDs(strings.TrimPrefix(w, "only="))
				if err != nil {
					return err
				}
				only = ids
				continue
			}
			v, err := strconv.Atoi(w)
			if err != nil {
				return fmt.Errorf("bad tick count %q", w)
			}
			k = v
		}
		if only == nil {
			only = s.ids()
		}
		for i := 0; i < k; i++ {
			for _, id := range only {
				s.tick(id)
			}
		}
	case "gossip":
		s.gossip()
	case "print":
		s.printf("%s", s.status())
	default:
		return fmt.Errorf("unknown command %q", d.Cmd)
	}
	return nil
}
