package node

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	nodeValidity = 5 * 365 * 24 * time.Hour
)

// PKI is a cluster CA and one node's certificate.
type PKI struct {
	CACert    *x509.Certificate
	CACertPEM []byte
	CAKey     *ecdsa.PrivateKey
	NodeCert  tls.Certificate
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// newCA makes a self-signed cluster CA.
func newCA(clusterName string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "paddock cluster CA " + clusterName},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// issueNodeCert signs a certificate for a node's public key, valid for its
// addresses, usable as TLS server and client.
func issueNodeCert(ca *x509.Certificate, caKey *ecdsa.PrivateKey, pub *ecdsa.PublicKey, n NodeConfig) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: n.Name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(nodeValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{n.Name},
	}
	for _, a := range []string{n.ClusterAddr, n.StorageAddr, n.MigrationAddr} {
		if ap, err := netip.ParseAddrPort(a); err == nil {
			ip := net.IP(ap.Addr().AsSlice())
			if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		}
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
}

// Fingerprint is the SHA-256 of a certificate's DER, hex: what a join
// token pins.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func keyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pemBlock("EC PRIVATE KEY", der), nil
}

func parseKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	return x509.ParseECPrivateKey(blk.Bytes)
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// loadPKI reads the keys directory.
func loadPKI(dir string) (*PKI, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, name), err)
		}
		return b, nil
	}
	caPEM, err := read("ca.pem")
	if err != nil {
		return nil, err
	}
	ca, err := parseCertPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%s/ca.pem is corrupt: %w", dir, err)
	}
	caKeyPEM, err := read("ca-key.pem")
	if err != nil {
		return nil, err
	}
	caKey, err := parseKeyPEM(caKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s/ca-key.pem is corrupt: %w", dir, err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"))
	if err != nil {
		return nil, fmt.Errorf("node certificate in %s: %w", dir, err)
	}
	// Send the CA with our certificate: a joining node pins it.
	cert.Certificate = append(cert.Certificate, ca.Raw)
	return &PKI{CACert: ca, CACertPEM: caPEM, CAKey: caKey, NodeCert: cert}, nil
}

// ServerTLS is the TLS config for cluster-internal servers: our node
// certificate, clients verified against the cluster CA when they present
// one.
func (p *PKI) ServerTLS(requireClientCert bool) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(p.CACert)
	auth := tls.VerifyClientCertIfGiven
	if requireClientCert {
		auth = tls.RequireAndVerifyClientCert
	}
	return &tls.Config{Certificates: []tls.Certificate{p.NodeCert}, ClientCAs: pool, ClientAuth: auth, MinVersion: tls.VersionTLS13}
}

// ClientTLS is the TLS config for connecting to another node.
func (p *PKI) ClientTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(p.CACert)
	return &tls.Config{Certificates: []tls.Certificate{p.NodeCert}, RootCAs: pool, MinVersion: tls.VersionTLS13}
}
