package node

import (
	"strings"
	"testing"
)

// handoffPlan refuses what cannot be handed off before anything changes,
// and says where each volume's primary is.
func TestHandoffPlan(t *testing.T) {
	cfg := &ClusterConfig{
		Nodes: []NodeConfig{{ID: 1, Name: "n1"}, {ID: 2, Name: "n2"}, {ID: 3, Name: "n3"}},
		Volumes: []VolumeConfig{
			{Name: "vm", ID: 1, Replicas: []uint32{1, 2, 3}, Primary: 1},
			{Name: "pair", ID: 2, Replicas: []uint32{1, 2}, Primary: 2},
		},
	}
	to, plan, vols, err := handoffPlan(cfg, HandoffRequest{Volumes: []string{"vm", "pair"}, Node: "n2"})
	if err != nil || to.ID != 2 || len(vols) != 2 || plan[0] != (HandoffVolume{Name: "vm", From: "n1", To: "n2"}) ||
		plan[1] != (HandoffVolume{Name: "pair", From: "n2", To: "n2"}) {
		t.Fatalf("plan: %+v %+v %v", to, plan, err)
	}
	many := make([]string, maxHandoffVolumes+1)
	for _, c := range []struct {
		req  HandoffRequest
		want string
	}{
		{HandoffRequest{Volumes: []string{"pair"}, Node: "n3"}, `node "n3" holds no replica of volume "pair"`},
		{HandoffRequest{Volumes: []string{"gone"}, Node: "n2"}, `no volume named "gone"`},
		{HandoffRequest{Volumes: []string{"vm"}, Node: "n9"}, `no node named "n9"`},
		{HandoffRequest{Volumes: []string{"vm", "vm"}, Node: "n2"}, "listed twice"},
		{HandoffRequest{Node: "n2"}, "0 volumes"},
		{HandoffRequest{Volumes: many, Node: "n2"}, "17 volumes"},
	} {
		if _, _, _, err := handoffPlan(cfg, c.req); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.req, err, c.want)
		}
	}
	// A network-fenced node would be named primary and refuse to
	// promote: the hand-off refuses it first.
	blocked := netTestConfig(t)
	blocked.Volumes = []VolumeConfig{{Name: "vm", ID: 1, SizeBytes: 1 << 20, Replicas: []uint32{1, 2, 3}, Primary: 1}}
	blocked, err = withNetBlock(blocked, "n2", "n1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := handoffPlan(blocked, HandoffRequest{Volumes: []string{"vm"}, Node: "n2"}); err == nil || !strings.Contains(err.Error(), "network-fenced") {
		t.Fatalf("hand-off to a network-fenced node: %v", err)
	}
	if _, _, _, err := handoffPlan(blocked, HandoffRequest{Volumes: []string{"vm"}, Node: "n3"}); err != nil {
		t.Fatalf("hand-off to n3: %v", err)
	}
}
