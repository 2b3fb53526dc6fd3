package node

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Joining a cluster (like "pvecm add"): an existing node prints a one-time
// token; the new node presents it over TLS to that node, which adds it to
// the configuration (a configuration change, so it needs quorum) and sends
// back the configuration, the CA and the authkey.
//
// The token carries a secret and a prefix of the cluster CA's SHA-256
// fingerprint: the joiner checks the server's certificate chain against it
// before sending anything, so a man in the middle learns nothing usable.
// The server keeps only a hash of the secret, and a token works once.

const (
	tokenPrefix     = "pdk1"
	tokenSecretLen  = 16
	tokenFPHexLen   = 32
	tokenTTL        = 24 * time.Hour
	maxTokens       = 64
	tokensFileName  = "tokens.json"
	joinHTTPTimeout = 60 * time.Second
)

type tokenRecord struct {
	Hash      string    `json:"hash"`
	ExpiresAt time.Time `json:"expires_at"`
	Used      bool      `json:"used"`
}

type tokenStore struct {
	mu   sync.Mutex
	path string
}

func (ts *tokenStore) load() ([]tokenRecord, error) {
	var recs []tokenRecord
	err := readJSON(ts.path, &recs)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return recs, err
}

// issue makes a token and records its hash.
func (ts *tokenStore) issue(caFingerprint string) (string, time.Time, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	recs, err := ts.load()
	if err != nil {
		return "", time.Time{}, err
	}
	now := time.Now()
	live := recs[:0]
	for _, r := range recs {
		if !r.Used && now.Before(r.ExpiresAt) {
			live = append(live, r)
		}
	}
	if len(live) >= maxTokens {
		return "", time.Time{}, fmt.Errorf("%d unused tokens exist already; use or let them expire", len(live))
	}
	secret := make([]byte, tokenSecretLen)
	rand.Read(secret)
	exp := now.Add(tokenTTL)
	live = append(live, tokenRecord{Hash: hashSecret(secret), ExpiresAt: exp})
	if err := writeJSON(ts.path, live, 0o600); err != nil {
		return "", time.Time{}, err
	}
	tok := strings.Join([]string{tokenPrefix, base64.RawURLEncoding.EncodeToString(secret), caFingerprint[:tokenFPHexLen]}, ".")
	return tok, exp, nil
}

// consume marks a token used; it fails for unknown, used or expired ones.
func (ts *tokenStore) consume(secret []byte) error {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	recs, err := ts.load()
	if err != nil {
		return err
	}
	h := hashSecret(secret)
	for i, r := range recs {
		if r.Hash != h {
			continue
		}
		switch {
		case r.Used:
			return errors.New("this join token was used already")
		case time.Now().After(r.ExpiresAt):
			return errors.New("this join token has expired")
		}
		recs[i].Used = true
		return writeJSON(ts.path, recs, 0o600)
	}
	return errors.New("unknown join token")
}

func hashSecret(s []byte) string {
	sum := sha256.Sum256(s)
	return hex.EncodeToString(sum[:])
}

// ParsedToken is a join token taken apart.
type ParsedToken struct {
	Secret        []byte
	CAFingerprint string // a prefix, hex
}

// ParseToken checks a token's form.
func ParseToken(tok string) (ParsedToken, error) {
	parts := strings.Split(strings.TrimSpace(tok), ".")
	if len(parts) != 3 || parts[0] != tokenPrefix {
		return ParsedToken{}, errors.New("not a paddock join token (want pdk1.SECRET.FINGERPRINT, from \"paddock cluster add-token\")")
	}
	secret, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || len(secret) != tokenSecretLen {
		return ParsedToken{}, errors.New("join token: malformed secret")
	}
	if _, err := hex.DecodeString(parts[2]); err != nil || len(parts[2]) != tokenFPHexLen {
		return ParsedToken{}, errors.New("join token: malformed CA fingerprint")
	}
	return ParsedToken{Secret: secret, CAFingerprint: parts[2]}, nil
}

// JoinRequest is what a joining node sends.
type JoinRequest struct {
	Secret        []byte `json:"secret"`
	NodeName      string `json:"node_name"`
	ClusterAddr   string `json:"cluster_addr"`
	StorageAddr   string `json:"storage_addr,omitempty"`
	MigrationAddr string `json:"migration_addr,omitempty"`
}

// JoinReply is what it gets back.
type JoinReply struct {
	NodeID   uint32         `json:"node_id"`
	Config   *ClusterConfig `json:"config"`
	CAPEM    []byte         `json:"ca_pem"`
	CAKeyPEM []byte         `json:"ca_key_pem"`
	AuthKey  []byte         `json:"authkey"`
}

