package node

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/paddock-io/paddock/fence"
)

// FenceDeviceRequest adds or replaces a fence device.
type FenceDeviceRequest struct {
	Device FenceDeviceConfig `json:"device"`
	Remove bool              `json:"remove,omitempty"`
}

// FenceLevelRequest sets (or with no devices, removes) one level of a
// node's topology.
type FenceLevelRequest struct {
	Node    string   `json:"node"`
	Level   int      `json:"level"`
	Devices []string `json:"devices"`
}

// FenceSettingsRequest sets the fence timing.
type FenceSettingsRequest struct {
	DelayBaseMs    int64 `json:"delay_base_ms"`
	DelayMaxMs     int64 `json:"delay_max_ms"`
	TotalTimeoutMs int64 `json:"total_timeout_ms"`
}

// FenceRequest fences a node by hand, or tests a device (status only).
type FenceRequest struct {
	Node   string `json:"node,omitempty"`
	Device string `json:"device,omitempty"`
}

// FenceConfigView is the fencing configuration with secrets redacted.
type FenceConfigView struct {
	Devices        []FenceDeviceView  `json:"devices"`
	Levels         []FenceLevelConfig `json:"levels"`
	DelayBaseMs    int64              `json:"delay_base_ms"`
	DelayMaxMs     int64              `json:"delay_max_ms"`
	TotalTimeoutMs int64              `json:"total_timeout_ms"`
	// Blocked are the network-fenced nodes.
	Blocked []NetBlock `json:"blocked"`
}

// FenceDeviceView is a device for display: secret parameters are
// "[redacted]".
type FenceDeviceView struct {
	Name   string            `json:"name"`
	Agent  string            `json:"agent"`
	Params map[string]string `json:"params"`
}

// FenceReply is GET /v1/fence.
type FenceReply struct {
	Config FenceConfigView `json:"config"`
	HA     HAStatus        `json:"ha"`
}

func (d *Daemon) fenceView() FenceConfigView {
	v := FenceConfigView{Devices: []FenceDeviceView{}, Levels: []FenceLevelConfig{}, Blocked: []NetBlock{}}
	if f := d.config().Fence; f != nil {
		for _, dev := range f.Devices {
			r := dev.Redacted()
			dv := FenceDeviceView{Name: r.Name, Agent: r.Agent, Params: map[string]string{}}
			for k, p := range r.Params {
				dv.Params[k] = p
			}
			for k := range r.Secrets {
				dv.Params[k] = "[redacted]"
			}
			v.Devices = append(v.Devices, dv)
		}
		v.Levels = append(v.Levels, f.Levels...)
		v.Blocked = append(v.Blocked, f.Blocked...)
		v.DelayBaseMs, v.DelayMaxMs, v.TotalTimeoutMs = f.DelayBaseMs, f.DelayMaxMs, f.TotalTimeoutMs
	}
	return v
}

