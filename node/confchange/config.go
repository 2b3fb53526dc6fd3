package confchange

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// NodeID is a node's numeric id, as in the cluster configuration. 0 is
// never a node.
type NodeID uint32

// Digest identifies a configuration: SHA-256 over its version and data.
// Two nodes hold the same configuration exactly when their digests match.
type Digest [sha256.Size]byte

// String is the first 4 bytes in hex: enough to tell configurations apart
// in logs and status output.
func (d Digest) String() string { return hex.EncodeToString(d[:4]) }

// Config is one version of the cluster configuration. Data is opaque to
// this package except through Options.Members, which reads the members and
// their votes out of it. A Config is immutable once made: nobody (this
// package, the daemon) may modify Data in place, which lets outputs share
// it without copies.
type Config struct {
	Version uint64
	Data    []byte
	Digest  Digest
}

// NewConfig makes a configuration with its digest. Data is copied.
func NewConfig(version uint64, data []byte) Config {
	d := append([]byte(nil), data...)
	return Config{Version: version, Data: d, Digest: digestOf(version, d)}
}

func digestOf(version uint64, data []byte) Digest {
	h := sha256.New()
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], version)
	h.Write([]byte("paddock confchange config\x00"))
	h.Write(v[:])
	h.Write(data)
	var d Digest
	h.Sum(d[:0])
	return d
}

// IsZero says whether c is the empty configuration (no version).
func (c Config) IsZero() bool {
	return c.Version == 0 && len(c.Data) == 0 && c.Digest == Digest{}
}

// check validates a configuration that claims to be real: a version in
// range, bounded data, and a digest that matches.
func (c Config) check(maxBytes int) error {
	if c.Version == 0 || c.Version > MaxVersion {
		return fmt.Errorf("configuration version %d is outside 1..%d", c.Version, uint64(MaxVersion))
	}
	if len(c.Data) > maxBytes {
		return fmt.Errorf("configuration version %d is %d bytes; at most %d", c.Version, len(c.Data), maxBytes)
	}
	if digestOf(c.Version, c.Data) != c.Digest {
		return fmt.Errorf("configuration version %d: digest %s does not match its data", c.Version, c.Digest)
	}
	return nil
}

// String is "v<version>:<digest>".
func (c Config) String() string {
	if c.IsZero() {
		return "-"
	}
	return fmt.Sprintf("v%d:%s", c.Version, c.Digest)
}
