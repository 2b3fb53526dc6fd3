package node

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"

	"github.com/paddock-io/paddock/blockrep"
)

// Limits of volumes.
const (
	MaxVolumes     = 256
	maxVolumeBytes = 1 << 50
	// maxReplicas: a generation's set travels in one peer message.
	maxReplicas = 8
)

// volumeNameRE: a volume's name is an NBD export name and a directory
// name, so it is kept plain.
var volumeNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// VolumeConfig is one replicated volume in the cluster configuration.
type VolumeConfig struct {
	Name      string   `json:"name"`
	ID        uint64   `json:"id"`
	SizeBytes int64    `json:"size_bytes"`
	Replicas  []uint32 `json:"replicas"` // node ids holding a copy
	// WriteQuorum is how many replicas must accept a write; 0 means a
	// majority. Below a majority two primaries could both win, so it is
	// refused.
	WriteQuorum int    `json:"write_quorum,omitempty"`
	OnNoQuorum  string `json:"on_no_quorum,omitempty"` // suspend (default) or io-error
	// Primary is the node that should serve the volume; it promotes
	// itself (epochs make a stale one harmless).
	Primary     uint32 `json:"primary"`
	RegionBytes int64  `json:"region_bytes,omitempty"` // resync granularity
	// ScrubIntervalHours is the time between background scrubs of the
	// primary; 0 means DefaultScrubIntervalHours.
	ScrubIntervalHours int `json:"scrub_interval_hours,omitempty"`
	// ResyncMaxBytesPerSecond caps resync (0: no cap); while clients
	// write, resync yields down to ResyncMinBytesPerSecond (DRBD's
	// c-max-rate and c-min-rate).
	ResyncMaxBytesPerSecond int64 `json:"resync_max_bytes_per_second,omitempty"`
	ResyncMinBytesPerSecond int64 `json:"resync_min_bytes_per_second,omitempty"`
}

// Background scrub: weekly (as Ceph's deep scrub and common ZFS practice),
// at a rate that leaves the disks to the guests.
const (
	DefaultScrubIntervalHours  = 168
	maxScrubIntervalHours      = 24 * 366
	backgroundScrubBytesPerSec = 64 << 20
)

// Volume finds a volume by name.
func (c *ClusterConfig) Volume(name string) (VolumeConfig, bool) {
	for _, v := range c.Volumes {
		if v.Name == name {
			return v, true
		}
	}
	return VolumeConfig{}, false
}

// NextVolumeID is one above every id used so far (ids are never reused,
// so an old replica directory can never be mistaken for a new volume's).
func (c *ClusterConfig) NextVolumeID() uint64 {
	next := c.LastVolumeID + 1
	for _, v := range c.Volumes {
		next = max(next, v.ID+1)
	}
	return next
}

