package fence

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"pgregory.net/rapid"
)

// scripted is a fake world for Fencer: devices answer from a table, time
// moves only when a device "takes" time or the fencer sleeps.
type scripted struct {
	mu      sync.Mutex
	nowMs   int64
	slept   []int64
	shots   []string
	answers map[string]error // device name -> error (nil = verified off)
	costMs  int64
}

func (s *scripted) fencer(h *History) *Fencer {
	return &Fencer{
		Shoot: func(ctx context.Context, target string, dev Device) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.shots = append(s.shots, dev.Name)
			s.nowMs += s.costMs
			if err, ok := s.answers[dev.Name]; ok {
				return err
			}
			return fmt.Errorf("no answer scripted for %s", dev.Name)
		},
		NowMs: func() int64 { s.mu.Lock(); defer s.mu.Unlock(); return s.nowMs },
		Sleep: func(ctx context.Context, ms int64) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.slept = append(s.slept, ms)
			s.nowMs += ms
			return nil
		},
		RandMs:  func(n int64) int64 { return n - 1 },
		History: h,
	}
}

func dev(name string) Device { return Device{Name: name, Agent: "fence_scripted"} }

func plan(levels ...[]string) Plan {
	p := Plan{Target: "n2", TotalTimeoutMs: 60_000}
	for _, l := range levels {
		var lv Level
		for _, n := range l {
			lv.Devices = append(lv.Devices, dev(n))
		}
		p.Levels = append(p.Levels, lv)
	}
	return p
}

func TestLevels(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name      string
		plan      Plan
		answers   map[string]error
		wantOK    bool
		wantLevel int
		wantShots string
	}{
		{"first level", plan([]string{"ipmi"}, []string{"pdu"}), map[string]error{"ipmi": nil, "pdu": nil}, true, 1, "ipmi"},
		{"fall through", plan([]string{"ipmi"}, []string{"pdu"}), map[string]error{"ipmi": boom, "pdu": nil}, true, 2, "ipmi,pdu"},
		{"every device of a level", plan([]string{"pdu-a", "pdu-b"}, []string{"ipmi"}), map[string]error{"pdu-a": nil, "pdu-b": boom, "ipmi": nil}, true, 2, "pdu-a,pdu-b,ipmi"},
		{"first failure ends the level", plan([]string{"pdu-a", "pdu-b"}, []string{"ipmi"}), map[string]error{"pdu-a": boom, "pdu-b": nil, "ipmi": nil}, true, 2, "pdu-a,ipmi"},
		{"both devices", plan([]string{"pdu-a", "pdu-b"}), map[string]error{"pdu-a": nil, "pdu-b": nil}, true, 1, "pdu-a,pdu-b"},
		{"all fail", plan([]string{"ipmi"}, []string{"pdu"}), map[string]error{"ipmi": boom, "pdu": ErrNotOff}, false, 0, "ipmi,pdu"},
		{"timeout is failure", plan([]string{"ipmi"}), map[string]error{"ipmi": fmt.Errorf("x: %w", ErrTimeout)}, false, 0, "ipmi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &scripted{answers: tc.answers, costMs: 10}
			h := NewHistory(0)
			out, err := s.fencer(h).Fence(context.Background(), tc.plan)
			if out.OK != tc.wantOK || (err == nil) != tc.wantOK || out.Level != tc.wantLevel {
				t.Fatalf("ok %v level %d err %v; want ok %v level %d", out.OK, out.Level, err, tc.wantOK, tc.wantLevel)
			}
			if !tc.wantOK && !errors.Is(err, ErrFenceFailed) {
				t.Errorf("err %v does not wrap ErrFenceFailed", err)
			}
			if got := strings.Join(s.shots, ","); got != tc.wantShots {
				t.Errorf("shots %s; want %s", got, tc.wantShots)
			}
			if len(out.Attempts) != len(s.shots) || len(h.Entries()) != len(s.shots) {
				t.Errorf("%d attempts, %d history entries for %d shots", len(out.Attempts), len(h.Entries()), len(s.shots))
			}
			for i, e := range h.Entries() {
				a := out.Attempts[i]
				if e.Device != a.Device || e.Level != a.Level || e.Result != a.Result || e.Target != "n2" || e.Method != MethodAgent {
					t.Errorf("history %+v does not match attempt %+v", e, a)
				}
			}
			if tc.name == "timeout is failure" && out.Attempts[0].Result != ResultTimeout {
				t.Errorf("attempt %+v; want result timeout", out.Attempts[0])
			}
		})
	}
}

