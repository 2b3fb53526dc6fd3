package fence

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Limits on a device description. They keep a corrupt or hostile
// configuration from making the agent's stdin (or the status page) huge.
const (
	maxDeviceParams    = 64
	maxParamNameBytes  = 64
	maxParamValueBytes = 4096
	maxDeviceNameBytes = 64
	maxAgentPathBytes  = 256
)

// Device is one fence device as the runner needs it: which agent program to
// run and the key=value parameters to give it on stdin. Parameters whose
// names look secret (IsSecretParam) live in Secrets, which never print.
//
// A Device is plain data and marshals to JSON with its secrets redacted, so
// it can go into status output and history as is.
type Device struct {
	// Name is the device's name in the cluster configuration ("ipmi-n1").
	Name string `json:"name"`
	// Agent is a fence-agents program: a bare name ("fence_ipmilan"),
	// looked up in the runner's directories, or an absolute path.
	Agent string `json:"agent"`
	// Params are the non-secret parameters (ip, username, plug, lanplus...).
	Params map[string]string `json:"params,omitempty"`
	// Secrets are the secret parameters (password, community...).
	Secrets map[string]Secret `json:"secrets,omitempty"`
	// TimeoutMs bounds one run of the agent; 0 means the runner's default.
	TimeoutMs int64 `json:"timeout_ms,omitempty"`
}

// NewDevice builds a Device, sorting params into Params and Secrets by
// IsSecretParam.
func NewDevice(name, agent string, params map[string]string) Device {
	d := Device{Name: name, Agent: agent}
	for k, v := range params {
		d.SetParam(k, v)
	}
	return d
}

// SetParam sets one parameter, as a secret when its name says so.
func (d *Device) SetParam(name, value string) {
	if IsSecretParam(name) {
		if d.Secrets == nil {
			d.Secrets = map[string]Secret{}
		}
		d.Secrets[name] = NewSecret(value)
		delete(d.Params, name)
		return
	}
	if d.Params == nil {
		d.Params = map[string]string{}
	}
	d.Params[name] = value
	delete(d.Secrets, name)
}

// paramNameRe is what the fence-agents API allows in an argument name (an
// XML attribute name, no spaces, no '='), narrowed to what real agents use.
var paramNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

// agentNameRe is a bare agent program name.
var agentNameRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]*$`)

// reservedParams are set by the runner, never by a device: "action" (and
// its deprecated spelling "option") decides what the agent does, and a
// device that carried one could turn a status check into a power-off.
var reservedParams = map[string]bool{"action": true, "option": true}

// Validate checks the device against the stdin protocol's rules and the
// package limits. A value with a newline is refused: it would let a value
// smuggle a second key=value line (say, action=off) into the agent's input.
func (d Device) Validate() error {
	if d.Name == "" || len(d.Name) > maxDeviceNameBytes || strings.ContainsAny(d.Name, "\n\r\x00") {
		return fmt.Errorf("fence device name %q: must be 1..%d bytes without newlines", d.Name, maxDeviceNameBytes)
	}
	if err := checkAgentName(d.Agent); err != nil {
		return fmt.Errorf("fence device %s: %w", d.Name, err)
	}
	if n := len(d.Params) + len(d.Secrets); n > maxDeviceParams {
		return fmt.Errorf("fence device %s: %d parameters, at most %d", d.Name, n, maxDeviceParams)
	}
	check := func(name, value string) error {
		if len(name) > maxParamNameBytes || !paramNameRe.MatchString(name) {
			return fmt.Errorf("fence device %s: parameter name %q: want letters, digits, '_', '.', '-' (at most %d bytes)", d.Name, name, maxParamNameBytes)
		}
		if reservedParams[strings.ToLower(name)] {
			return fmt.Errorf("fence device %s: parameter %q is set by paddock per call, not by the device", d.Name, name)
		}
		if len(value) > maxParamValueBytes {
			return fmt.Errorf("fence device %s: parameter %s: value of %d bytes, at most %d", d.Name, name, len(value), maxParamValueBytes)
		}
		if strings.ContainsAny(value, "\n\r\x00") {
			return fmt.Errorf("fence device %s: parameter %s: value contains a newline or NUL", d.Name, name)
		}
		return nil
	}
	for k, v := range d.Params {
		if err := check(k, v); err != nil {
			return err
		}
	}
	for k, v := range d.Secrets {
		// The error names the parameter, never the value.
		if err := check(k, v.Reveal()); err != nil {
			return err
		}
		if _, dup := d.Params[k]; dup {
			return fmt.Errorf("fence device %s: parameter %s is both secret and plain", d.Name, k)
		}
	}
	if d.TimeoutMs < 0 || d.TimeoutMs > maxAgentTimeoutMs {
		return fmt.Errorf("fence device %s: timeout %d ms out of range 0..%d", d.Name, d.TimeoutMs, maxAgentTimeoutMs)
	}
	return nil
}

// maxAgentTimeoutMs bounds any single agent run: a fence that takes longer
// than 10 minutes is not a fence anyone waits for.
const maxAgentTimeoutMs = 600_000

func checkAgentName(agent string) error {
	switch {
	case agent == "":
		return fmt.Errorf("no agent program")
	case len(agent) > maxAgentPathBytes:
		return fmt.Errorf("agent %q: longer than %d bytes", agent, maxAgentPathBytes)
	case strings.ContainsAny(agent, "\n\r\x00"):
		return fmt.Errorf("agent name contains a newline or NUL")
	case filepath.IsAbs(agent):
		return nil
	case !agentNameRe.MatchString(agent):
		return fmt.Errorf("agent %q: want a bare program name (fence_ipmilan) or an absolute path", agent)
	}
	return nil
}

// stdin renders the agent's input: one key=value line per parameter, in a
// stable order (sorted, so tests and debug dumps are repeatable), then
// action last so no parameter can come after it.
func (d Device) stdin(action Action, extra map[string]string) string {
	var b strings.Builder
	keys := make([]string, 0, len(d.Params)+len(d.Secrets)+len(extra))
	all := map[string]string{}
	for k, v := range d.Params {
		all[k] = v
	}
	for k, v := range d.Secrets {
		all[k] = v.Reveal()
	}
	for k, v := range extra {
		all[k] = v
	}
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(all[k])
		b.WriteByte('\n')
	}
	b.WriteString("action=")
	b.WriteString(string(action))
	b.WriteByte('\n')
	return b.String()
}