// validateVolumes checks the volumes against the nodes.
func (c *ClusterConfig) validateVolumes() error {
	if len(c.Volumes) > MaxVolumes {
		return fmt.Errorf("%d volumes: at most %d", len(c.Volumes), MaxVolumes)
	}
	names, ids := map[string]bool{}, map[uint64]bool{}
	for _, v := range c.Volumes {
		if !volumeNameRE.MatchString(v.Name) {
			return fmt.Errorf("volume name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", v.Name)
		}
		if names[v.Name] {
			return fmt.Errorf("volume name %q is used twice", v.Name)
		}
		names[v.Name] = true
		if v.ID == 0 || ids[v.ID] {
			return fmt.Errorf("volume %q: id %d is zero or used twice", v.Name, v.ID)
		}
		ids[v.ID] = true
		if v.SizeBytes <= 0 || v.SizeBytes%blockrep.BlockBytes != 0 || v.SizeBytes > maxVolumeBytes {
			return fmt.Errorf("volume %q: size %d must be a positive multiple of %d up to %d", v.Name, v.SizeBytes, blockrep.BlockBytes, int64(maxVolumeBytes))
		}
		if len(v.Replicas) == 0 || len(v.Replicas) > maxReplicas {
			return fmt.Errorf("volume %q: %d replicas; 1 to %d", v.Name, len(v.Replicas), maxReplicas)
		}
		seen := map[uint32]bool{}
		for _, id := range v.Replicas {
			n, ok := c.Node(id)
			if !ok {
				return fmt.Errorf("volume %q: replica on node %d, which is not in the cluster", v.Name, id)
			}
			if n.StorageAddr == "" {
				return fmt.Errorf("volume %q: node %q has no storage address (set --storage-addr when it is created or joins)", v.Name, n.Name)
			}
			if seen[id] {
				return fmt.Errorf("volume %q: node %q holds two replicas", v.Name, n.Name)
			}
			seen[id] = true
		}
		if !seen[v.Primary] {
			return fmt.Errorf("volume %q: primary %d holds no replica", v.Name, v.Primary)
		}
		majority := len(v.Replicas)/2 + 1
		if v.WriteQuorum != 0 && (v.WriteQuorum < majority || v.WriteQuorum > len(v.Replicas)) {
			return fmt.Errorf("volume %q: write quorum %d must be between a majority (%d) and the replica count (%d); below a majority two primaries could both acknowledge writes", v.Name, v.WriteQuorum, majority, len(v.Replicas))
		}
		switch blockrep.OnNoQuorum(v.OnNoQuorum) {
		case "", blockrep.Suspend, blockrep.IOError:
		default:
			return fmt.Errorf("volume %q: on-no-quorum %q: want suspend or io-error", v.Name, v.OnNoQuorum)
		}
		if v.ResyncMaxBytesPerSecond < 0 || v.ResyncMinBytesPerSecond < 0 ||
			(v.ResyncMaxBytesPerSecond > 0 && v.ResyncMinBytesPerSecond > v.ResyncMaxBytesPerSecond) {
			return fmt.Errorf("volume %q: resync rates: the floor (%d B/s) must not exceed the ceiling (%d B/s)", v.Name, v.ResyncMinBytesPerSecond, v.ResyncMaxBytesPerSecond)
		}
		if v.ScrubIntervalHours < 0 || v.ScrubIntervalHours > maxScrubIntervalHours {
			return fmt.Errorf("volume %q: scrub interval %d hours: 0 (weekly) to %d", v.Name, v.ScrubIntervalHours, maxScrubIntervalHours)
		}
		// At most one replication message's payload: a region is read
		// and sent whole (a 64 MiB region made every resync of it, and a
		// recovering candidate's fetch, fail for good; found in review).
		if rb := v.RegionBytes; rb != 0 && (rb < blockrep.BlockBytes || rb%blockrep.BlockBytes != 0 || rb > blockrep.MaxPayloadBytes) {
			return fmt.Errorf("volume %q: resync granularity %d must be a multiple of %d up to %d MiB", v.Name, rb, blockrep.BlockBytes, blockrep.MaxPayloadBytes>>20)
		}
	}
	return nil
}

// replicationAddr is where a node serves the peer protocol: the storage
// address's IP, the port after the NBD port.
func replicationAddr(n NodeConfig) (string, error) {
	ap, err := netip.ParseAddrPort(n.StorageAddr)
	if err != nil {
		return "", fmt.Errorf("node %q has no storage address", n.Name)
	}
	if ap.Port() == 65535 {
		return "", fmt.Errorf("node %q storage port 65535 leaves no port for replication", n.Name)
	}
	return netip.AddrPortFrom(ap.Addr(), ap.Port()+1).String(), nil
}

func replicaIDs(v VolumeConfig) []blockrep.NodeID {
	out := make([]blockrep.NodeID, len(v.Replicas))
	for i, id := range v.Replicas {
		out[i] = blockrep.NodeID(id)
	}
	slices.Sort(out)
	return out
}
