package blockrep

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// BlockBytes is the checksum granularity: one crc32c per 4 KiB block.
const BlockBytes = 4096

// sumBytes is the size of one stored checksum.
const sumBytes = 4

// zeroBlockSum is the crc32c of a block of zeroes.
var zeroBlockSum = crc32.Checksum(make([]byte, BlockBytes), castagnoli)

// blockSum is the crc32c of one block (hardware accelerated on amd64 and
// arm64 by hash/crc32).
func blockSum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// sumMatches says whether stored agrees with a block whose crc32c is got. A
// stored 0 means "never written": the sparse checksum file reads 0 for
// blocks nobody wrote, and those must read as zeroes.
func sumMatches(stored, got uint32) bool {
	return stored == got || (stored == 0 && got == zeroBlockSum)
}

// ChecksumError lists the blocks of a read whose data does not match their
// checksums: silent corruption on this replica.
type ChecksumError struct {
	Blocks []int64
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("checksum mismatch in %d block(s), first at byte %d", len(e.Blocks), e.Blocks[0]*BlockBytes)
}

func putSum(b []byte, s uint32) { binary.LittleEndian.PutUint32(b, s) }
func getSum(b []byte) uint32    { return binary.LittleEndian.Uint32(b) }