func TestFenceDelay(t *testing.T) {
	s := &scripted{answers: map[string]error{"ipmi": nil}}
	p := plan([]string{"ipmi"})
	p.DelayBaseMs, p.DelayMaxMs = 5_000, 15_000
	out, err := s.fencer(nil).Fence(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	// RandMs returns n-1: the largest delay.
	if out.DelayMs != 15_000 || len(s.slept) != 1 || s.slept[0] != 15_000 {
		t.Fatalf("delay %d slept %v; want 15000", out.DelayMs, s.slept)
	}
	if out.DurationMs != 15_000 {
		t.Errorf("duration %d; want the delay on the fake clock", out.DurationMs)
	}
}

func TestFenceDelayMsBounds(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		base := rapid.Int64Range(0, maxDelayMs).Draw(t, "base")
		maxMs := rapid.Int64Range(0, maxDelayMs).Draw(t, "max")
		pick := rapid.Int64Range(-5, maxDelayMs+5).Draw(t, "pick")
		d := FenceDelayMs(base, maxMs, func(n int64) int64 {
			if n <= 0 {
				t.Fatalf("randMs(%d)", n)
			}
			return pick % (n + 2) // sometimes out of range: a broken source
		})
		if d < base || (maxMs > base && d > maxMs) || (maxMs <= base && d != base) {
			t.Fatalf("delay %d for base %d max %d", d, base, maxMs)
		}
	})
}

func TestFenceTotalTimeout(t *testing.T) {
	s := &scripted{}
	f := s.fencer(nil)
	shots := 0
	f.Shoot = func(ctx context.Context, _ string, _ Device) error {
		shots++
		<-ctx.Done() // a device that hangs until the total timeout
		return context.Cause(ctx)
	}
	p := plan([]string{"hang"}, []string{"never-tried"})
	p.TotalTimeoutMs = 100
	out, err := f.Fence(context.Background(), p)
	if err == nil || out.OK || !errors.Is(err, ErrFenceFailed) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("out %+v err %v; want a failed fence by timeout", out, err)
	}
	if shots != 1 || len(out.Attempts) != 1 || out.Attempts[0].Result != ResultTimeout {
		t.Fatalf("shots %d attempts %+v; want one timed-out attempt and no second level", shots, out.Attempts)
	}
}

func TestFenceLateSuccessIsTimeout(t *testing.T) {
	s := &scripted{}
	f := s.fencer(nil)
	f.Shoot = func(ctx context.Context, _ string, _ Device) error {
		<-ctx.Done()
		return nil // says yes, but too late
	}
	p := plan([]string{"slow"})
	p.TotalTimeoutMs = 50
	if out, err := f.Fence(context.Background(), p); err == nil || out.OK {
		t.Fatalf("late success counted: %+v", out)
	}
}

