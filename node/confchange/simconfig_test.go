package confchange

import (
	"fmt"
	"strconv"
	"strings"
)

// The simulator's configuration data: text lines
//
//	members 1=1 2=1 3=0
//	note add 3
//	parent 1a2b3c4d...
//
// members gives ids and votes; note is the change that made this version
// (it labels values in the scenario output); parent is the digest of the
// version it was built on, so the tests can check that every committed
// version was built on the committed version before it.

type simData struct {
	members Votes
	note    string
	parent  string
}

func parseSimData(data []byte) (simData, error) {
	var d simData
	for _, line := range strings.Split(string(data), "\n") {
		key, rest, _ := strings.Cut(line, " ")
		switch key {
		case "members":
			d.members = Votes{}
			for _, f := range strings.Fields(rest) {
				ids, vs, ok := strings.Cut(f, "=")
				id, err1 := strconv.ParseUint(ids, 10, 32)
				v, err2 := strconv.ParseUint(vs, 10, 32)
				if !ok || err1 != nil || err2 != nil {
					return d, fmt.Errorf("bad member %q", f)
				}
				if _, dup := d.members[NodeID(id)]; dup {
					return d, fmt.Errorf("member %d twice", id)
				}
				d.members[NodeID(id)] = uint32(v)
			}
		case "note":
			d.note = rest
		case "parent":
			d.parent = rest
		case "":
		default:
			return d, fmt.Errorf("unknown line %q", line)
		}
	}
	if d.members == nil {
		return d, fmt.Errorf("no members line")
	}
	return d, nil
}

func simMembers(data []byte) (Votes, error) {
	d, err := parseSimData(data)
	return d.members, err
}

func (d simData) encode() []byte {
	var b strings.Builder
	b.WriteString("members")
	for _, id := range d.members.IDs() {
		fmt.Fprintf(&b, " %d=%d", id, d.members[id])
	}
	fmt.Fprintf(&b, "\nnote %s\n", d.note)
	if d.parent != "" {
		fmt.Fprintf(&b, "parent %s\n", d.parent)
	}
	return []byte(b.String())
}

// applyChange edits a configuration by a change description: ops
// separated by ", ": "add 4", "add 4 votes 2", "add 4 learner",
// "remove 3", "votes 2 3", or "note ANYTHING" (no member change).
func applyChange(base Config, change string) ([]byte, error) {
	d, err := parseSimData(base.Data)
	if err != nil {
		return nil, err
	}
	d.members = d.members.clone()
	for _, op := range strings.Split(change, ", ") {
		f := strings.Fields(op)
		num := func(i int) (uint64, error) {
			if i >= len(f) {
				return 0, fmt.Errorf("change %q: missing number", op)
			}
			return strconv.ParseUint(strings.TrimPrefix(f[i], "node"), 10, 32)
		}
		if len(f) == 0 {
			return nil, fmt.Errorf("empty change")
		}
		switch f[0] {
		case "add":
			id, err := num(1)
			if err != nil {
				return nil, err
			}
			votes := uint64(1)
			if len(f) >= 3 && f[2] == "learner" {
				votes = 0
			} else if len(f) >= 4 && f[2] == "votes" {
				if votes, err = num(3); err != nil {
					return nil, err
				}
			}
			d.members[NodeID(id)] = uint32(votes)
		case "remove":
			id, err := num(1)
			if err != nil {
				return nil, err
			}
			delete(d.members, NodeID(id))
		case "votes":
			id, err := num(1)
			if err != nil {
				return nil, err
			}
			v, err := num(2)
			if err != nil {
				return nil, err
			}
			d.members[NodeID(id)] = uint32(v)
		case "note":
		default:
			return nil, fmt.Errorf("unknown change %q", op)
		}
	}
	d.note = change
	d.parent = fmt.Sprintf("%x", base.Digest[:])
	return d.encode(), nil
}

// label describes a configuration for scenario output: v2 "add 4".
func label(c Config) string {
	if c.IsZero() {
		return "-"
	}
	d, err := parseSimData(c.Data)
	if err != nil {
		return fmt.Sprintf("v%d <%v>", c.Version, err)
	}
	return fmt.Sprintf("v%d %q", c.Version, d.note)
}

func votesString(v Votes) string {
	var parts []string
	for _, id := range v.IDs() {
		parts = append(parts, fmt.Sprintf("%d:%d", id, v[id]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}
