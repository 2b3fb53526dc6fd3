// Package migratebench measures live migration of synthetic guests on
// loopback: total time, downtime, rounds and bytes sent for guests of
// several sizes, dirty rates, write patterns and contents, over QUIC and
// TCP in the same run, with medians over repetitions.
//
// Source and destination run in this one process (each side of a real
// migration runs inside the process that owns the guest's memory; here
// both owners share it), over loopback with the real transports and TLS.
// After each migration the destination's guest is the next source, so a
// guest's memory is written once per configuration, not per repetition.
package migratebench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/paddock-io/paddock/migrate"
)

// Config of a run.
type Config struct {
	SizesBytes         []int64
	DirtyBytesPerSec   []int64
	Patterns           []string // migrate.SynthPatterns: uniform, hotset, sequential
	Contents           []string // random, halfzero
	Transports         []string // quic, tcp
	Reps               int
	Streams            int
	DowntimeLimit      time.Duration
	Timeout            time.Duration // per migration
	LinkBytesPerSecond float64       // the floor's link: RAM / this
	// VerifyRAM: both sides rehash all of RAM inside the pause for the
	// digest (migrate.SourceOptions.VerifyRAM, DestOptions.VerifyRAM).
	VerifyRAM bool
	// HugePages puts both sides' RAM on 2 MiB huge pages from the
	// hugetlb pool (migrate.NewHugeMemory), which must hold twice the
	// largest size. WarmPool first touches every free page of the pool
	// once, as a host that has run guests before has: on a VM whose host
	// backs memory lazily, the first touch of a page is the host's fault.
	HugePages bool
	WarmPool  bool
	Log       io.Writer
}

// DefaultConfig is the whole matrix of the issue.
func DefaultConfig() Config {
	return Config{
		SizesBytes:         []int64{1 << 30, 2 << 30, 4 << 30},
		DirtyBytesPerSec:   []int64{0, 50e6, 200e6},
		Patterns:           []string{"uniform", "hotset"},
		Contents:           []string{"random", "halfzero"},
		Transports:         []string{migrate.TransportQUIC, migrate.TransportTCP},
		Reps:               3,
		Streams:            8,
		DowntimeLimit:      migrate.DefaultDowntimeLimit,
		Timeout:            2 * time.Minute,
		LinkBytesPerSecond: 1.25e9, // 10 GbE
	}
}

// Row is one configuration's medians.
type Row struct {
	RAMBytes         int64    `json:"ram_bytes"`
	Content          string   `json:"content"`
	Pattern          string   `json:"pattern"`
	DirtyBytesPerSec int64    `json:"dirty_bytes_per_second"`
	Transport        string   `json:"transport"`
	Reps             int      `json:"reps"`
	Failed           int      `json:"failed"` // migrations that did not complete
	TotalMs          float64  `json:"total_ms"`
	DowntimeMs       float64  `json:"downtime_ms"`
	Rounds           float64  `json:"rounds"`
	SentBytes        float64  `json:"sent_bytes"`
	ThrottlePercent  float64  `json:"throttle_percent"`
	FloorMs          float64  `json:"floor_ms"` // RAM / link rate
	Errors           []string `json:"errors,omitempty"`
}

// Result is a run.
type Result struct {
	Config Config `json:"-"`
	Rows   []Row  `json:"rows"`
}

type sample struct {
	st  *migrate.Stats
	err error
}

