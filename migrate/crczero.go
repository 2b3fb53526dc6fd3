package migrate

import "hash/crc32"

// crc32c over zero bytes without reading them. hash/crc32's Update
// complements the register, runs it over the bytes, and complements it
// again; over zero bytes each step of the run is linear in the register
// over GF(2) (a table lookup of its low byte XOR its shift), so running
// it over a whole zero page is one 32x32 bit matrix. zeroPageShift holds
// that matrix as four byte-indexed tables: applying it costs four lookups
// where hashing the page costs a pass over 4 KiB (~160 ns here). The
// source and the destination hash half a half-zero guest's RAM as zero
// pages for the digest.
var zeroPageShift = func() (t [4][256]uint32) {
	// Column i: where the run over a zero page takes register bit i.
	var cols [32]uint32
	for i := range cols {
		cols[i] = ^crc32.Update(^uint32(1<<i), castagnoli, zeroPage[:])
	}
	for k := range t {
		for b := range 256 {
			var v uint32
			for j := range 8 {
				if b&(1<<j) != 0 {
					v ^= cols[8*k+j]
				}
			}
			t[k][b] = v
		}
	}
	return t
}()

// crcZeroPage returns crc32.Update(crc, castagnoli, zeroPage[:]).
func crcZeroPage(crc uint32) uint32 {
	r := ^crc
	r = zeroPageShift[0][r&0xff] ^ zeroPageShift[1][r>>8&0xff] ^ zeroPageShift[2][r>>16&0xff] ^ zeroPageShift[3][r>>24]
	return ^r
}
