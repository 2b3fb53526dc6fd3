package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/paddock-io/paddock/migrate"
)

// migrationTLS says where a guest process gets the certificate it shows
// and the CA it trusts for migrations. Mutual TLS is always on; the only
// choice is whose CA.
type migrationTLS struct {
	dataDir  string // a node's data dir: keys/ca.pem, keys/node.pem, keys/node-key.pem
	tlsDir   string // ca.pem, cert.pem, key.pem; or a throw-away CA with insecureSelfSigned
	insecure bool
}

// selfSignedCAFile holds a throw-away CA's certificate and key, made on
// first use by --insecure-self-signed and shared by every process that
// points at the same --tls-dir.
const selfSignedCAFile = "self-signed-ca.pem"

func (m migrationTLS) identity(name string, hosts ...string) (migrate.TLSIdentity, error) {
	switch {
	case m.dataDir != "" && m.tlsDir != "":
		return migrate.TLSIdentity{}, errors.New("give --data-dir or --tls-dir, not both")
	case m.dataDir != "":
		k := filepath.Join(m.dataDir, "keys")
		return loadIdentity(filepath.Join(k, "ca.pem"), filepath.Join(k, "node.pem"), filepath.Join(k, "node-key.pem"))
	case m.tlsDir != "" && !m.insecure:
		return loadIdentity(filepath.Join(m.tlsDir, "ca.pem"), filepath.Join(m.tlsDir, "cert.pem"), filepath.Join(m.tlsDir, "key.pem"))
	case m.tlsDir != "":
		ca, err := selfSignedCA(m.tlsDir)
		if err != nil {
			return migrate.TLSIdentity{}, err
		}
		return ca.Identity(name, hosts...)
	}
	return migrate.TLSIdentity{}, errors.New("migration needs mutual TLS: give --data-dir (the cluster CA), or --tls-dir with ca.pem, cert.pem and key.pem, or --tls-dir DIR --insecure-self-signed for a throw-away CA (tests only)")
}

func loadIdentity(caPath, certPath, keyPath string) (migrate.TLSIdentity, error) {
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return migrate.TLSIdentity{}, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return migrate.TLSIdentity{}, fmt.Errorf("%s holds no certificate", caPath)
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return migrate.TLSIdentity{}, fmt.Errorf("loading %s and %s: %w", certPath, keyPath, err)
	}
	return migrate.TLSIdentity{Cert: cert, CAs: pool}, nil
}

// selfSignedCA loads the throw-away CA in dir, or makes it. Creation is a
// hard link of a complete file, so two processes starting at once agree on
// one CA.
func selfSignedCA(dir string) (*migrate.SelfSignedCA, error) {
	path := filepath.Join(dir, selfSignedCAFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		ca, err := migrate.NewSelfSignedCA()
		if err != nil {
			return nil, err
		}
		certPEM, keyPEM, err := ca.PEM()
		if err != nil {
			return nil, err
		}
		tmp, err := os.CreateTemp(dir, ".ca-*")
		if err != nil {
			return nil, err
		}
		defer os.Remove(tmp.Name())
		if _, err := tmp.Write(append(certPEM, keyPEM...)); err != nil {
			tmp.Close()
			return nil, err
		}
		if err := tmp.Close(); err != nil {
			return nil, err
		}
		if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, err
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certBlock, rest := pem.Decode(b)
	if certBlock == nil {
		return nil, fmt.Errorf("%s: no PEM", path)
	}
	return migrate.LoadSelfSignedCA(pem.EncodeToMemory(certBlock), rest)
}