// Run runs the matrix.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Reps < 1 || cfg.Streams < 1 || len(cfg.Transports) == 0 {
		return nil, fmt.Errorf("migratebench: need reps, streams and transports")
	}
	for _, p := range cfg.Patterns {
		// Refused before the first guest is built, not after a
		// first configuration ran.
		if !slices.Contains(migrate.SynthPatterns, p) {
			return nil, fmt.Errorf("migratebench: pattern %q, want %s", p, strings.Join(migrate.SynthPatterns, ", "))
		}
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	ca, err := migrate.NewSelfSignedCA()
	if err != nil {
		return nil, err
	}
	srcID, err := ca.Identity("bench-source", "localhost", "127.0.0.1")
	if err != nil {
		return nil, err
	}
	dstID, err := ca.Identity("bench-destination", "localhost", "127.0.0.1")
	if err != nil {
		return nil, err
	}
	if cfg.HugePages && cfg.WarmPool {
		start := time.Now()
		n, err := migrate.WarmHugePool()
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(cfg.Log, "warmed %d MiB of the hugetlb pool in %v\n", n>>20, time.Since(start).Round(time.Millisecond))
	}
	res := &Result{Config: cfg}
	for _, size := range cfg.SizesBytes {
		for _, content := range cfg.Contents {
			for _, pattern := range cfg.Patterns {
				for _, rate := range cfg.DirtyBytesPerSec {
					rows, err := runConfig(ctx, cfg, srcID, dstID, migrate.SynthConfig{
						RAMBytes: size, DirtyBytesPerSecond: rate, Pattern: pattern, Content: content, Seed: uint64(size) ^ uint64(rate),
						HugePages: cfg.HugePages,
					})
					if err != nil {
						return res, err
					}
					res.Rows = append(res.Rows, rows...)
				}
			}
		}
	}
	return res, nil
}

// runConfig migrates one guest back and forth, reps times per transport,
// the transports interleaved.
func runConfig(ctx context.Context, cfg Config, srcID, dstID migrate.TLSIdentity, sc migrate.SynthConfig) ([]Row, error) {
	g, err := migrate.NewSynthGuest("bench", sc)
	if err != nil {
		return nil, err
	}
	defer func() { g.Close() }()
	g.Resume()
	samples := map[string][]sample{}
	for rep := 0; rep < cfg.Reps; rep++ {
		for _, tr := range cfg.Transports {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			// Let the workload run a moment on its new host first.
			time.Sleep(200 * time.Millisecond)
			st, next, err := migrateOnce(ctx, cfg, srcID, dstID, g, tr)
			samples[tr] = append(samples[tr], sample{st, err})
			fmt.Fprintf(cfg.Log, "%s %s %s %d MB/s %s rep %d: ", sizeName(sc.RAMBytes), sc.Content, sc.Pattern, sc.DirtyBytesPerSecond/1e6, tr, rep+1)
			if err != nil {
				fmt.Fprintf(cfg.Log, "%v\n", err)
			} else {
				fmt.Fprintf(cfg.Log, "%.0f ms, downtime %.1f ms, %d rounds, %s sent, throttle %d%%\n",
					st.TotalTimeMs, st.DowntimeMs, st.Rounds, sizeName(int64(st.TransferredBytes)), st.ThrottlePercent)
			}
			if next != nil {
				g.Close()
				g = next
			}
		}
	}
	var rows []Row
	for _, tr := range cfg.Transports {
		r := Row{RAMBytes: sc.RAMBytes, Content: sc.Content, Pattern: sc.Pattern, DirtyBytesPerSec: sc.DirtyBytesPerSecond,
			Transport: tr, Reps: cfg.Reps, FloorMs: float64(sc.RAMBytes) / cfg.LinkBytesPerSecond * 1000}
		var total, down, rounds, sent, thr []float64
		for _, s := range samples[tr] {
			if s.err != nil {
				r.Failed++
				r.Errors = append(r.Errors, s.err.Error())
				continue
			}
			total = append(total, s.st.TotalTimeMs)
			down = append(down, s.st.DowntimeMs)
			rounds = append(rounds, float64(s.st.Rounds))
			sent = append(sent, float64(s.st.TransferredBytes))
			thr = append(thr, float64(s.st.ThrottlePercent))
		}
		r.TotalMs, r.DowntimeMs, r.Rounds, r.SentBytes, r.ThrottlePercent = median(total), median(down), median(rounds), median(sent), median(thr)
		rows = append(rows, r)
	}
	return rows, nil
}

