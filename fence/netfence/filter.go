// Package netfence is paddock's network fence: an eBPF program on a
// surviving node's storage interface that drops every packet whose source
// address is a fenced node's, so a half-dead victim cannot reach the
// replicas even if its storage epoch were somehow current.
//
// The program is built at run time with cilium/ebpf's asm package (no clang,
// no object files) and attached with XDP (default) or tcx ingress. Blocked
// addresses live in a per-CPU hash map whose values count dropped packets.
// Nothing is pinned: the filter lives as long as the Filter (its link and
// map file descriptors), so a crashed daemon leaves no stale filter behind;
// the daemon re-applies the fenced set when it starts.
//
// It needs root (CAP_BPF and CAP_NET_ADMIN) and a kernel with BPF links for
// XDP (5.9+) or tcx (6.6+).
package netfence

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// Mode is where the program is attached.
type Mode string

// Modes.
const (
	// ModeXDP attaches at the driver's receive path (or generic XDP when
	// the driver has none): the earliest and cheapest place to drop.
	ModeXDP Mode = "xdp"
	// ModeTCX attaches at tc ingress through tcx, for interfaces where XDP
	// is unavailable or already taken.
	ModeTCX Mode = "tcx"
)

// Limits.
const (
	// DefaultMaxBlocked is the map size: a cluster has at most 32 nodes,
	// each with a few addresses.
	DefaultMaxBlocked = 256
	maxMaxBlocked     = 65536
)

// Options says where and how to attach.
type Options struct {
	// Interface is the interface name (the storage interface). Looked up
	// in the calling thread's network namespace.
	Interface string
	// Mode is ModeXDP (default) or ModeTCX.
	Mode Mode
	// MaxBlocked bounds the number of blocked addresses (default 256).
	MaxBlocked int
}

// Filter is an attached network fence. Safe for concurrent use.
type Filter struct {
	mu      sync.Mutex
	iface   string
	mode    Mode
	prog    *ebpf.Program
	blocked *ebpf.Map
	link    link.Link
	ncpu    int
	// removedDrops keeps the counts of addresses that were unblocked, so
	// DroppedTotal never goes down (it is a Prometheus counter).
	removedDrops uint64
	closed       bool
}

// ErrClosed is returned by every method of a closed Filter.
var ErrClosed = errors.New("netfence: filter closed")

// Attach loads the program and attaches it to opts.Interface.
func Attach(opts Options) (*Filter, error) {
	if opts.Mode == "" {
		opts.Mode = ModeXDP
	}
	var h hook
	switch opts.Mode {
	case ModeXDP:
		h = xdpHook
	case ModeTCX:
		h = tcxHook
	default:
		return nil, fmt.Errorf("netfence: unknown mode %q (want xdp or tcx)", opts.Mode)
	}
	if opts.MaxBlocked <= 0 {
		opts.MaxBlocked = DefaultMaxBlocked
	}
	if opts.MaxBlocked > maxMaxBlocked {
		return nil, fmt.Errorf("netfence: max blocked %d, at most %d", opts.MaxBlocked, maxMaxBlocked)
	}
	ifc, err := net.InterfaceByName(opts.Interface)
	if err != nil {
		return nil, fmt.Errorf("netfence: interface %q: %w", opts.Interface, err)
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("netfence: %w", err)
	}

	spec := &ebpf.CollectionSpec{
		Maps:     map[string]*ebpf.MapSpec{mapName: mapSpec(uint32(opts.MaxBlocked))},
		Programs: map[string]*ebpf.ProgramSpec{"filter": programSpec(h)},
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("netfence: loading the %s program (needs root: CAP_BPF, CAP_NET_ADMIN): %w", opts.Mode, err)
	}
	f := &Filter{iface: opts.Interface, mode: opts.Mode, prog: coll.Programs["filter"], blocked: coll.Maps[mapName], ncpu: ncpu}

	switch opts.Mode {
	case ModeXDP:
		f.link, err = link.AttachXDP(link.XDPOptions{Program: f.prog, Interface: ifc.Index})
	case ModeTCX:
		f.link, err = link.AttachTCX(link.TCXOptions{Program: f.prog, Interface: ifc.Index, Attach: ebpf.AttachTCXIngress})
	}
	if err != nil {
		f.prog.Close()
		f.blocked.Close()
		return nil, fmt.Errorf("netfence: attaching %s to %s: %w", opts.Mode, opts.Interface, err)
	}
	return f, nil
}

// key is the map key for addr: 16 bytes, IPv4 as IPv4-mapped IPv6.
func key(addr netip.Addr) ([keyBytes]byte, error) {
	if !addr.IsValid() {
		return [keyBytes]byte{}, errors.New("netfence: invalid address")
	}
	return addr.Unmap().As16(), nil
}

// Block starts dropping packets from addr. Blocking an address twice is not
// an error and keeps its counter.
func (f *Filter) Block(addr netip.Addr) error {
	k, err := key(addr)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	err = f.blocked.Update(k, make([]uint64, f.ncpu), ebpf.UpdateNoExist)
	if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return fmt.Errorf("netfence: block %s: %w", addr, err)
	}
	return nil
}

// Unblock stops dropping packets from addr. Unblocking an address that is
// not blocked is not an error.
func (f *Filter) Unblock(addr netip.Addr) error {
	k, err := key(addr)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	var per []uint64
	if err := f.blocked.Lookup(k, &per); err == nil {
		f.removedDrops += sum(per)
	}
	if err := f.blocked.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("netfence: unblock %s: %w", addr, err)
	}
	return nil
}

// Blocked is one blocked address and the packets dropped from it.
type Blocked struct {
	Addr    netip.Addr `json:"addr"`
	Dropped uint64     `json:"dropped"`
}

// List returns the blocked addresses and their drop counts, sorted.
func (f *Filter) List() ([]Blocked, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	return f.listLocked()
}

func (f *Filter) listLocked() ([]Blocked, error) {
	var (
		k   [keyBytes]byte
		per []uint64
		out []Blocked
	)
	it := f.blocked.Iterate()
	for it.Next(&k, &per) {
		out = append(out, Blocked{Addr: netip.AddrFrom16(k).Unmap(), Dropped: sum(per)})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("netfence: reading the blocked map: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out, nil
}

// DroppedTotal is every packet dropped since Attach, unblocked addresses
// included.
func (f *Filter) DroppedTotal() (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, ErrClosed
	}
	bs, err := f.listLocked()
	if err != nil {
		return 0, err
	}
	total := f.removedDrops
	for _, b := range bs {
		total += b.Dropped
	}
	return total, nil
}

// Interface and Mode say where the filter is.
func (f *Filter) Interface() string { return f.iface }

// Mode is the attach mode.
func (f *Filter) Mode() Mode { return f.mode }

// Close detaches the program and frees the map: every address passes again.
func (f *Filter) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	return errors.Join(f.link.Close(), f.prog.Close(), f.blocked.Close())
}

func sum(per []uint64) uint64 {
	var s uint64
	for _, v := range per {
		s += v
	}
	return s
}

// Instructions returns the program's instructions for mode, for tests and
// `paddock` debugging output.
func Instructions(mode Mode) asm.Instructions {
	if mode == ModeTCX {
		return programSpec(tcxHook).Instructions
	}
	return programSpec(xdpHook).Instructions
}
