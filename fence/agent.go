package fence

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Action is a fence-agent action, passed as action= on the agent's stdin.
type Action string

// The actions of the fence-agents API that paddock uses.
const (
	ActionOff      Action = "off"
	ActionOn       Action = "on"
	ActionReboot   Action = "reboot"
	ActionStatus   Action = "status"
	ActionMonitor  Action = "monitor"
	ActionMetadata Action = "metadata"
)

// Valid reports whether a is one of the actions above.
func (a Action) Valid() bool {
	switch a {
	case ActionOff, ActionOn, ActionReboot, ActionStatus, ActionMonitor, ActionMetadata:
		return true
	}
	return false
}

// Power is what a status call said about the target's power.
type Power string

// Power states. PowerUnknown is the answer of every action but status.
const (
	PowerUnknown Power = ""
	PowerOn      Power = "on"
	PowerOff     Power = "off"
)

// Exit codes of the fence-agents API (doc/FenceAgentAPI.md in
// ClusterLabs/fence-agents): every action exits 0 on success and 1 on
// failure; status and monitor exit 0 for "on/reachable", 2 for "off".
const (
	exitOK     = 0
	exitFailed = 1
	exitOff    = 2
)

// Runner defaults and limits.
const (
	defaultAgentTimeoutMs     = 60_000 // fence_ipmilan's own login+power timeouts add up to ~40 s
	defaultMaxOutputBytes     = 64 << 10
	maxMaxOutputBytes         = 4 << 20
	metadataMaxOutputBytes    = 1 << 20 // fence_ipmilan's metadata is ~25 KiB; leave room
	defaultStatusRetries      = 5
	maxStatusRetries          = 60
	defaultStatusRetryDelayMs = 1_000
	// killWaitMs bounds how long Wait may wait for the agent's output pipes
	// after its process group was killed (a grandchild that left the group
	// could hold them open forever).
	killWaitMs = 2_000
)

// ErrTimeout is wrapped by errors from an agent run that hit its timeout.
// A timeout is a failure, never a success: the agent was killed and nothing
// is known about the target's power.
var ErrTimeout = errors.New("fence agent timed out")

// ErrNotOff is wrapped by PowerOff's error when the agent reported success
// but no following status said off.
var ErrNotOff = errors.New("target not verified off")

// AgentResult is what one run of an agent gave. It holds no secrets: Output
// is scrubbed of every secret value before it is stored.
type AgentResult struct {
	Device          string `json:"device"`
	Agent           string `json:"agent"`
	Action          Action `json:"action"`
	ExitCode        int    `json:"exit_code"` // -1 when killed or not started
	Power           Power  `json:"power,omitempty"`
	TimedOut        bool   `json:"timed_out,omitempty"`
	DurationMs      int64  `json:"duration_ms"`
	Output          string `json:"output,omitempty"` // stdout and stderr, interleaved, bounded, redacted
	OutputTruncated bool   `json:"output_truncated,omitempty"`
}

// AgentRunner runs fence-agents programs. The zero value works with the
// defaults; fields are read-only once in use.
type AgentRunner struct {
	// Dirs are searched, in order, for a bare agent name before $PATH.
	// Default: /usr/sbin, /sbin, /usr/local/sbin (where Debian's
	// fence-agents installs them, and /usr/sbin is often not on a daemon's
	// PATH).
	Dirs []string
	// DefaultTimeoutMs bounds a run when the device sets no timeout.
	DefaultTimeoutMs int64
	// MaxOutputBytes is how much of an agent's output is kept.
	MaxOutputBytes int
	// StatusRetries is how many status calls PowerOff makes after off
	// before it gives up verifying; StatusRetryDelayMs is the pause between.
	StatusRetries      int
	StatusRetryDelayMs int64
	// Logger gets one line per run (device, action, exit code, duration);
	// never parameters or output. Nil means no logging.
	Logger *slog.Logger
}

func (r *AgentRunner) dirs() []string {
	if r != nil && len(r.Dirs) > 0 {
		return r.Dirs
	}
	return []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}
}

func (r *AgentRunner) timeoutMs(d Device) int64 {
	if d.TimeoutMs > 0 {
		return d.TimeoutMs
	}
	if r != nil && r.DefaultTimeoutMs > 0 {
		return min(r.DefaultTimeoutMs, maxAgentTimeoutMs)
	}
	return defaultAgentTimeoutMs
}

func (r *AgentRunner) maxOutput() int {
	if r != nil && r.MaxOutputBytes > 0 {
		return min(r.MaxOutputBytes, maxMaxOutputBytes)
	}
	return defaultMaxOutputBytes
}

func (r *AgentRunner) statusRetries() int {
	if r != nil && r.StatusRetries > 0 {
		return min(r.StatusRetries, maxStatusRetries)
	}
	return defaultStatusRetries
}

