package main

// The short history campaign of go test: 3 nodes in namespaces (token
// 400 ms, no fence device: the survivors wait out leases), 3 clients,
// 4 random faults. PADDOCK_HISTORY_SEED replays the faults' choice (the
// seed is logged; the timing of the processes is not replayed);
// PADDOCK_HISTORY_FAULTS makes it longer.
//
// Every kind of fault is in: kill -9 and restart of the primary,
// partition of the primary, SIGSTOP/SIGCONT of the primary, kill -9 and
// restart of a secondary (PADDOCK_HISTORY_PAUSE=0 leaves the pauses out).
// The pauses found two bugs: a nil link in blockrep's Primary.sendTo that
// crashed the woken node (1c984c4), and a forwarded write replayed by the
// woken old primary over newer acknowledged writes (forward_test.go).

import (
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/paddock-io/paddock/internal/testbin"
)

const (
	historyTokenMs = 400
	// historyMaxFaults bounds PADDOCK_HISTORY_FAULTS.
	historyMaxFaults = 100
)

func TestHistoryCampaign(t *testing.T) {
	lab := newNetLab(t, 3)
	bin := testbin.Paddock(t)
	nodes := makeNetVolumeCluster(t, lab, "--token-ms", strconv.Itoa(historyTokenMs))
	testbin.Run(t, 60*time.Second, bin, "volume", "create", "vm", "--size", "16M", "--nodes", "h1,h2,h3", "--data-dir", nodes[0].dir)
	nodes[2].waitUpToDate(t, "vm", 30*time.Second)

	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("PADDOCK_HISTORY_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	faults := 4
	if s := os.Getenv("PADDOCK_HISTORY_FAULTS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 1 && n <= historyMaxFaults {
			faults = n
		}
	}
	t.Logf("PADDOCK_HISTORY_SEED=%d, %d faults", seed, faults)
	c := &campaign{t: t, lab: lab, nodes: nodes, volume: "vm", rng: rand.New(rand.NewPCG(seed, 3)),
		tokenMs: historyTokenMs, faults: faults, maxFaultMs: historyTokenMs * 9, clients: 3, blocks: 256,
		recoverTimeout: 60 * time.Second,
		kinds:          allFaults}
	if os.Getenv("PADDOCK_HISTORY_PAUSE") == "0" {
		c.kinds = []string{faultKillPrimary, faultPartitionPrimary, faultRestartSecondary}
	}
	c.run(seed)
}