// migrateOnce moves g to a new destination over tr and returns the
// destination's guest (nil if the migration failed and g still runs).
func migrateOnce(ctx context.Context, cfg Config, srcID, dstID migrate.TLSIdentity, g *migrate.SynthGuest, tr string) (*migrate.Stats, *migrate.SynthGuest, error) {
	l, err := migrate.Listen(tr, "127.0.0.1:0", dstID)
	if err != nil {
		return nil, nil, err
	}
	defer l.Close()
	var (
		mem  *migrate.Memory
		next *migrate.SynthGuest
		derr error
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, derr = migrate.Receive(ctx, l, migrate.DestOptions{
			VerifyRAM: cfg.VerifyRAM,
			PrepareRAM: func(n int64) ([]byte, error) {
				newMem := migrate.NewMemory
				if cfg.HugePages {
					newMem = migrate.NewHugeMemory
				}
				m, err := newMem("bench-incoming", n)
				mem = m
				if err != nil {
					return nil, err
				}
				return m.Bytes(), nil
			},
			Discard: func() { mem.Close() },
			Resume: func(state []byte) error {
				g, err := migrate.RestoreSynthGuest(mem, state)
				if err != nil {
					return err
				}
				next = g
				return g.Resume()
			},
		})
	}()
	dial := func(ctx context.Context, n int) (migrate.Conn, error) {
		return migrate.Dial(ctx, tr, l.Addr().String(), "localhost", srcID, n)
	}
	conn, err := dial(ctx, cfg.Streams)
	if err != nil {
		l.Close()
		wg.Wait()
		return nil, nil, err
	}
	tracker, err := g.NewTracker()
	if err != nil {
		conn.Abort("")
		l.Close()
		wg.Wait()
		return nil, nil, err
	}
	st, err := migrate.Migrate(ctx, g, tracker, conn, migrate.SourceOptions{
		Compression:   migrate.CompressAuto,
		VerifyRAM:     cfg.VerifyRAM,
		DowntimeLimit: cfg.DowntimeLimit,
		Timeout:       cfg.Timeout,
		Redial:        func(ctx context.Context) (migrate.Conn, error) { return dial(ctx, 1) },
	})
	g.CloseTracker(tracker)
	wg.Wait()
	if err != nil {
		return st, nil, err
	}
	if derr != nil {
		return st, next, fmt.Errorf("destination: %w", derr)
	}
	return st, next, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func sizeName(b int64) string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", b>>30)
	case b >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%d B", b)
}

// Markdown renders the table.
func (r *Result) Markdown(command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Command: `%s`\n\n", command)
	if r.Config.HugePages {
		warm := "not warmed first"
		if r.Config.WarmPool {
			warm = "every free page of the pool touched once before the run"
		}
		fmt.Fprintf(&b, "Guest RAM on 2 MiB huge pages (hugetlb pool; %s).\n\n", warm)
	}
	fmt.Fprintf(&b, "| RAM | content | pattern | dirty MB/s | transport | total ms | downtime ms | rounds | sent MiB | throttle %% | floor ms | total / floor | RAM GB/s | failed |\n")
	fmt.Fprintf(&b, "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.Rows {
		ratio, gbps := 0.0, 0.0
		if x.TotalMs > 0 {
			ratio = x.TotalMs / x.FloorMs
			gbps = float64(x.RAMBytes) / (x.TotalMs / 1000) / 1e9
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %.0f | %.1f | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %d/%d |\n",
			sizeName(x.RAMBytes), x.Content, x.Pattern, x.DirtyBytesPerSec/1e6, x.Transport, x.TotalMs, x.DowntimeMs,
			x.Rounds, x.SentBytes/(1<<20), x.ThrottlePercent, x.FloorMs, ratio, gbps, x.Failed, x.Reps)
	}
	return b.String()
}

// JSON renders the rows.
func (r *Result) JSON() string {
	b, _ := json.MarshalIndent(r.Rows, "", "  ")
	return string(b)
}
