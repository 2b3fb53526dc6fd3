package migrate

import (
	"testing"
	"time"
)

func TestConvergenceTable(t *testing.T) {
	const MiB = 1 << 20
	ms := time.Millisecond
	type step struct {
		m        RoundMeasure
		action   Action
		throttle int
	}
	cfg := ConvergenceConfig{DowntimeLimit: 100 * ms, MaxRounds: 10, Timeout: time.Minute, AutoConverge: true}
	cases := []struct {
		name  string
		cfg   ConvergenceConfig
		steps []step
	}{
		{"idle guest switches over after the bulk pass", cfg, []step{
			{RoundMeasure{Round: 0, SentBytes: 1024 * MiB, Duration: time.Second, DirtyBytes: 0}, ActionSwitchover, 0},
		}},
		{"small remainder fits the downtime", cfg, []step{
			// 1000 MiB/s: 50 MiB take 50 ms.
			{RoundMeasure{Round: 0, SentBytes: 1000 * MiB, Duration: time.Second, DirtyBytes: 50 * MiB}, ActionSwitchover, 0},
		}},
		{"exactly at the limit switches over", cfg, []step{
			{RoundMeasure{Round: 0, SentBytes: 1000 * MiB, Duration: time.Second, DirtyBytes: 100 * MiB}, ActionSwitchover, 0},
		}},
		{"remainder too large continues, then converges", cfg, []step{
			{RoundMeasure{Round: 0, SentBytes: 1000 * MiB, Duration: time.Second, DirtyBytes: 200 * MiB}, ActionContinue, 0},
			{RoundMeasure{Round: 1, SentBytes: 200 * MiB, Duration: 200 * ms, DirtyBytes: 40 * MiB, Elapsed: 1200 * ms}, ActionSwitchover, 0},
		}},
		{"the final collect counts against the downtime", cfg, []step{
			// 80 ms of data fit 100 ms, with the 30 ms collect they do not.
			{RoundMeasure{Round: 0, SentBytes: 1000 * MiB, Duration: time.Second, DirtyBytes: 80 * MiB, CollectTime: 30 * ms}, ActionContinue, 0},
			{RoundMeasure{Round: 1, SentBytes: 80 * MiB, Duration: 80 * ms, DirtyBytes: 60 * MiB, CollectTime: 30 * ms}, ActionSwitchover, 0},
		}},
		{"tiny rounds keep the last bandwidth estimate", cfg, []step{
			{RoundMeasure{Round: 0, SentBytes: 1000 * MiB, Duration: time.Second, DirtyBytes: 200 * MiB}, ActionContinue, 0},
			// 4 KiB in 50 ms would say 80 KB/s; the estimate stays 1000 MiB/s.
			{RoundMeasure{Round: 1, SentBytes: 4096, Duration: 50 * ms, DirtyBytes: 90 * MiB}, ActionSwitchover, 0},
		}},
		{"unknown bandwidth never switches over with data left", cfg, []step{
			{RoundMeasure{Round: 0, SentBytes: 4096, Duration: ms, DirtyBytes: 4096}, ActionContinue, 0},
		}},
		{"auto-converge: two high rounds throttle 20, then +10 each two", cfg, []step{
			{RoundMeasure{Round: 0, SentBytes: 100 * MiB, Duration: time.Second, DirtyBytes: 60 * MiB}, ActionContinue, 0},
			{RoundMeasure{Round: 1, SentBytes: 60 * MiB, Duration: 600 * ms, DirtyBytes: 40 * MiB}, ActionContinue, 20},
			{RoundMeasure{Round: 2, SentBytes: 40 * MiB, Duration: 400 * ms, DirtyBytes: 30 * MiB}, ActionContinue, 20},
			{RoundMeasure{Round: 3, SentBytes: 30 * MiB, Duration: 300 * ms, DirtyBytes: 20 * MiB}, ActionContinue, 30},
			{RoundMeasure{Round: 4, SentBytes: 20 * MiB, Duration: 200 * ms, DirtyBytes: 5 * MiB}, ActionSwitchover, 30},
		}},
		{"a low round resets the count", cfg, []step{
			{RoundMeasure{Round: 0, SentBytes: 100 * MiB, Duration: time.Second, DirtyBytes: 60 * MiB}, ActionContinue, 0},
			{RoundMeasure{Round: 1, SentBytes: 60 * MiB, Duration: 600 * ms, DirtyBytes: 20 * MiB}, ActionContinue, 0},
			{RoundMeasure{Round: 2, SentBytes: 20 * MiB, Duration: 200 * ms, DirtyBytes: 15 * MiB}, ActionContinue, 0},
		}},
		{"without auto-converge, max rounds cancels", ConvergenceConfig{DowntimeLimit: 100 * ms, MaxRounds: 3, AutoConverge: false}, []step{
			{RoundMeasure{Round: 0, SentBytes: 100 * MiB, Duration: time.Second, DirtyBytes: 90 * MiB}, ActionContinue, 0},
			{RoundMeasure{Round: 1, SentBytes: 90 * MiB, Duration: 900 * ms, DirtyBytes: 90 * MiB}, ActionContinue, 0},
			{RoundMeasure{Round: 2, SentBytes: 90 * MiB, Duration: 900 * ms, DirtyBytes: 90 * MiB}, ActionCancel, 0},
		}},
		{"timeout cancels", cfg, []step{
			{RoundMeasure{Round: 0, SentBytes: 100 * MiB, Duration: time.Second, DirtyBytes: 90 * MiB, Elapsed: time.Minute}, ActionCancel, 0},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conv, err := NewConvergence(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range c.steps {
				d := conv.Next(s.m)
				if d.Action != s.action || d.ThrottlePercent != s.throttle {
					t.Fatalf("step %d: got %s throttle %d (%+v), want %s throttle %d", i, d.Action, d.ThrottlePercent, d, s.action, s.throttle)
				}
				if d.Action == ActionCancel && d.Reason == "" {
					t.Fatalf("step %d: cancel without a reason", i)
				}
			}
		})
	}
}

func TestConvergenceThrottleCapsAt99(t *testing.T) {
	conv, _ := NewConvergence(ConvergenceConfig{DowntimeLimit: time.Millisecond, MaxRounds: MaxRoundsLimit, AutoConverge: true})
	var d Decision
	for r := range 40 {
		d = conv.Next(RoundMeasure{Round: r, SentBytes: 100 << 20, Duration: time.Second, DirtyBytes: 90 << 20})
	}
	if d.Action != ActionContinue || d.ThrottlePercent != ThrottleMaxPercent {
		t.Fatalf("after 40 high rounds: %+v, want continue at %d%%", d, ThrottleMaxPercent)
	}
}

func TestConvergenceConfigLimits(t *testing.T) {
	for _, cfg := range []ConvergenceConfig{
		{DowntimeLimit: 0, MaxRounds: 1},
		{DowntimeLimit: time.Millisecond, MaxRounds: 0},
		{DowntimeLimit: time.Millisecond, MaxRounds: MaxRoundsLimit + 1},
		{DowntimeLimit: time.Millisecond, MaxRounds: 1, Timeout: -1},
	} {
		if _, err := NewConvergence(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}
