package node

import (
	"fmt"
	"regexp"
	"slices"

	"github.com/paddock-io/paddock/fence"
)

// FenceConfig is the fencing part of the cluster configuration: devices
// (fence agents with their parameters) and, per node, the levels to try in
// order (Pacemaker's fencing topology).
//
// Device parameters, passwords included, are stored in cluster.json as
// the agents need them (the file is 0600 and travels only inside the
// cluster's mutual TLS); they are redacted everywhere they are shown.
type FenceConfig struct {
	Devices []FenceDeviceConfig `json:"devices,omitempty"`
	Levels  []FenceLevelConfig  `json:"levels,omitempty"`
	// DelayBaseMs and DelayMaxMs are the fence-race delay (as
	// pcmk_delay_base/max); TotalTimeoutMs bounds one fence operation.
	DelayBaseMs    int64 `json:"delay_base_ms,omitempty"`
	DelayMaxMs     int64 `json:"delay_max_ms,omitempty"`
	TotalTimeoutMs int64 `json:"total_timeout_ms,omitempty"`
	// Blocked are the network-fenced nodes (node/netfence_config.go).
	Blocked []NetBlock `json:"blocked,omitempty"`
}

// FenceDeviceConfig is one fence device.
type FenceDeviceConfig struct {
	Name      string            `json:"name"`
	Agent     string            `json:"agent"`
	Params    map[string]string `json:"params,omitempty"`
	TimeoutMs int64             `json:"timeout_ms,omitempty"`
}

// FenceLevelConfig is one level of one node's topology.
type FenceLevelConfig struct {
	Node    string   `json:"node"`
	Level   int      `json:"level"` // 1 first
	Devices []string `json:"devices"`
}

// Limits of the fencing configuration.
const (
	maxFenceDevices = 64
	maxFenceLevels  = 8
)

var fenceNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// device turns a configured device into the runner's type.
func (d FenceDeviceConfig) device() fence.Device {
	dev := fence.NewDevice(d.Name, d.Agent, d.Params)
	dev.TimeoutMs = d.TimeoutMs
	return dev
}

// Redacted is the device for display: secret parameters hidden.
func (d FenceDeviceConfig) Redacted() fence.Device { return d.device() }

// validateFence checks devices and levels against the nodes.
func (c *ClusterConfig) validateFence() error {
	f := c.Fence
	if f == nil {
		return nil
	}
	if len(f.Devices) > maxFenceDevices {
		return fmt.Errorf("%d fence devices: at most %d", len(f.Devices), maxFenceDevices)
	}
	names := map[string]bool{}
	for _, d := range f.Devices {
		if !fenceNameRE.MatchString(d.Name) {
			return fmt.Errorf("fence device name %q: use letters, digits, '.', '_' or '-'", d.Name)
		}
		if names[d.Name] {
			return fmt.Errorf("fence device %q is defined twice", d.Name)
		}
		names[d.Name] = true
		if err := d.device().Validate(); err != nil {
			return fmt.Errorf("fence device %q: %w", d.Name, err)
		}
	}
	seen := map[string]bool{}
	for _, l := range f.Levels {
		if _, ok := c.NodeByName(l.Node); !ok {
			return fmt.Errorf("fence level for %q: no such node", l.Node)
		}
		if l.Level < 1 || l.Level > maxFenceLevels {
			return fmt.Errorf("fence level %d for %q: levels are 1..%d", l.Level, l.Node, maxFenceLevels)
		}
		key := fmt.Sprintf("%s/%d", l.Node, l.Level)
		if seen[key] {
			return fmt.Errorf("fence level %d for %q is defined twice", l.Level, l.Node)
		}
		seen[key] = true
		if len(l.Devices) == 0 {
			return fmt.Errorf("fence level %d for %q has no devices", l.Level, l.Node)
		}
		for _, dn := range l.Devices {
			if !names[dn] {
				return fmt.Errorf("fence level %d for %q: no device named %q", l.Level, l.Node, dn)
			}
		}
	}
	if _, err := c.fencePlan("", true); err != nil {
		return err
	}
	return c.validateNetBlocks()
}

// fencePlan is the plan to fence a node (ok false when it has no levels).
// With checkOnly it validates the timing for any node.
func (c *ClusterConfig) fencePlan(nodeName string, checkOnly bool) (fence.Plan, error) {
	f := c.Fence
	if f == nil {
		return fence.Plan{}, nil
	}
	p := fence.Plan{Target: nodeName, TotalTimeoutMs: f.TotalTimeoutMs, DelayBaseMs: f.DelayBaseMs, DelayMaxMs: f.DelayMaxMs}
	if checkOnly {
		p.Target = "check"
		p.Levels = []fence.Level{{Devices: []fence.Device{fence.NewDevice("check", "fence_check", nil)}}}
		return p, p.Validate()
	}
	levels := slices.Clone(f.Levels)
	slices.SortFunc(levels, func(a, b FenceLevelConfig) int { return a.Level - b.Level })
	for _, l := range levels {
		if l.Node != nodeName {
			continue
		}
		var lv fence.Level
		for _, dn := range l.Devices {
			for _, d := range f.Devices {
				if d.Name == dn {
					lv.Devices = append(lv.Devices, d.device())
				}
			}
		}
		p.Levels = append(p.Levels, lv)
	}
	return p, nil
}
