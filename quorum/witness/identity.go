package witness

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Who is who in TLS. Every certificate is signed by the cluster CA.
// A node's certificate has its node name as CommonName (node names are
// letters, digits, '.', '_' and '-'); the witness's certificate has
// CommonName "paddock witness <cluster id>", which no node name can be,
// so a node's certificate cannot stand in for the witness's, and a
// witness certificate of another cluster (another CA anyway) names
// another id.

const cnPrefix = "paddock witness "

// CommonName is the CommonName of a cluster's witness certificate.
func CommonName(clusterID string) string { return cnPrefix + clusterID }

// IsWitnessName reports whether a CommonName is a witness's.
func IsWitnessName(cn string) bool { return strings.HasPrefix(cn, cnPrefix) }

func caPool(ca *x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool
}

// verifyChain checks a peer's certificate chain against the cluster CA
// for a key usage and returns the leaf.
func verifyChain(ca *x509.Certificate, rawCerts [][]byte, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	if len(rawCerts) == 0 {
		return nil, errors.New("no certificate presented")
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: caPool(ca), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: time.Now()})
	if err != nil {
		return nil, fmt.Errorf("certificate %q is not signed by this cluster's CA: %w", certs[0].Subject.CommonName, err)
	}
	return certs[0], nil
}

// ClientTLS is a node's TLS configuration for the witness: it presents
// the node's certificate and accepts only the witness certificate of
// this cluster, signed by the cluster CA. The witness is reached by IP,
// and its certificate names no address, so the usual host name check is
// replaced by the CommonName check.
func ClientTLS(ca *x509.Certificate, nodeCert tls.Certificate, clusterID string) *tls.Config {
	want := CommonName(clusterID)
	return &tls.Config{
		Certificates:       []tls.Certificate{nodeCert},
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified below, against the cluster CA
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := verifyChain(ca, rawCerts, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("witness: %w", err)
			}
			if leaf.Subject.CommonName != want {
				return fmt.Errorf("the server is %q, not this cluster's witness (%q)", leaf.Subject.CommonName, want)
			}
			return nil
		},
	}
}

// ServerTLS is the witness's TLS configuration: its own certificate, and
// nodes must present a certificate of the cluster CA (checked again,
// name against node id, after Hello).
func ServerTLS(ca *x509.Certificate, witnessCert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{witnessCert},
		ClientCAs:    caPool(ca),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}
}
