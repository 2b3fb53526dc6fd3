package migrate

import "hash/crc32"

// Page sums: a digest chunk's crc32c kept current page by page.
//
// crc32c is linear over GF(2). Write F(s; b) for hash/crc32's register run
// from s over bytes b (Update complements before and after it); then
// F(s; b) = L_b(s) XOR F(0; b), and over a chunk of n pages F(0; chunk) is
// the XOR over its pages j of L^(n-1-j)(F(0; page j)), where L is the run
// over one zero page (zeroPageShift). So when page j of a chunk changes
// from P to P', the chunk's checksum changes by L^(n-1-j)(G(P) XOR G(P')),
// with G(P) = F(0; P), the page's sum. Keeping each page's sum (4 bytes a
// page), a round that sent k scattered pages updates the digest by
// hashing k pages; rehashing their 1 MiB chunks instead cost up to all of
// RAM a round on both sides when a guest dirties pages all over it, which
// made such rounds slow and their bandwidth look low, so they converged
// late or not at all (BENCHMARKS.md, issue 6, fifth pass).

// pageSum returns G(page) = F(0; page). A zero page's is 0.
func pageSum(page []byte) uint32 { return ^crc32.Update(^uint32(0), castagnoli, page) }

// pageShift[i] holds L^(2^i) as four byte-indexed tables (see crczero.go):
// the run over 2^i zero pages. Chunks have at most 256 pages, so shifts
// of 0..255 pages need the first eight.
var pageShift = func() (t [8][4][256]uint32) {
	t[0] = zeroPageShift
	for i := 1; i < len(t); i++ {
		var cols [32]uint32
		for b := range cols {
			cols[b] = applyShift(&t[i-1], applyShift(&t[i-1], 1<<b))
		}
		for k := range 4 {
			for v := range 256 {
				var x uint32
				for j := range 8 {
					if v&(1<<j) != 0 {
						x ^= cols[8*k+j]
					}
				}
				t[i][k][v] = x
			}
		}
	}
	return t
}()

// applyShift applies one table set to a register.
func applyShift(tb *[4][256]uint32, r uint32) uint32 {
	return tb[0][r&0xff] ^ tb[1][r>>8&0xff] ^ tb[2][r>>16&0xff] ^ tb[3][r>>24]
}

// shiftPages returns L^k(r), the register r run over k zero pages
// (0 <= k < 256).
func shiftPages(r uint32, k int) uint32 {
	for i := 0; k > 0; i, k = i+1, k>>1 {
		if k&1 != 0 {
			r = applyShift(&pageShift[i], r)
		}
	}
	return r
}

// foldPageSums returns the crc32c of pages whose sums are given, in order:
// what crc32.Checksum over their bytes returns.
func foldPageSums(sums []uint32) uint32 {
	r := ^uint32(0)
	for _, g := range sums {
		r = applyShift(&pageShift[0], r) ^ g
	}
	return ^r
}

// chunkPageChange returns what XORs onto a chunk's crc32c when its page j
// (of n) goes from sum gOld to sum gNew.
func chunkPageChange(gOld, gNew uint32, j, n int) uint32 {
	return shiftPages(gOld^gNew, n-1-j)
}
