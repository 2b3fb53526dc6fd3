package node

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/paddock-io/paddock/internal/atomicfile"
	"github.com/paddock-io/paddock/quorum/witness"
)

// witnessValidity is how long a witness certificate lasts (as long as a
// node's).
const witnessValidity = nodeValidity

// IssueWitnessCert makes a witness data directory in out, signed with the
// cluster CA of this node's data directory (what
// corosync-qdevice-net-certutil does for qnetd): the CA certificate, the
// witness's certificate and key, and witness.json naming the cluster.
// Copy out to the witness machine and run "paddock witness" there. The
// CA key is not copied: the witness signs nothing.
func IssueWitnessCert(d DataDir, out string) error {
	l, err := Load(d)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(out, witness.CertFile)); err == nil {
		return fmt.Errorf("%s already holds a witness certificate; use another --out or remove it", out)
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: witness.CommonName(l.Config.ClusterID)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(witnessValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, l.PKI.CACert, &key.PublicKey, l.PKI.CAKey)
	if err != nil {
		return err
	}
	keyBytes, err := keyPEM(key)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
	}{
		{witness.CAFile, l.PKI.CACertPEM},
		{witness.CertFile, pemBlock("CERTIFICATE", der)},
		{witness.KeyFile, keyBytes},
	}
	for _, f := range files {
		if err := atomicfile.Write(filepath.Join(out, f.name), f.data, 0o600); err != nil {
			return err
		}
	}
	return writeJSON(filepath.Join(out, witness.IdentityFile), witness.Identity{ClusterID: l.Config.ClusterID, ClusterName: l.Config.ClusterName}, 0o600)
}
