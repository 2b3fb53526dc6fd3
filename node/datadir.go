package node

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/paddock-io/paddock/internal/atomicfile"
)

// DataDir is a node's data directory.
type DataDir struct {
	Path string
}

func (d DataDir) file(name string) string { return filepath.Join(d.Path, name) }
func (d DataDir) keys() string            { return filepath.Join(d.Path, "keys") }

// SocketPath is the control socket.
func (d DataDir) SocketPath() string { return d.file("paddock.sock") }

// Exists reports whether the directory holds a node already.
func (d DataDir) Exists() bool {
	_, err := os.Stat(d.file("node.json"))
	return err == nil
}

// CreateOptions describe the first node of a new cluster.
type CreateOptions struct {
	ClusterName   string
	NodeName      string
	ClusterAddr   string
	StorageAddr   string
	MigrationAddr string
	TokenMs       int64
}

// CreateCluster makes a one-node cluster in an empty data directory: a
// cluster id, a CA, this node's certificate, the authkey and version 1 of
// the configuration.
func CreateCluster(d DataDir, o CreateOptions) (*ClusterConfig, error) {
	if d.Exists() {
		return nil, fmt.Errorf("%s already holds a node; use another --data-dir or remove it", d.Path)
	}
	if o.TokenMs == 0 {
		o.TokenMs = DefaultTokenMs
	}
	id := make([]byte, 16)
	rand.Read(id)
	cfg := &ClusterConfig{
		Version:     1,
		ClusterName: o.ClusterName,
		ClusterID:   hex.EncodeToString(id),
		TokenMs:     o.TokenMs,
		Nodes: []NodeConfig{{
			ID: 1, Name: o.NodeName, Votes: 1,
			ClusterAddr: o.ClusterAddr, StorageAddr: o.StorageAddr, MigrationAddr: o.MigrationAddr,
		}},
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ca, caKey, err := newCA(o.ClusterName)
	if err != nil {
		return nil, err
	}
	authKey := make([]byte, 32)
	rand.Read(authKey)
	caKeyPEM, err := keyPEM(caKey)
	if err != nil {
		return nil, err
	}
	if err := d.install(cfg, Identity{ID: 1, Name: o.NodeName, ClusterID: cfg.ClusterID}, pemBlock("CERTIFICATE", ca.Raw), caKeyPEM, authKey); err != nil {
		return nil, err
	}
	return cfg, nil
}

// install writes everything a node needs, issuing its certificate with the
// CA key. It is used by create and by join (with what the cluster sent).
func (d DataDir) install(cfg *ClusterConfig, ident Identity, caPEM, caKeyPEM, authKey []byte) error {
	if err := os.MkdirAll(d.keys(), 0o700); err != nil {
		return err
	}
	me, ok := cfg.Node(ident.ID)
	if !ok {
		return fmt.Errorf("node %d is not in the configuration", ident.ID)
	}
	caCert, err := parseCertPEM(caPEM)
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	caKey, err := parseKeyPEM(caKeyPEM)
	if err != nil {
		return fmt.Errorf("cluster CA key: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := issueNodeCert(caCert, caKey, &key.PublicKey, me)
	if err != nil {
		return err
	}
	nodeKeyPEM, err := keyPEM(key)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
	}{
		{"keys/ca.pem", caPEM},
		{"keys/ca-key.pem", caKeyPEM},
		{"keys/node.pem", pemBlock("CERTIFICATE", der)},
		{"keys/node-key.pem", nodeKeyPEM},
		{"keys/authkey", authKey},
	}
	for _, f := range files {
		if err := atomicfile.Write(d.file(f.name), f.data, 0o600); err != nil {
			return err
		}
	}
	if err := writeJSON(d.file("cluster.json"), cfg, 0o600); err != nil {
		return err
	}
	// node.json last: its presence marks a complete data directory.
	return writeJSON(d.file("node.json"), ident, 0o600)
}

// Loaded is everything read from a data directory.
type Loaded struct {
	Identity Identity
	Config   *ClusterConfig
	PKI      *PKI
	AuthKey  []byte
}

// Load reads and checks a data directory; every error names the file.
func Load(d DataDir) (*Loaded, error) {
	if !d.Exists() {
		return nil, fmt.Errorf("%s holds no node: run \"paddock cluster create\" or \"paddock cluster join\" first", d.Path)
	}
	var l Loaded
	if err := readJSON(d.file("node.json"), &l.Identity); err != nil {
		return nil, err
	}
	l.Config = &ClusterConfig{}
	if err := readJSON(d.file("cluster.json"), l.Config); err != nil {
		return nil, err
	}
	if err := l.Config.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", d.file("cluster.json"), err)
	}
	if l.Config.ClusterID != l.Identity.ClusterID {
		return nil, fmt.Errorf("%s belongs to cluster %s but cluster.json is for %s", d.file("node.json"), l.Identity.ClusterID, l.Config.ClusterID)
	}
	if n, ok := l.Config.Node(l.Identity.ID); !ok || n.Name != l.Identity.Name {
		return nil, fmt.Errorf("node %d (%s) is not in %s (was it removed from the cluster?)", l.Identity.ID, l.Identity.Name, d.file("cluster.json"))
	}
	var err error
	if l.PKI, err = loadPKI(d.keys()); err != nil {
		return nil, err
	}
	if l.AuthKey, err = os.ReadFile(d.file("keys/authkey")); err != nil {
		return nil, err
	}
	if len(l.AuthKey) != 32 {
		return nil, fmt.Errorf("%s is corrupt: %d bytes, want 32", d.file("keys/authkey"), len(l.AuthKey))
	}
	return &l, nil
}

// SaveConfig writes a newer committed configuration.
func (d DataDir) SaveConfig(cfg *ClusterConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	return writeJSON(d.file("cluster.json"), cfg, 0o600)
}

// NextIncarnation increments and persists the start counter that makes
// heartbeats of an older life of this node recognisable as such.
func (d DataDir) NextIncarnation() (uint64, error) {
	path := d.file("incarnation")
	var n uint64
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		n, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s is corrupt: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return 0, err
	}
	n++
	return n, atomicfile.Write(path, []byte(strconv.FormatUint(n, 10)+"\n"), 0o600)
}
