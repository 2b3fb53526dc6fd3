package witness

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/paddock-io/paddock/internal/atomicfile"
	"github.com/paddock-io/paddock/quorum"
)

// Files of a witness data directory. "paddock cluster witness-cert" on a
// cluster node writes the first four; the witness writes state.json.
const (
	CAFile       = "ca.pem"
	CertFile     = "witness.pem"
	KeyFile      = "witness-key.pem"
	IdentityFile = "witness.json"
	StateFile    = "state.json"
	// maxStateBytes bounds state.json (a 32-node configuration and a
	// membership: a few KiB).
	maxStateBytes = 64 << 10
)

// Identity is witness.json: the cluster this witness serves.
type Identity struct {
	ClusterID   string `json:"cluster_id"`
	ClusterName string `json:"cluster_name"`
}

// State is what the witness keeps across a restart (state.json).
type State struct {
	// ConfigVersion and Config are the newest configuration a node
	// reported: the node list and algorithm to arbitrate with, so that a
	// restarted witness can decide before every node reported again.
	ConfigVersion uint64         `json:"config_version,omitempty"`
	Config        *quorum.Config `json:"config,omitempty"`
	// Active is the Arbiter's memory: the membership of the partition
	// that last got the vote. Without it a restarted witness would give
	// its vote to any half of the cluster, even one that lost quorum
	// (DESIGN invariant 3).
	Active []quorum.NodeID `json:"active,omitempty"`
	// MaxLeaseMs is the longest lease ever granted. A restarted witness
	// does not know which leases of its previous life are still running,
	// so it grants nothing for this long after it starts.
	MaxLeaseMs int64 `json:"max_lease_ms,omitempty"`
}

// ParseIdentity reads witness.json and checks it.
func ParseIdentity(b []byte) (Identity, error) {
	var id Identity
	if len(b) > maxStateBytes {
		return id, fmt.Errorf("%d bytes: more than %d", len(b), maxStateBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&id); err != nil {
		return Identity{}, err
	}
	if dec.More() {
		return Identity{}, errors.New("data after the JSON object")
	}
	if _, err := hex.DecodeString(id.ClusterID); err != nil || len(id.ClusterID) != 32 {
		return Identity{}, fmt.Errorf("cluster_id %q is not 32 hex digits", id.ClusterID)
	}
	if len(id.ClusterName) > 63 {
		return Identity{}, errors.New("cluster_name is longer than 63 bytes")
	}
	return id, nil
}

// ParseState reads state.json and checks it.
func ParseState(b []byte) (State, error) {
	var s State
	if len(b) > maxStateBytes {
		return s, fmt.Errorf("%d bytes: more than %d", len(b), maxStateBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return State{}, err
	}
	if dec.More() {
		return State{}, errors.New("data after the JSON object")
	}
	if s.MaxLeaseMs < 0 || s.MaxLeaseMs > MaxLeaseMs {
		return State{}, fmt.Errorf("max_lease_ms %d: want 0..%d", s.MaxLeaseMs, MaxLeaseMs)
	}
	if (s.Config == nil) != (s.ConfigVersion == 0) {
		return State{}, errors.New("config and config_version must be given together")
	}
	if s.Config != nil {
		if err := s.Config.Validate(); err != nil {
			return State{}, fmt.Errorf("config: %w", err)
		}
	}
	if len(s.Active) > 0 {
		if err := checkMembership(s.Active); err != nil {
			return State{}, fmt.Errorf("active: %w", err)
		}
	}
	return s, nil
}

// Dir is a witness data directory.
type Dir struct {
	Path     string
	Identity Identity
	CA       *x509.Certificate
	Cert     tls.Certificate
}

func (d *Dir) file(name string) string { return filepath.Join(d.Path, name) }

// LoadDir reads a witness data directory; every error names the file.
func LoadDir(path string) (*Dir, error) {
	d := &Dir{Path: path}
	b, err := os.ReadFile(d.file(IdentityFile))
	if err != nil {
		return nil, fmt.Errorf("%w (make the directory with \"paddock cluster witness-cert --out DIR\" on a cluster node and copy it here)", err)
	}
	if d.Identity, err = ParseIdentity(b); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", d.file(IdentityFile), err)
	}
	caPEM, err := os.ReadFile(d.file(CAFile))
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(caPEM)
	if blk == nil {
		return nil, fmt.Errorf("%s holds no PEM certificate", d.file(CAFile))
	}
	if d.CA, err = x509.ParseCertificate(blk.Bytes); err != nil {
		return nil, fmt.Errorf("%s: %w", d.file(CAFile), err)
	}
	if d.Cert, err = tls.LoadX509KeyPair(d.file(CertFile), d.file(KeyFile)); err != nil {
		return nil, fmt.Errorf("witness certificate in %s: %w", path, err)
	}
	leaf, err := verifyChain(d.CA, d.Cert.Certificate, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.file(CertFile), err)
	}
	if leaf.Subject.CommonName != CommonName(d.Identity.ClusterID) {
		return nil, fmt.Errorf("%s is for %q, not the witness of cluster %s", d.file(CertFile), leaf.Subject.CommonName, d.Identity.ClusterID)
	}
	return d, nil
}

// LoadState reads state.json; a missing file is a new witness.
func (d *Dir) LoadState() (State, error) {
	b, err := os.ReadFile(d.file(StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, err
	}
	s, err := ParseState(b)
	if err != nil {
		return State{}, fmt.Errorf("%s is corrupt: %w", d.file(StateFile), err)
	}
	return s, nil
}

// SaveState replaces state.json (fsynced before it returns).
func (d *Dir) SaveState(s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(d.file(StateFile), append(b, '\n'), 0o600)
}
