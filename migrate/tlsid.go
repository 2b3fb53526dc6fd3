package migrate

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// TLSIdentity is what one side of a migration proves and trusts: its own
// certificate, and the CA that must have signed the peer's. Both sides
// present certificates (mutual authentication); in a cluster they come from
// the cluster CA (node/ holds it), in tests and the standalone CLI from a
// SelfSignedCA.
type TLSIdentity struct {
	Cert tls.Certificate
	CAs  *x509.CertPool
}

// alpnMigrate names the protocol in the TLS handshake, so a migration
// endpoint never talks to something else that happens to share the CA.
const alpnMigrate = "paddock-migrate/1"

func (id TLSIdentity) check() error {
	if len(id.Cert.Certificate) == 0 || id.CAs == nil {
		return errors.New("migrate: TLS identity needs a certificate and a CA pool")
	}
	return nil
}

func (id TLSIdentity) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		ClientCAs:    id.CAs,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{alpnMigrate},
		// Full-size records from the first byte: this is bulk transfer.
		DynamicRecordSizingDisabled: true,
	}
}

func (id TLSIdentity) clientConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:                  tls.VersionTLS13,
		Certificates:                []tls.Certificate{id.Cert},
		RootCAs:                     id.CAs,
		ServerName:                  serverName,
		NextProtos:                  []string{alpnMigrate},
		DynamicRecordSizingDisabled: true,
	}
}

// SelfSignedCA is a throw-away CA for tests and the standalone CLI
// (`paddock guest receive` without a cluster). Not for production: its key
// lives wherever its PEM is written.
type SelfSignedCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

// selfSignedValidity bounds how long a throw-away certificate is good for.
const selfSignedValidity = 7 * 24 * time.Hour

// NewSelfSignedCA makes a P-256 CA valid for a week.
func NewSelfSignedCA() (*SelfSignedCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "paddock migrate self-signed CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(selfSignedValidity),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return newSelfSignedCA(cert, key), nil
}

func newSelfSignedCA(cert *x509.Certificate, key *ecdsa.PrivateKey) *SelfSignedCA {
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &SelfSignedCA{cert: cert, key: key, pool: pool}
}

// PEM returns the CA certificate and key, for a CLI to write to a file that
// both sides of a standalone migration load with LoadSelfSignedCA.
func (ca *SelfSignedCA) PEM() (certPEM, keyPEM []byte, err error) {
	der, err := x509.MarshalECPrivateKey(ca.key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// LoadSelfSignedCA reads what PEM wrote.
func LoadSelfSignedCA(certPEM, keyPEM []byte) (*SelfSignedCA, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || cb.Type != "CERTIFICATE" || kb == nil || kb.Type != "EC PRIVATE KEY" {
		return nil, errors.New("migrate: self-signed CA: want a CERTIFICATE and an EC PRIVATE KEY PEM block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("migrate: self-signed CA certificate: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("migrate: self-signed CA key: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("migrate: self-signed CA certificate is not a CA")
	}
	return newSelfSignedCA(cert, key), nil
}

// Identity issues a certificate named name, valid for client and server
// authentication, for the given DNS names and IP addresses.
func (ca *SelfSignedCA) Identity(name string, hosts ...string) (TLSIdentity, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return TLSIdentity{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return TLSIdentity{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(selfSignedValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return TLSIdentity{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return TLSIdentity{}, err
	}
	return TLSIdentity{
		Cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		CAs:  ca.pool,
	}, nil
}