func (r *AgentRunner) statusRetryDelay() time.Duration {
	if r != nil && r.StatusRetryDelayMs > 0 {
		return time.Duration(min(r.StatusRetryDelayMs, 60_000)) * time.Millisecond
	}
	return defaultStatusRetryDelayMs * time.Millisecond
}

// LookPath finds an agent program: an absolute path as is, a bare name in
// Dirs and then $PATH.
func (r *AgentRunner) LookPath(agent string) (string, error) {
	if err := checkAgentName(agent); err != nil {
		return "", err
	}
	if filepath.IsAbs(agent) {
		if err := isExecutable(agent); err != nil {
			return "", fmt.Errorf("fence agent %s: %w", agent, err)
		}
		return agent, nil
	}
	for _, dir := range r.dirs() {
		p := filepath.Join(dir, agent)
		if isExecutable(p) == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(agent)
	if err != nil {
		return "", fmt.Errorf("fence agent %s: not found in %s or $PATH (is the fence-agents package installed?)", agent, strings.Join(r.dirs(), ":"))
	}
	return p, nil
}

func isExecutable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// Run runs dev's agent once with action and returns what it said. The error
// is nil when the agent succeeded by the API's rules: exit 0 for every
// action, and for status and monitor also exit 2 (Power says off). A timeout
// (ErrTimeout), a cancelled ctx, a missing program and any other exit code
// are errors. The result is filled in even when err is not nil.
func (r *AgentRunner) Run(ctx context.Context, dev Device, action Action) (AgentResult, error) {
	return r.run(ctx, dev, action, r.maxOutput())
}

func (r *AgentRunner) run(ctx context.Context, dev Device, action Action, maxOutput int) (AgentResult, error) {
	res := AgentResult{Device: dev.Name, Agent: dev.Agent, Action: action, ExitCode: -1}
	if !action.Valid() {
		return res, fmt.Errorf("fence device %s: unknown action %q", dev.Name, action)
	}
	if err := dev.Validate(); err != nil {
		return res, err
	}
	path, err := r.LookPath(dev.Agent)
	if err != nil {
		return res, fmt.Errorf("fence device %s: %w", dev.Name, err)
	}
	timeout := time.Duration(r.timeoutMs(dev)) * time.Millisecond
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	out := &boundedBuffer{limit: maxOutput}
	cmd := exec.CommandContext(runCtx, path)
	cmd.Stdin = strings.NewReader(dev.stdin(action, nil))
	cmd.Stdout = out
	cmd.Stderr = out
	// A clean environment: the agent gets its parameters on stdin only, and
	// nothing of the daemon's environment leaks into (or steers) it. HOME
	// stays because cloud agents read credentials files from it.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	if h := os.Getenv("HOME"); h != "" {
		cmd.Env = append(cmd.Env, "HOME="+h)
	}
	// Its own process group, so that a timeout kills the agent and whatever
	// it started (ipmitool, ssh, a sleep), not only the python at the top.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = killWaitMs * time.Millisecond

	start := time.Now()
	runErr := cmd.Run()
	res.DurationMs = time.Since(start).Milliseconds()
	res.Output, res.OutputTruncated = out.result(dev.Secrets)
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}

	switch {
	case runCtx.Err() != nil:
		// Whatever the exit status, the run did not end on its own in time:
		// never count it as a success.
		res.ExitCode = -1
		res.TimedOut = errors.Is(runCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		if res.TimedOut {
			err = fmt.Errorf("fence device %s (%s) %s: %w after %d ms", dev.Name, dev.Agent, action, ErrTimeout, timeout.Milliseconds())
		} else {
			err = fmt.Errorf("fence device %s (%s) %s: %w", dev.Name, dev.Agent, action, context.Cause(ctx))
		}
	case res.ExitCode == exitOK:
		if action == ActionStatus {
			res.Power = PowerOn
		}
		err = nil
	case res.ExitCode == exitOff && (action == ActionStatus || action == ActionMonitor):
		res.Power = PowerOff
		err = nil
	case res.ExitCode >= 0:
		err = fmt.Errorf("fence device %s (%s) %s: exit status %d%s", dev.Name, dev.Agent, action, res.ExitCode, lastLineHint(res.Output))
	default:
		err = fmt.Errorf("fence device %s (%s) %s: %v", dev.Name, dev.Agent, action, redactErr(runErr, dev.Secrets))
	}
	if r != nil && r.Logger != nil {
		attrs := []any{"device", dev.Name, "agent", dev.Agent, "action", string(action), "exit", res.ExitCode, "duration_ms", res.DurationMs}
		if res.Power != PowerUnknown {
			attrs = append(attrs, "power", string(res.Power))
		}
		if err != nil {
			r.Logger.Warn("fence agent failed", append(attrs, "err", err.Error())...)
		} else {
			r.Logger.Info("fence agent ran", attrs...)
		}
	}
	return res, err
}

