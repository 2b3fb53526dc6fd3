// Package fence holds paddock's fencing building blocks: the ways to make
// sure a node that the quorate partition has lost can no longer change any
// volume, before another node takes its volumes over (DESIGN invariant 4).
//
// What each file holds:
//
//   - agent.go, device.go, secret.go: run any ClusterLabs fence-agents
//     program (fence_ipmilan, fence_redfish, fence_pve, fence_dummy...) with
//     the standard protocol: key=value lines on stdin, action last; exit
//     codes as doc/FenceAgentAPI.md says (0 success; for status 0 on, 2 off,
//     anything else an error). AgentRunner.PowerOff counts an off only when a
//     following status says off (retried a bounded number of times). Every
//     run has a timeout; a timeout kills the agent's whole process group and
//     is a failure, never a success. Secret parameters (password, community,
//     token...) are a Secret that prints as "[redacted]" everywhere (fmt,
//     slog, JSON) and are scrubbed from the captured, size-bounded output.
//   - metadata.go: parse an agent's "metadata" XML into its parameter list
//     (bounded, fuzzed).
//   - levels.go: Pacemaker-style fencing topology. A Plan has ordered levels;
//     every device of a level must verify the target off, otherwise the next
//     level is tried; one total timeout covers everything; a fence-race
//     delay (pcmk_delay_base/max: fixed plus random, within [base, max]) is
//     waited before the first shot so the two halves of a two-node cluster
//     do not shoot each other at once. Fencer takes its shooter, clock,
//     sleep and random source as fields, so the decisions are tested with
//     scripted devices; NewFencer gives the real ones.
//   - history.go: a bounded ring of fence attempts (time, target, method,
//     device, level, result, duration, error) and counters that never wrap,
//     for `paddock status` and Prometheus.
//   - lease.go: the self-fence lease, a pure state machine fed (nowMs,
//     quorate, anchor: the send time of the oldest of its own heartbeats
//     its members echo) that says whether this node may still acknowledge
//     writes, and the survivor's wait (lease + fence delay, scaled for
//     clock rate drift, after the victim was last heard) before it may
//     promote without a power fence. The comment
//     at the top of lease.go states the margin, why, and what the daemon
//     must provide for the wait to be safe.
//   - methods.go: the StorageFencer interface (raise the epoch of the
//     victim's volumes; implemented by the replicated-volume code) and the
//     NetworkFencer interface.
//   - netfence/: the network fence, an eBPF program (built with
//     cilium/ebpf's asm package, no clang) on XDP or tcx ingress that drops
//     packets from blocked IPv4/IPv6 sources and counts them.
//
// How the daemon is expected to use them, when a quorate partition loses a
// node: the acting node builds the node's Plan from the cluster
// configuration and runs Fencer.Fence; whatever the result, it runs the
// StorageFencer and blocks the node's addresses with the NetworkFencer on
// every survivor; it promotes a new primary only after a verified power
// fence, or, without one, after LeaseConfig.PromoteNotBeforeMs. An inquorate
// node never fences anyone; it feeds its Lease and stops acknowledging
// writes when MayAck turns false.
//
// What needs a real host: the agent runner needs the fence-agents programs
// (Debian's fence-agents package puts them in /usr/sbin) and, for real
// power fencing, a reachable BMC or PDU; netfence needs root (CAP_BPF,
// CAP_NET_ADMIN) and a kernel with BPF links for XDP (5.9+) or tcx (6.6+);
// the tests build their own network namespaces and veth pairs. Arming a
// hardware watchdog (/dev/watchdog, Proxmox style) when the lease runs out
// is left to the daemon: it needs the device, and a test cannot arm one
// without rebooting the host.
package fence