func TestFenceInProgress(t *testing.T) {
	s := &scripted{}
	f := s.fencer(nil)
	entered, release := make(chan struct{}), make(chan struct{})
	f.Shoot = func(ctx context.Context, _ string, _ Device) error {
		close(entered)
		<-release
		return nil
	}
	done := make(chan error)
	go func() { _, err := f.Fence(context.Background(), plan([]string{"a"})); done <- err }()
	<-entered
	if _, err := f.Fence(context.Background(), plan([]string{"a"})); !errors.Is(err, ErrFenceInProgress) {
		t.Errorf("second fence: %v; want ErrFenceInProgress", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestPlanValidate(t *testing.T) {
	bad := []Plan{
		{},
		{Target: "n1"},
		{Target: "n1", Levels: []Level{{}}},
		func() Plan { p := plan([]string{"a"}); p.DelayMaxMs = p.TotalTimeoutMs; return p }(),
		func() Plan { p := plan([]string{"a"}); p.TotalTimeoutMs = -1; return p }(),
		func() Plan { p := plan([]string{"a"}); p.Levels[0].Devices[0].Agent = "a/b"; return p }(),
		plan([]string{"a"}, []string{"a"}, []string{"a"}, []string{"a"}, []string{"a"}, []string{"a"}, []string{"a"}, []string{"a"}, []string{"a"}),
	}
	for i, p := range bad {
		if err := p.Validate(); err == nil {
			t.Errorf("plan %d valid: %+v", i, p)
		}
	}
	if err := plan([]string{"a", "b"}, []string{"c"}).Validate(); err != nil {
		t.Error(err)
	}
}

// TestLevelsWithRealAgents: level 1 is a device that fails (fence_dummy
// type=fail), level 2 one that hangs (a script that sleeps, with a short
// device timeout), level 3 fence_dummy with a status file: the fence
// succeeds at level 3 and the file says off.
func TestLevelsWithRealAgents(t *testing.T) {
	fenceDummy(t)
	r := fastRunner()
	h := NewHistory(8)
	f := NewFencer(r, h, nil)
	good := dummyDevice(t, "dummy-file")
	good.SetParam("password", "not-in-history-9")
	hang := Device{Name: "hang", Agent: writeScript(t, "fence_hang", "exec sleep 300\n"), TimeoutMs: 300}
	failing := NewDevice("dummy-fail", "fence_dummy", map[string]string{"type": "fail", "plug": "n2", "power_timeout": "1"})
	missing := Device{Name: "missing", Agent: "fence_not_installed_here"}
	p := Plan{Target: "n2", TotalTimeoutMs: 60_000, Levels: []Level{
		{Devices: []Device{failing}},
		{Devices: []Device{hang}},
		{Devices: []Device{missing}},
		{Devices: []Device{good}},
	}}
	if _, err := r.PowerOn(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	out, err := f.Fence(context.Background(), p)
	if err != nil || !out.OK || out.Level != 4 {
		t.Fatalf("out %+v err %v; want success at level 4", out, err)
	}
	want := []Result{ResultFailed, ResultTimeout, ResultFailed, ResultOK}
	for i, a := range out.Attempts {
		if a.Result != want[i] {
			t.Errorf("attempt %d %+v; want %s", i, a, want[i])
		}
	}
	b, err := os.ReadFile(good.Params["status_file"])
	if err != nil || strings.TrimSpace(string(b)) != "off" {
		t.Fatalf("status file %q %v; want off", b, err)
	}
	for _, e := range h.Entries() {
		if strings.Contains(fmt.Sprintf("%+v", e), "not-in-history") {
			t.Fatalf("password in history: %+v", e)
		}
	}
	if last, ok := h.Last("n2"); !ok || last.Result != ResultOK || last.Device != "dummy-file" {
		t.Errorf("last history entry %+v", last)
	}
}

// TestAllLevelsFailWithRealAgents: a fence with only broken devices is a
// failure, and a hanging device is cut by the plan's total timeout even
// when its own timeout is longer.
func TestAllLevelsFailWithRealAgents(t *testing.T) {
	hang := Device{Name: "hang", Agent: writeScript(t, "fence_hang", "exec sleep 300\n"), TimeoutMs: 60_000}
	failing := Device{Name: "exit1", Agent: writeScript(t, "fence_exit1", "cat >/dev/null; echo 'Failed: no route to BMC' >&2; exit 1\n")}
	f := NewFencer(fastRunner(), nil, nil)
	p := Plan{Target: "n3", TotalTimeoutMs: 500, Levels: []Level{{Devices: []Device{failing}}, {Devices: []Device{hang}}}}
	out, err := f.Fence(context.Background(), p)
	if err == nil || out.OK || len(out.Attempts) != 2 {
		t.Fatalf("out %+v err %v; want failure after two attempts", out, err)
	}
	if !strings.Contains(out.Attempts[0].Error, "no route to BMC") {
		t.Errorf("attempt error %q does not say why", out.Attempts[0].Error)
	}
	if out.Attempts[1].Result == ResultOK {
		t.Errorf("hanging device counted as success")
	}
}
