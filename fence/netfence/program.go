package netfence

import (
	"encoding/binary"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The drop-by-source program, written with cilium/ebpf's asm package so the
// build needs no clang and no generated object files.
//
// In C it would read:
//
//	if (data + 14 > data_end) return PASS;
//	switch (eth->h_proto) {
//	case htons(ETH_P_IP):   need 14+20 bytes; key = ::ffff:<saddr>
//	case htons(ETH_P_IPV6): need 14+40 bytes; key = <saddr>
//	default:                return PASS;
//	}
//	u64 *drops = bpf_map_lookup_elem(&blocked, &key);
//	if (!drops) return PASS;
//	*drops += 1;            // per-CPU value: no atomic needed
//	return DROP;
//
// IPv4 sources are keyed as IPv4-mapped IPv6 addresses so that one map holds
// both families. VLAN-tagged frames and frames whose headers are not in the
// linear part of the buffer pass: the filter is a second line behind the
// storage epoch, and a miss there costs nothing but a packet let through.

// mapName is the name the program's instructions use for the map.
const mapName = "blocked"

// Frame layout.
const (
	ethHeaderBytes  = 14
	ethTypeOffset   = 12
	ipv4MinBytes    = 20
	ipv4SrcOffset   = ethHeaderBytes + 12
	ipv6HeaderBytes = 40
	ipv6SrcOffset   = ethHeaderBytes + 8
	keyBytes        = 16
)

// hook says where a program runs: its context layout and verdicts.
type hook struct {
	progType     ebpf.ProgramType
	dataOff      int16 // offset of the u32 "data" in the context
	dataEndOff   int16 // offset of the u32 "data_end"
	pass, drop   int32
	sectionLabel string
}

var (
	// struct xdp_md { u32 data; u32 data_end; ... }; XDP_DROP 1, XDP_PASS 2.
	xdpHook = hook{progType: ebpf.XDP, dataOff: 0, dataEndOff: 4, pass: 2, drop: 1, sectionLabel: "xdp"}
	// struct __sk_buff: data at 76, data_end at 80. TCX_NEXT (-1) lets
	// any later program in the tcx chain decide; TCX_DROP is 2.
	tcxHook = hook{progType: ebpf.SchedCLS, dataOff: 76, dataEndOff: 80, pass: -1, drop: 2, sectionLabel: "tcx"}
)

// nativeU16/U32 give the immediate that equals the given bytes when a
// register loaded from (or stored to) memory holds them: a load of the
// big-endian ethertype into a register on a little-endian CPU swaps it.
func nativeU16(b0, b1 byte) int32 { return int32(binary.NativeEndian.Uint16([]byte{b0, b1})) }
func nativeU32(b ...byte) int32   { return int32(binary.NativeEndian.Uint32(b)) }

func programSpec(h hook) *ebpf.ProgramSpec {
	const (
		ctx     = asm.R6
		data    = asm.R2
		dataEnd = asm.R3
		tmp     = asm.R4
		val     = asm.R5
	)
	insns := asm.Instructions{
		asm.Mov.Reg(ctx, asm.R1),
		asm.LoadMem(data, ctx, h.dataOff, asm.Word),
		asm.LoadMem(dataEnd, ctx, h.dataEndOff, asm.Word),

		// Ethernet header present?
		asm.Mov.Reg(tmp, data),
		asm.Add.Imm(tmp, ethHeaderBytes),
		asm.JGT.Reg(tmp, dataEnd, "pass"),
		asm.LoadMem(val, data, ethTypeOffset, asm.Half),
		asm.JEq.Imm(val, nativeU16(0x08, 0x00), "ipv4"),
		asm.JEq.Imm(val, nativeU16(0x86, 0xdd), "ipv6"),
		asm.Ja.Label("pass"),

		// IPv4: key = 0..0 ff ff <saddr>
		asm.Mov.Reg(tmp, data).WithSymbol("ipv4"),
		asm.Add.Imm(tmp, ethHeaderBytes+ipv4MinBytes),
		asm.JGT.Reg(tmp, dataEnd, "pass"),
		asm.StoreImm(asm.RFP, -16, 0, asm.Word), // asm has no 64-bit store of an immediate
		asm.StoreImm(asm.RFP, -12, 0, asm.Word),
		asm.StoreImm(asm.RFP, -8, int64(nativeU32(0, 0, 0xff, 0xff)), asm.Word),
		asm.LoadMem(val, data, ipv4SrcOffset, asm.Word),
		asm.StoreMem(asm.RFP, -4, val, asm.Word),
		asm.Ja.Label("lookup"),

		// IPv6: key = <saddr>
		asm.Mov.Reg(tmp, data).WithSymbol("ipv6"),
		asm.Add.Imm(tmp, ethHeaderBytes+ipv6HeaderBytes),
		asm.JGT.Reg(tmp, dataEnd, "pass"),
		asm.LoadMem(val, data, ipv6SrcOffset, asm.DWord),
		asm.StoreMem(asm.RFP, -16, val, asm.DWord),
		asm.LoadMem(val, data, ipv6SrcOffset+8, asm.DWord),
		asm.StoreMem(asm.RFP, -8, val, asm.DWord),

		// drops = bpf_map_lookup_elem(&blocked, fp-16)
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapName).WithSymbol("lookup"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -keyBytes),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, h.drop),
		asm.Return(),

		asm.Mov.Imm(asm.R0, h.pass).WithSymbol("pass"),
		asm.Return(),
	}
	return &ebpf.ProgramSpec{
		Name:         "paddock_nf_" + h.sectionLabel,
		Type:         h.progType,
		Instructions: insns,
		License:      "Dual MIT/GPL",
	}
}

func mapSpec(maxEntries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       "paddock_nf_blk",
		Type:       ebpf.PerCPUHash,
		KeySize:    keyBytes,
		ValueSize:  8, // u64 dropped packets, per CPU
		MaxEntries: maxEntries,
	}
}