func (d *Daemon) fenceHandlers(mux *http.ServeMux) {
	change := func(w http.ResponseWriter, r *http.Request, edit func(f *FenceConfig, cur *ClusterConfig) error) {
		_, err := d.conf.Propose(r.Context(), func(cur *ClusterConfig) (*ClusterConfig, error) {
			next := cloneConfig(cur)
			if next.Fence == nil {
				next.Fence = &FenceConfig{}
			}
			if err := edit(next.Fence, next); err != nil {
				return nil, err
			}
			return next, next.Validate()
		})
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSONResponse(w, http.StatusOK, d.fenceView())
	}
	mux.HandleFunc("POST /v1/fence/devices", func(w http.ResponseWriter, r *http.Request) {
		var req FenceDeviceRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		change(w, r, func(f *FenceConfig, cur *ClusterConfig) error {
			name := req.Device.Name
			for _, l := range f.Levels {
				if req.Remove && slices.Contains(l.Devices, name) {
					return fmt.Errorf("device %q is used by level %d of %s; remove the level first", name, l.Level, l.Node)
				}
			}
			f.Devices = slices.DeleteFunc(f.Devices, func(x FenceDeviceConfig) bool { return x.Name == name })
			if !req.Remove {
				f.Devices = append(f.Devices, req.Device)
			}
			return nil
		})
	})
	mux.HandleFunc("POST /v1/fence/levels", func(w http.ResponseWriter, r *http.Request) {
		var req FenceLevelRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		change(w, r, func(f *FenceConfig, cur *ClusterConfig) error {
			f.Levels = slices.DeleteFunc(f.Levels, func(l FenceLevelConfig) bool { return l.Node == req.Node && l.Level == req.Level })
			if len(req.Devices) > 0 {
				f.Levels = append(f.Levels, FenceLevelConfig{Node: req.Node, Level: req.Level, Devices: req.Devices})
			}
			return nil
		})
	})
	mux.HandleFunc("POST /v1/fence/settings", func(w http.ResponseWriter, r *http.Request) {
		var req FenceSettingsRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		change(w, r, func(f *FenceConfig, cur *ClusterConfig) error {
			f.DelayBaseMs, f.DelayMaxMs, f.TotalTimeoutMs = req.DelayBaseMs, req.DelayMaxMs, req.TotalTimeoutMs
			return nil
		})
	})
	mux.HandleFunc("GET /v1/fence", func(w http.ResponseWriter, r *http.Request) {
		rep := FenceReply{Config: d.fenceView()}
		if d.vols != nil && d.vols.ha != nil {
			rep.HA = d.vols.ha.status()
		}
		writeJSONResponse(w, http.StatusOK, rep)
	})
	mux.HandleFunc("POST /v1/fence/unfence", func(w http.ResponseWriter, r *http.Request) {
		var req UnfenceRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		rep, err := d.unfence(r.Context(), req.Node)
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSONResponse(w, http.StatusOK, rep)
	})
	mux.HandleFunc("POST /v1/fence/run", func(w http.ResponseWriter, r *http.Request) {
		var req FenceRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		out, err := d.fenceByHand(r.Context(), req)
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSONResponse(w, http.StatusOK, out)
	})
}

// fenceByHand fences a node now (quorate partitions only), or runs a
// device's status action.
func (d *Daemon) fenceByHand(ctx context.Context, req FenceRequest) (any, error) {
	if d.vols == nil || d.vols.ha == nil {
		return nil, errors.New("this node has no storage address: it runs no fencing")
	}
	a := d.vols.ha
	cfg := d.config()
	if req.Device != "" {
		if cfg.Fence == nil {
			return nil, fmt.Errorf("no fence device named %q", req.Device)
		}
		for _, dev := range cfg.Fence.Devices {
			if dev.Name == req.Device {
				ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				defer cancel()
				runner := &fence.AgentRunner{Logger: a.log}
				power, res, err := runner.Status(ctx, dev.device())
				if err != nil {
					return nil, err
				}
				return map[string]any{"device": dev.Name, "power": power, "result": res}, nil
			}
		}
		return nil, fmt.Errorf("no fence device named %q", req.Device)
	}
	n, ok := cfg.NodeByName(req.Node)
	if !ok {
		return nil, fmt.Errorf("no node named %q", req.Node)
	}
	if n.ID == d.loaded.Identity.ID {
		return nil, errors.New("a node does not fence itself; run this on another node")
	}
	if !d.quorate() {
		return nil, errors.New("this node's partition is not quorate: it fences no one")
	}
	plan, _ := cfg.fencePlan(n.Name, false)
	if len(plan.Levels) == 0 {
		return nil, fmt.Errorf("node %q has no fence levels: add a device and a level first (paddock fence device add, paddock fence level add)", n.Name)
	}
	a.mu.Lock()
	if a.fencing[n.ID] {
		a.mu.Unlock()
		return nil, fmt.Errorf("a fence of %q is already running", n.Name)
	}
	a.fencing[n.ID], a.lastFence[n.ID] = true, nowMs()
	a.mu.Unlock()
	out, err := a.fence(ctx, n.ID, plan)
	if err != nil {
		return out, err
	}
	// A verified power fence by hand is followed by the network fence,
	// as the HA agent's is.
	members := d.members()
	if _, nerr := d.netFenceNode(ctx, n.Name, members); nerr != nil {
		a.log.Error("network fence after the fence by hand failed on some members", "target", n.Name, "err", nerr)
	}
	a.mu.Lock()
	a.netDone[n.ID] = true
	a.mu.Unlock()
	return out, nil
}
