package fence

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestHistoryRing(t *testing.T) {
	h := NewHistory(3)
	for i := 1; i <= 5; i++ {
		r := ResultOK
		if i%2 == 0 {
			r = ResultFailed
		}
		h.Add(HistoryEntry{TimeMs: int64(i), Target: fmt.Sprintf("n%d", i), Method: MethodAgent, Result: r})
	}
	es := h.Entries()
	if len(es) != 3 || es[0].TimeMs != 3 || es[2].TimeMs != 5 {
		t.Fatalf("entries %+v; want times 3,4,5", es)
	}
	if h.Dropped() != 2 {
		t.Errorf("dropped %d", h.Dropped())
	}
	c := h.Counts()
	if len(c) != 2 || c[0].Result != ResultFailed || c[0].Count != 2 || c[1].Count != 3 {
		t.Errorf("counts %+v; want failed 2, ok 3 (counters do not wrap with the ring)", c)
	}
	if _, ok := h.Last("n1"); ok {
		t.Error("n1 should have left the ring")
	}
	if e, ok := h.Last("n4"); !ok || e.Result != ResultFailed {
		t.Errorf("last n4: %+v %v", e, ok)
	}
	j, err := json.Marshal(es)
	if err != nil || !strings.Contains(string(j), `"method":"agent"`) {
		t.Errorf("json %s %v", j, err)
	}
	var nilH *History
	nilH.Add(HistoryEntry{})
	if nilH.Entries() != nil || nilH.Counts() != nil {
		t.Error("nil history not empty")
	}
	h.Add(HistoryEntry{Error: strings.Repeat("x", 10_000)})
	if e := h.Entries()[2]; len(e.Error) > maxHistoryErrorBytes+3 {
		t.Errorf("error of %d bytes kept", len(e.Error))
	}
}
