package witness

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/paddock-io/paddock/quorum"
)

// The wire format, over one TLS connection per node: frames of a 4-byte
// big-endian length and that many bytes of JSON, an Envelope. JSON keeps
// the protocol readable in a packet capture and in logs; the frames are
// small and few (a node reports a few times a second).

// ProtocolVersion is sent in Hello; the witness refuses other versions
// with a clear message rather than guessing.
const ProtocolVersion = 1

// Message types.
const (
	TypeHello   = "hello"   // node -> witness, first frame
	TypeReport  = "report"  // node -> witness, periodically and on change
	TypeVerdict = "verdict" // witness -> node
	TypeRefusal = "refusal" // witness -> node, then the witness closes
)

// Envelope is one frame's JSON: a type and exactly the matching body.
type Envelope struct {
	Type    string   `json:"type"`
	Hello   *Hello   `json:"hello,omitempty"`
	Report  *Report  `json:"report,omitempty"`
	Verdict *Verdict `json:"verdict,omitempty"`
	Refusal *Refusal `json:"refusal,omitempty"`
}

// Hello opens a connection: which cluster and which node (the witness
// checks the node id against the name in the node's certificate).
type Hello struct {
	Version   int           `json:"version"`
	ClusterID string        `json:"cluster_id"`
	NodeID    quorum.NodeID `json:"node_id"`
	// Incarnation is the node's start counter (the heartbeats' one): a
	// newer connection of the same node replaces an older one.
	Incarnation uint64 `json:"incarnation"`
}

// Report is the node's view: the membership it sees (itself included),
// the configuration it runs, and the lease it asks for. The witness
// answers every report with a Verdict carrying the same Seq.
type Report struct {
	// Seq grows by one per report on a connection; the node measures the
	// lease of a verdict from the time it sent the report of that Seq.
	Seq        uint64          `json:"seq"`
	Membership []quorum.NodeID `json:"membership"`
	// ConfigVersion and Config are the cluster configuration the node
	// runs (its quorum part). The witness arbitrates with the newest
	// configuration any node reported and refuses nodes on older ones.
	ConfigVersion uint64        `json:"config_version"`
	Config        quorum.Config `json:"config"`
	LeaseMs       int64         `json:"lease_ms"`
}

// Verdict is the witness's answer for one node.
type Verdict struct {
	// Seq is the Seq of the node's latest report the witness had read.
	Seq uint64 `json:"seq"`
	// Granted: the witness's votes count for exactly Membership until
	// LeaseMs after the node sent report Seq (unless renewed).
	Granted    bool            `json:"granted"`
	Membership []quorum.NodeID `json:"membership,omitempty"`
	LeaseMs    int64           `json:"lease_ms,omitempty"`
	// Reason says why, for logs and "paddock status".
	Reason string `json:"reason"`
}

// Refusal says why the witness will not serve this connection.
type Refusal struct {
	Reason string `json:"reason"`
}

// Limits of the wire.
const (
	// MaxFrameBytes bounds one frame. The largest message is a Report of
	// a 32-node cluster with 63-byte names: about 4 KiB of JSON.
	MaxFrameBytes = 16 << 10
	// maxReasonBytes bounds the free text of verdicts and refusals.
	maxReasonBytes = 512
	// MinLeaseMs and MaxLeaseMs bound the lease a node may ask for.
	MinLeaseMs = 100
	MaxLeaseMs = 30_000
)

// WriteFrame writes one message.
func WriteFrame(w io.Writer, e *Envelope) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("refusing to send an invalid %s message: %w", e.Type, err)
	}
	body, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if len(body) > MaxFrameBytes {
		return fmt.Errorf("%s message of %d bytes is over the %d byte limit", e.Type, len(body), MaxFrameBytes)
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	_, err = w.Write(buf)
	return err
}

// ReadFrame reads one message and checks it (Validate).
func ReadFrame(r io.Reader) (*Envelope, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > MaxFrameBytes {
		return nil, fmt.Errorf("frame of %d bytes: want 1..%d", n, MaxFrameBytes)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("reading a %d byte frame: %w", n, err)
	}
	return DecodeEnvelope(body)
}

