package node

import (
	"strings"
	"testing"

	"github.com/paddock-io/paddock/blockrep"
)

// TestVolumeRegionBytesBound: a region is sent whole in one replication
// message, so the resync granularity may not exceed a message's payload.
func TestVolumeRegionBytesBound(t *testing.T) {
	cfg := func(rb int64) *ClusterConfig {
		return &ClusterConfig{
			Nodes:   []NodeConfig{{ID: 1, Name: "a", StorageAddr: "10.0.0.1:10809"}},
			Volumes: []VolumeConfig{{Name: "vm", ID: 1, SizeBytes: 64 << 20, Replicas: []uint32{1}, Primary: 1, RegionBytes: rb}},
		}
	}
	for _, ok := range []int64{0, blockrep.BlockBytes, 64 << 10, blockrep.MaxPayloadBytes} {
		if err := cfg(ok).validateVolumes(); err != nil {
			t.Errorf("region %d refused: %v", ok, err)
		}
	}
	for _, bad := range []int64{blockrep.MaxPayloadBytes + blockrep.BlockBytes, 64 << 20, blockrep.BlockBytes + 1} {
		if err := cfg(bad).validateVolumes(); err == nil || !strings.Contains(err.Error(), "granularity") {
			t.Errorf("region %d: %v; want a granularity error", bad, err)
		}
	}
}
