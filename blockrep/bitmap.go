package blockrep

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"os"
	"sync"

	"github.com/paddock-io/paddock/internal/atomicfile"
)

// Bitmap marks regions of a volume, one bit per region (64 KiB by
// default). The primary keeps one per peer: the regions that peer missed
// while it was away. It is persisted as a small file (header, words,
// crc32c) written atomically, so a crash loses at most the marks made since
// the last save — and the primary saves before it acknowledges anything to
// a client that the peer did not get (see Replica).
type Bitmap struct {
	mu          sync.Mutex
	regionBytes int64
	sizeBytes   int64
	words       []uint64
	dirty       bool
}

// DefaultRegionBytes is the resync granularity.
const DefaultRegionBytes = 64 << 10

// maxBitmapRegions bounds a bitmap (64 Ki regions of 64 KiB is 4 TiB... we
// allow up to 2^26 regions: 8 MiB of bits).
const maxBitmapRegions = 1 << 26

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// NewBitmap covers sizeBytes in regions of regionBytes.
func NewBitmap(sizeBytes, regionBytes int64) (*Bitmap, error) {
	if regionBytes <= 0 || regionBytes&(regionBytes-1) != 0 || regionBytes < 4096 {
		return nil, fmt.Errorf("region size %d must be a power of two of at least 4096", regionBytes)
	}
	if sizeBytes <= 0 {
		return nil, fmt.Errorf("volume size %d must be positive", sizeBytes)
	}
	n := (sizeBytes + regionBytes - 1) / regionBytes
	if n > maxBitmapRegions {
		return nil, fmt.Errorf("%d regions exceed the limit of %d: use larger regions", n, maxBitmapRegions)
	}
	return &Bitmap{regionBytes: regionBytes, sizeBytes: sizeBytes, words: make([]uint64, (n+63)/64)}, nil
}

// Regions is the number of regions.
func (b *Bitmap) Regions() int64 { return (b.sizeBytes + b.regionBytes - 1) / b.regionBytes }

// RegionBytes is the region size.
func (b *Bitmap) RegionBytes() int64 { return b.regionBytes }

// Mark sets the regions overlapping [off, off+length).
func (b *Bitmap) Mark(off, length int64) {
	if length <= 0 {
		return
	}
	first, last := off/b.regionBytes, (off+length-1)/b.regionBytes
	b.mu.Lock()
	for r := first; r <= last && r < b.Regions(); r++ {
		if b.words[r/64]&(1<<(r%64)) == 0 {
			b.words[r/64] |= 1 << (r % 64)
			b.dirty = true
		}
	}
	b.mu.Unlock()
}

// Clear unsets one region (after it was resent).
func (b *Bitmap) Clear(region int64) {
	b.mu.Lock()
	if region >= 0 && region < b.Regions() && b.words[region/64]&(1<<(region%64)) != 0 {
		b.words[region/64] &^= 1 << (region % 64)
		b.dirty = true
	}
	b.mu.Unlock()
}

// IsSet reports whether a region is marked.
func (b *Bitmap) IsSet(region int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return region >= 0 && region < b.Regions() && b.words[region/64]&(1<<(region%64)) != 0
}

// Count is the number of marked regions.
func (b *Bitmap) Count() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int
	for _, w := range b.words {
		n += bits.OnesCount64(w)
	}
	return int64(n)
}

// Next returns the first marked region at or after from, or -1.
func (b *Bitmap) Next(from int64) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if from < 0 {
		from = 0
	}
	for i := from / 64; i < int64(len(b.words)); i++ {
		w := b.words[i]
		if i == from/64 {
			w &^= (1 << (from % 64)) - 1
		}
		if w != 0 {
			r := i*64 + int64(bits.TrailingZeros64(w))
			if r < b.Regions() {
				return r
			}
			return -1
		}
	}
	return -1
}

// SetAll marks everything (a replica that must be fully synced).
func (b *Bitmap) SetAll() {
	b.mu.Lock()
	for i := range b.words {
		b.words[i] = ^uint64(0)
	}
	// Bits past the last region stay clear.
	if extra := int64(len(b.words))*64 - b.Regions(); extra > 0 {
		b.words[len(b.words)-1] >>= uint(extra)
	}
	b.dirty = true
	b.mu.Unlock()
}

// Dirty reports whether marks changed since the last Save or Load.
func (b *Bitmap) Dirty() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dirty
}

const bitmapMagic = 0x50444d42 // "PDMB"

// MarshalBinary encodes header, words and a crc32c.
func (b *Bitmap) MarshalBinary() ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]byte, 0, 24+8*len(b.words)+4)
	out = binary.BigEndian.AppendUint32(out, bitmapMagic)
	out = binary.BigEndian.AppendUint32(out, 1)
	out = binary.BigEndian.AppendUint64(out, uint64(b.sizeBytes))
	out = binary.BigEndian.AppendUint64(out, uint64(b.regionBytes))
	for _, w := range b.words {
		out = binary.BigEndian.AppendUint64(out, w)
	}
	return binary.BigEndian.AppendUint32(out, crc32.Checksum(out, castagnoli)), nil
}

// ErrCorruptBitmap means a bitmap file failed its checks; the caller must
// then assume every region is out of sync.
var ErrCorruptBitmap = errors.New("corrupt bitmap")

// UnmarshalBitmap decodes what MarshalBinary wrote.
func UnmarshalBitmap(data []byte) (*Bitmap, error) {
	if len(data) < 28 {
		return nil, fmt.Errorf("%w: %d bytes", ErrCorruptBitmap, len(data))
	}
	body, sum := data[:len(data)-4], binary.BigEndian.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCorruptBitmap)
	}
	if binary.BigEndian.Uint32(body) != bitmapMagic || binary.BigEndian.Uint32(body[4:]) != 1 {
		return nil, fmt.Errorf("%w: bad header", ErrCorruptBitmap)
	}
	size, region := int64(binary.BigEndian.Uint64(body[8:])), int64(binary.BigEndian.Uint64(body[16:]))
	b, err := NewBitmap(size, region)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptBitmap, err)
	}
	if len(body) != 24+8*len(b.words) {
		return nil, fmt.Errorf("%w: %d words for %d regions", ErrCorruptBitmap, (len(body)-24)/8, b.Regions())
	}
	for i := range b.words {
		b.words[i] = binary.BigEndian.Uint64(body[24+8*i:])
	}
	if extra := int64(len(b.words))*64 - b.Regions(); extra > 0 && b.words[len(b.words)-1]>>(64-uint(extra)) != 0 {
		return nil, fmt.Errorf("%w: bits set past the last region", ErrCorruptBitmap)
	}
	return b, nil
}

// Save writes the bitmap to path atomically and clears Dirty.
func (b *Bitmap) Save(path string) error {
	// Clear Dirty before taking the copy: a mark made while the file is
	// written sets it again, so it is saved next time (clearing it after
	// the write would lose that mark's Dirty).
	b.mu.Lock()
	b.dirty = false
	b.mu.Unlock()
	data, _ := b.MarshalBinary()
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		b.mu.Lock()
		b.dirty = true
		b.mu.Unlock()
		return err
	}
	return nil
}

// LoadBitmap reads a bitmap file.
func LoadBitmap(path string) (*Bitmap, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return UnmarshalBitmap(data)
}
