package blockrep

// crc32c of a concatenation from the crc32c of its parts, so that a
// payload whose 4 KiB blocks were already checksummed (a resync read
// checks every block it reads; a replica stores one crc32c per block) is
// not read a second time for its frame checksum.
//
// The arithmetic is over GF(2) polynomials modulo the Castagnoli
// polynomial, in the reflected bit order hash/crc32 uses (the top bit is
// x^0). crc(A‖B) = crc(A)·x^(8·len(B)) + crc(B): the pre- and
// post-inversion of the register cancel out in this form.

// castagnoliReflected is crc32.Castagnoli in reflected bit order.
const castagnoliReflected = 0x82f63b78

// gfMul multiplies a and b modulo the polynomial.
func gfMul(a, b uint32) uint32 {
	var p uint32
	for m := uint32(1) << 31; m != 0 && a != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
			a ^= m
		}
		if b&1 != 0 {
			b = b>>1 ^ castagnoliReflected
		} else {
			b >>= 1
		}
	}
	return p
}

// xPow2k[k] is x^(2^k) modulo the polynomial.
var xPow2k = func() (t [64]uint32) {
	t[0] = 1 << 30 // x^1
	for k := 1; k < len(t); k++ {
		t[k] = gfMul(t[k-1], t[k-1])
	}
	return t
}()

// xPowBytes is x^(8·n) modulo the polynomial: the shift of a crc over n
// more bytes.
func xPowBytes(n int64) uint32 {
	p := uint32(1) << 31 // x^0
	for k := 3; n > 0; n, k = n>>1, k+1 {
		if n&1 != 0 {
			p = gfMul(xPow2k[k], p)
		}
	}
	return p
}

// crcCombine is the crc32c of A‖B given crcA, crcB and len(B).
func crcCombine(crcA, crcB uint32, lenB int64) uint32 {
	return gfMul(xPowBytes(lenB), crcA) ^ crcB
}

// blockShift is x^(8·BlockBytes): folding one more block's crc in.
var blockShift = xPowBytes(BlockBytes)

// blockShiftBytes multiplies by blockShift a byte at a time: the
// product is linear in the other factor, so it is the XOR of the
// products of its four bytes (four lookups per block instead of up to
// 32 rounds of gfMul).
var blockShiftBytes = func() (t [4][256]uint32) {
	for i := range t {
		for v := range t[i] {
			t[i][v] = gfMul(blockShift, uint32(v)<<(8*i))
		}
	}
	return t
}()

// foldBlock is the crc32c of A‖block given crc(A) and the block's crc32c.
func foldBlock(c, block uint32) uint32 {
	return blockShiftBytes[0][byte(c)] ^ blockShiftBytes[1][byte(c>>8)] ^
		blockShiftBytes[2][byte(c>>16)] ^ blockShiftBytes[3][byte(c>>24)] ^ block
}

// crcOfBlocks is the crc32c of whole blocks given their crc32c in order.
func crcOfBlocks(sums []uint32) uint32 {
	var c uint32 // the crc32c of nothing
	for _, s := range sums {
		c = foldBlock(c, s)
	}
	return c
}