// DecodeEnvelope parses and checks one frame's JSON. Unknown fields are
// errors: both ends are the same program, and a field one end does not
// know means the versions differ.
func DecodeEnvelope(body []byte) (*Envelope, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var e Envelope
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("bad witness message: %w", err)
	}
	if dec.More() {
		return nil, errors.New("bad witness message: data after the JSON object")
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("bad %q message: %w", e.Type, err)
	}
	return &e, nil
}

// Validate checks that the envelope has exactly the body its type names
// and that the body is within bounds.
func (e *Envelope) Validate() error {
	bodies := 0
	for _, set := range []bool{e.Hello != nil, e.Report != nil, e.Verdict != nil, e.Refusal != nil} {
		if set {
			bodies++
		}
	}
	if bodies != 1 {
		return fmt.Errorf("%d bodies: want exactly one", bodies)
	}
	switch e.Type {
	case TypeHello:
		if e.Hello == nil {
			return errors.New("no hello body")
		}
		return e.Hello.validate()
	case TypeReport:
		if e.Report == nil {
			return errors.New("no report body")
		}
		return e.Report.validate()
	case TypeVerdict:
		if e.Verdict == nil {
			return errors.New("no verdict body")
		}
		return e.Verdict.validate()
	case TypeRefusal:
		if e.Refusal == nil {
			return errors.New("no refusal body")
		}
		if len(e.Refusal.Reason) > maxReasonBytes {
			return errors.New("reason too long")
		}
		return nil
	}
	return fmt.Errorf("unknown message type %q", e.Type)
}

func (h *Hello) validate() error {
	if h.Version != ProtocolVersion {
		return fmt.Errorf("protocol version %d: this witness speaks %d (run the same paddock version on nodes and witness)", h.Version, ProtocolVersion)
	}
	if len(h.ClusterID) != 32 {
		return fmt.Errorf("cluster id %q is not 32 hex digits", h.ClusterID)
	}
	return checkNodeID(h.NodeID)
}

func (r *Report) validate() error {
	if err := checkMembership(r.Membership); err != nil {
		return err
	}
	if r.ConfigVersion == 0 {
		return errors.New("config version 0")
	}
	if r.LeaseMs < MinLeaseMs || r.LeaseMs > MaxLeaseMs {
		return fmt.Errorf("lease %d ms: want %d..%d ms", r.LeaseMs, MinLeaseMs, MaxLeaseMs)
	}
	// The configuration is checked by quorum.Config.Validate where it is
	// used; here only its size, so that a report cannot make the witness
	// loop over thousands of nodes.
	if len(r.Config.Nodes) > quorum.MaxNodes {
		return fmt.Errorf("%d nodes in the configuration: at most %d", len(r.Config.Nodes), quorum.MaxNodes)
	}
	return nil
}

func (v *Verdict) validate() error {
	if len(v.Reason) > maxReasonBytes {
		return errors.New("reason too long")
	}
	if !v.Granted {
		return nil
	}
	if v.LeaseMs < MinLeaseMs || v.LeaseMs > MaxLeaseMs {
		return fmt.Errorf("lease %d ms: want %d..%d ms", v.LeaseMs, MinLeaseMs, MaxLeaseMs)
	}
	return checkMembership(v.Membership)
}

func checkNodeID(id quorum.NodeID) error {
	if id == 0 || id > quorum.MaxNodeID {
		return fmt.Errorf("node id %d: want 1..%d", id, quorum.MaxNodeID)
	}
	return nil
}

// checkMembership: 1..MaxNodes valid ids, sorted, no duplicates.
func checkMembership(m []quorum.NodeID) error {
	if len(m) == 0 || len(m) > quorum.MaxNodes {
		return fmt.Errorf("membership of %d nodes: want 1..%d", len(m), quorum.MaxNodes)
	}
	for i, id := range m {
		if err := checkNodeID(id); err != nil {
			return err
		}
		if i > 0 && m[i-1] >= id {
			return errors.New("membership is not sorted without duplicates")
		}
	}
	return nil
}

// sortedIDs returns a sorted copy without duplicates.
func sortedIDs(ids []quorum.NodeID) []quorum.NodeID {
	out := slices.Clone(ids)
	slices.Sort(out)
	return slices.Compact(out)
}
