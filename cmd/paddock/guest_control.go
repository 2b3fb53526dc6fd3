package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/paddock-io/paddock/migrate"
	"github.com/paddock-io/paddock/node"
)

// The guest control socket speaks JSON lines: one request per connection,
// then response lines until the last, which has "done": true. A migrate
// request streams progress lines; closing the connection cancels it.

// maxGuestRequestBytes bounds a request line.
const maxGuestRequestBytes = 4096

type guestRequest struct {
	Op      string          `json:"op"` // status, check, migrate
	Migrate *migrateRequest `json:"migrate,omitempty"`
}

type migrateRequest struct {
	To string `json:"to"`
	// ToNode is the node whose guest process waits at To: the guest's
	// volumes move there. Empty: the node named by the destination's
	// cluster certificate.
	ToNode string `json:"to_node,omitempty"`
	// HandoffTimeoutMs bounds the volume hand-off (its undo may take as
	// long again); 0 = node.DefaultHandoffTimeoutMs.
	HandoffTimeoutMs int64  `json:"handoff_timeout_ms,omitempty"`
	ServerName       string `json:"server_name,omitempty"`
	Transport        string `json:"transport"`
	DowntimeMs       int64  `json:"downtime_ms"`
	TimeoutMs        int64  `json:"timeout_ms"`
	Streams          int    `json:"streams"`
	Compress         string `json:"compress"`
	// BandwidthBytesPerSecond caps the page streams; 0 = no cap.
	BandwidthBytesPerSecond int64 `json:"bandwidth_bytes_per_second"`
	MaxRounds               int   `json:"max_rounds"`
	NoAutoConverge          bool  `json:"no_auto_converge"`
	// VerifyRAM: the digest is of all of RAM rehashed inside the pause
	// (migrate.SourceOptions.VerifyRAM).
	VerifyRAM bool `json:"verify_ram,omitempty"`
}

// Limits a request is checked against before anything acts on it.
const (
	maxDowntimeMs = 60 * 60 * 1000
	maxTimeoutMs  = 24 * 60 * 60 * 1000
	// maxHandoffTimeoutMs: the guest is paused during the hand-off.
	maxHandoffTimeoutMs = 120 * 1000
)

// parseGuestRequest reads and checks one request line.
func parseGuestRequest(line []byte) (guestRequest, error) {
	var r guestRequest
	if len(line) > maxGuestRequestBytes {
		return r, fmt.Errorf("request of %d bytes, limit %d", len(line), maxGuestRequestBytes)
	}
	dec := json.NewDecoder(strings.NewReader(string(line)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, fmt.Errorf("bad request: %w", err)
	}
	switch r.Op {
	case "status", "check":
		if r.Migrate != nil {
			return r, fmt.Errorf("%s takes no migrate arguments", r.Op)
		}
	case "migrate":
		m := r.Migrate
		if m == nil {
			return r, errors.New("migrate without arguments")
		}
		if _, _, err := net.SplitHostPort(m.To); err != nil {
			return r, fmt.Errorf("destination %q: want HOST:PORT", m.To)
		}
		if m.Transport != migrate.TransportQUIC && m.Transport != migrate.TransportTCP {
			return r, fmt.Errorf("transport %q: want quic or tcp", m.Transport)
		}
		if m.DowntimeMs <= 0 || m.DowntimeMs > maxDowntimeMs {
			return r, fmt.Errorf("downtime %d ms: want 1..%d", m.DowntimeMs, maxDowntimeMs)
		}
		if m.TimeoutMs <= 0 || m.TimeoutMs > maxTimeoutMs {
			return r, fmt.Errorf("timeout %d ms: want 1..%d", m.TimeoutMs, maxTimeoutMs)
		}
		if m.Streams < 1 || m.Streams > migrate.MaxPageStreams {
			return r, fmt.Errorf("%d streams: want 1..%d", m.Streams, migrate.MaxPageStreams)
		}
		if _, err := migrate.ParseCompression(m.Compress); err != nil {
			return r, err
		}
		if m.BandwidthBytesPerSecond < 0 {
			return r, errors.New("negative bandwidth")
		}
		if m.HandoffTimeoutMs < 0 || m.HandoffTimeoutMs > maxHandoffTimeoutMs {
			return r, fmt.Errorf("hand-off timeout %d ms: want 0..%d", m.HandoffTimeoutMs, maxHandoffTimeoutMs)
		}
		if m.ToNode != "" && !guestNameRE.MatchString(m.ToNode) {
			return r, fmt.Errorf("destination node %q: not a node name", m.ToNode)
		}
		if m.MaxRounds < 0 || m.MaxRounds > migrate.MaxRoundsLimit {
			return r, fmt.Errorf("max rounds %d: want 0..%d", m.MaxRounds, migrate.MaxRoundsLimit)
		}
	default:
		return r, fmt.Errorf("unknown op %q (status, check, migrate)", r.Op)
	}
	return r, nil
}

// guestResponse is one response line.
type guestResponse struct {
	Done     bool                 `json:"done,omitempty"`
	Error    string               `json:"error,omitempty"`
	Status   *guestStatus         `json:"status,omitempty"`
	Check    *migrate.CheckResult `json:"check,omitempty"`
	Progress *migrate.Progress    `json:"progress,omitempty"`
	Stats    *migrate.Stats       `json:"stats,omitempty"`
	Handoff  *node.HandoffResult  `json:"handoff,omitempty"`
}

type guestStatus struct {
	Name            string `json:"name"`
	State           string `json:"state"` // running, incoming, receiving, migrating, migrated
	RAMBytes        int64  `json:"ram_bytes"`
	HugePages       bool   `json:"huge_pages,omitempty"`
	Writes          uint64 `json:"writes"`
	ThrottlePercent int    `json:"throttle_percent"`
	Pid             int    `json:"pid"`
	// Volumes the guest uses; they follow it at a migration.
	Volumes []string `json:"volumes,omitempty"`
	// NodeDir is the data dir of the node the guest runs beside (its
	// --data-dir): "paddock migrate --to NODE" asks that node.
	NodeDir string `json:"node_dir,omitempty"`
}

var guestNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// defaultGuestSocket is where a guest named name listens for control
// requests unless told otherwise.
func defaultGuestSocket(name string) string {
	return filepath.Join("/run/paddock", "guest-"+name+".sock")
}

// guestCall sends req to the guest at sock and hands every response line
// to each, until the last.
func guestCall(sock string, req guestRequest, timeout time.Duration, each func(guestResponse) error) error {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return fmt.Errorf("guest control socket: %w", err)
	}
	defer c.Close()
	if timeout > 0 {
		c.SetDeadline(time.Now().Add(timeout))
	}
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return err
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r guestResponse
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("guest answered %q: %w", sc.Text(), err)
		}
		if err := each(r); err != nil {
			return err
		}
		if r.Done {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("guest closed the control connection without an answer")
}
