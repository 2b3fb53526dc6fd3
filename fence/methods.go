package fence

import (
	"context"
	"net/netip"
)

// StorageFencer is the storage fence: raise the epoch of every volume whose
// primary is on node, on a write quorum of its replicas, so that the
// replicas refuse anything the old primary still sends. The daemon plugs in
// the replicated-volume code (blockrep) here; this package has no
// implementation because the epoch lives there.
//
// It is always run when a node is fenced, also after a verified power
// fence: a power fence says the node is off now, the epoch says its old
// writes can never land later (a BMC that lied, a write stuck in a switch
// buffer). FenceNode returns nil only when every such volume's new epoch
// was promised by a write quorum; it must be safe to call again after a
// partial failure (raising an epoch twice is harmless).
type StorageFencer interface {
	FenceNode(ctx context.Context, node string) error
}

// NetworkFencer drops a fenced node's packets on this node; netfence.Filter
// satisfies it. The daemon blocks every address of the victim (cluster,
// storage, migration) on the storage interface of every surviving node and
// unblocks them on `paddock unfence NODE`.
type NetworkFencer interface {
	Block(addr netip.Addr) error
	Unblock(addr netip.Addr) error
}

// StorageFencerFunc adapts a function to StorageFencer (for tests and for
// wiring a closure over the volume manager).
type StorageFencerFunc func(ctx context.Context, node string) error

// FenceNode calls f.
func (f StorageFencerFunc) FenceNode(ctx context.Context, node string) error { return f(ctx, node) }