// redactErr renders an exec error without any secret in it (exec errors
// carry only the path today; this keeps it so if that changes).
func redactErr(err error, secrets map[string]Secret) string {
	if err == nil {
		return "no exit status"
	}
	return redactValues(err.Error(), secrets)
}

// lastLineHint is ": " and the last non-empty output line (bounded), to
// make an error say why without the whole output. The output is already
// redacted.
func lastLineHint(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if last == "" {
		return ""
	}
	const maxHint = 200
	if len(last) > maxHint {
		last = last[:maxHint] + "..."
	}
	return ": " + last
}

// Status runs status and returns the power state.
func (r *AgentRunner) Status(ctx context.Context, dev Device) (Power, AgentResult, error) {
	res, err := r.Run(ctx, dev, ActionStatus)
	return res.Power, res, err
}

// PowerOff turns the target off and verifies it: the off counts only when
// a following status says off. Status is retried up to StatusRetries times
// (StatusRetryDelayMs apart) because many BMCs report the new state late.
// It returns every run it made, in order.
func (r *AgentRunner) PowerOff(ctx context.Context, dev Device) ([]AgentResult, error) {
	return r.switchAndVerify(ctx, dev, ActionOff, PowerOff)
}

// PowerOn turns the target on (unfence) and verifies it the same way.
func (r *AgentRunner) PowerOn(ctx context.Context, dev Device) ([]AgentResult, error) {
	return r.switchAndVerify(ctx, dev, ActionOn, PowerOn)
}

func (r *AgentRunner) switchAndVerify(ctx context.Context, dev Device, action Action, want Power) ([]AgentResult, error) {
	var runs []AgentResult
	res, err := r.Run(ctx, dev, action)
	runs = append(runs, res)
	if err != nil {
		return runs, err
	}
	var lastErr error
	for i := 0; i < r.statusRetries(); i++ {
		if i > 0 {
			t := time.NewTimer(r.statusRetryDelay())
			select {
			case <-ctx.Done():
				t.Stop()
				return runs, fmt.Errorf("fence device %s: verifying %s: %w", dev.Name, action, context.Cause(ctx))
			case <-t.C:
			}
		}
		st, err := r.Run(ctx, dev, ActionStatus)
		runs = append(runs, st)
		if err == nil && st.Power == want {
			return runs, nil
		}
		if err != nil {
			lastErr = err
		} else {
			lastErr = fmt.Errorf("status says %s", st.Power)
		}
		if ctx.Err() != nil {
			break
		}
	}
	if want == PowerOff {
		return runs, fmt.Errorf("fence device %s: %w after %d status calls: %v", dev.Name, ErrNotOff, len(runs)-1, lastErr)
	}
	return runs, fmt.Errorf("fence device %s: target not verified on after %d status calls: %v", dev.Name, len(runs)-1, lastErr)
}

// Metadata runs the agent's metadata action and parses its XML.
func (r *AgentRunner) Metadata(ctx context.Context, agent string) (Metadata, error) {
	dev := Device{Name: agent, Agent: agent}
	if len(agent) > maxDeviceNameBytes {
		dev.Name = "metadata"
	}
	res, err := r.run(ctx, dev, ActionMetadata, metadataMaxOutputBytes)
	if err != nil {
		return Metadata{}, err
	}
	if res.OutputTruncated {
		return Metadata{}, fmt.Errorf("fence agent %s metadata: longer than %d bytes", agent, metadataMaxOutputBytes)
	}
	md, err := ParseMetadata([]byte(res.Output))
	if err != nil {
		return Metadata{}, fmt.Errorf("fence agent %s metadata: %w", agent, err)
	}
	return md, nil
}

// boundedBuffer keeps the first limit bytes written to it and counts the
// rest. Writes never fail, so a chatty agent is not killed by SIGPIPE.
type boundedBuffer struct {
	mu      sync.Mutex
	limit   int
	buf     bytes.Buffer
	dropped int64
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := b.limit - b.buf.Len()
	if room > len(p) {
		room = len(p)
	}
	if room > 0 {
		b.buf.Write(p[:room])
	}
	b.dropped += int64(len(p) - max(room, 0))
	return len(p), nil
}

// result returns the kept output with every secret value replaced, and
// whether anything was dropped.
func (b *boundedBuffer) result(secrets map[string]Secret) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := redactValues(b.buf.String(), secrets)
	if b.dropped > 0 {
		out = trimSecretPrefixSuffix(out, secrets)
	}
	return out, b.dropped > 0
}

// trimSecretPrefixSuffix cuts a tail of out that is the beginning of a
// secret: when the limit fell in the middle of a password, redactValues
// cannot see the whole value, and the part before the cut must not show.
func trimSecretPrefixSuffix(out string, secrets map[string]Secret) string {
	for _, sec := range secrets {
		v := sec.Reveal()
		for k := min(len(v)-1, len(out)); k >= 1; k-- {
			if strings.HasSuffix(out, v[:k]) {
				out = out[:len(out)-k]
				break
			}
		}
	}
	return out
}