// joinHandler serves POST /join/v1 on the cluster address.
func (d *Daemon) joinHandler(w http.ResponseWriter, r *http.Request) {
	var req JoinRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if err := d.tokens.consume(req.Secret); err != nil {
		d.log.Warn("join refused", "node_name", req.NodeName, "from", r.RemoteAddr, "err", err)
		writeError(w, http.StatusForbidden, err)
		return
	}
	var newID uint32
	cfg, err := d.conf.Propose(r.Context(), func(cur *ClusterConfig) (*ClusterConfig, error) {
		if _, ok := cur.NodeByName(req.NodeName); ok {
			return nil, fmt.Errorf("a node named %q is in the cluster already", req.NodeName)
		}
		next := cloneConfig(cur)
		newID = next.NextNodeID()
		next.Nodes = append(next.Nodes, NodeConfig{ID: newID, Name: req.NodeName, Votes: 1,
			ClusterAddr: req.ClusterAddr, StorageAddr: req.StorageAddr, MigrationAddr: req.MigrationAddr})
		return next, nil
	})
	if err != nil {
		d.log.Warn("join failed", "node_name", req.NodeName, "err", err)
		writeError(w, http.StatusConflict, err)
		return
	}
	caKeyPEM, err := keyPEM(d.loaded.PKI.CAKey)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	d.log.Info("node joined", "node_name", req.NodeName, "id", newID, "config_version", cfg.Version)
	writeJSONResponse(w, http.StatusOK, JoinReply{NodeID: newID, Config: cfg, CAPEM: d.loaded.PKI.CACertPEM, CAKeyPEM: caKeyPEM, AuthKey: d.loaded.AuthKey})
}

func cloneConfig(c *ClusterConfig) *ClusterConfig {
	b, _ := json.Marshal(c)
	var out ClusterConfig
	json.Unmarshal(b, &out)
	return &out
}

// JoinOptions describe the joining node.
type JoinOptions struct {
	Addr          string // an existing node's cluster address
	Token         string
	NodeName      string
	ClusterAddr   string
	StorageAddr   string
	MigrationAddr string
}

// JoinCluster joins through an existing node and installs the data dir.
func JoinCluster(ctx context.Context, d DataDir, o JoinOptions) (*ClusterConfig, uint32, error) {
	if d.Exists() {
		return nil, 0, fmt.Errorf("%s already holds a node; use another --data-dir or remove it", d.Path)
	}
	tok, err := ParseToken(o.Token)
	if err != nil {
		return nil, 0, err
	}
	tlsCfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified below against the token's pin
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyPinnedChain(raw, tok.CAFingerprint)
		},
	}
	client := &http.Client{Timeout: joinHTTPTimeout, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	body, _ := json.Marshal(JoinRequest{Secret: tok.Secret, NodeName: o.NodeName, ClusterAddr: o.ClusterAddr, StorageAddr: o.StorageAddr, MigrationAddr: o.MigrationAddr})
	req, err := http.NewRequestWithContext(ctx, "POST", "https://"+o.Addr+"/join/v1", strings.NewReader(string(body)))
	if err != nil {
		return nil, 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("joining through %s: %w", o.Addr, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxControlBodyBytes))
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		var e apiError
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return nil, 0, fmt.Errorf("join refused: %s", e.Error)
		}
		return nil, 0, fmt.Errorf("join refused: %s", resp.Status)
	}
	var rep JoinReply
	if err := json.Unmarshal(data, &rep); err != nil || rep.Config == nil {
		return nil, 0, fmt.Errorf("join: malformed reply: %v", err)
	}
	if err := rep.Config.Validate(); err != nil {
		return nil, 0, fmt.Errorf("join: the cluster sent an invalid configuration: %w", err)
	}
	if n, ok := rep.Config.Node(rep.NodeID); !ok || n.Name != o.NodeName {
		return nil, 0, errors.New("join: the configuration sent does not hold this node")
	}
	if len(rep.AuthKey) != 32 {
		return nil, 0, errors.New("join: malformed authkey")
	}
	ident := Identity{ID: rep.NodeID, Name: o.NodeName, ClusterID: rep.Config.ClusterID}
	if err := d.install(rep.Config, ident, rep.CAPEM, rep.CAKeyPEM, rep.AuthKey); err != nil {
		return nil, 0, err
	}
	return rep.Config, rep.NodeID, nil
}

// verifyPinnedChain checks that the server's chain ends in a CA whose
// fingerprint starts with pin and that the leaf is signed by it.
func verifyPinnedChain(raw [][]byte, pin string) error {
	if len(raw) < 2 {
		return errors.New("server sent no CA certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, b := range raw {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return err
		}
		certs[i] = c
	}
	ca := certs[len(certs)-1]
	if !strings.HasPrefix(Fingerprint(ca), pin) {
		return errors.New("the server's cluster CA does not match the join token: wrong address, or someone in the middle")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}
