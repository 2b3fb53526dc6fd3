package migrate

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"runtime"
	"sync"
)

// DigestChunkBytes is the unit of the RAM digest. Each chunk has a crc32c;
// the digest is the SHA-256 of the chunk checksums. crc32c runs at ~25 GB/s
// a core here, so hashing all of a 4 GiB guest costs ~80 ms on 2 cores:
// too much for a 50 ms downtime if done at the pause. The engine keeps a
// RAMDigest current instead: whole chunks in the bulk pass, then page by
// page (pagesum.go) as later rounds send pages, so that at the pause only
// the pages of the last round remain. The digest detects bugs and corruption, not forgery (TLS
// covers that): 32 bits a chunk is plenty for that.
const DigestChunkBytes = 1 << 20

// RAMDigest holds one crc32c per chunk of guest RAM, and the page sums
// (pagesum.go) that let a page's change update its chunk's checksum
// without rehashing the chunk. The source keeps the page sums (it cannot
// know a page's old contents once the guest rewrote it); the destination
// reads a page's old contents before it overwrites it instead (Decoder
// page changes) and leaves them zero.
type RAMDigest struct {
	ramBytes int
	crcs     []uint32
	pages    []uint32 // G of each page as last hashed (pagesum.go)
	// noSums: chunks set by SetChunk, whose page sums are unknown. One
	// bool a chunk, not a bitmap: streams update their own chunks at
	// once, and bits of one word would race.
	noSums []bool
}

// NewRAMDigest returns a digest for RAM of ramBytes, every chunk unhashed
// (checksum 0) until updated.
func NewRAMDigest(ramBytes int64) (*RAMDigest, error) {
	if err := checkMemorySize(ramBytes); err != nil {
		return nil, err
	}
	chunks := (ramBytes + DigestChunkBytes - 1) / DigestChunkBytes
	return &RAMDigest{ramBytes: int(ramBytes), crcs: make([]uint32, chunks), pages: make([]uint32, ramBytes/PageBytes),
		noSums: make([]bool, chunks)}, nil
}

// Chunks returns the number of chunks.
func (d *RAMDigest) Chunks() int { return len(d.crcs) }

func (d *RAMDigest) checkRAM(ram []byte) {
	if len(ram) != d.ramBytes {
		panic(fmt.Sprintf("migrate: digest of %d bytes given %d bytes of RAM", d.ramBytes, len(ram)))
	}
}

// zeroChunkCRC is the checksum of an all-zero full chunk.
var zeroChunkCRC = crc32.Checksum(make([]byte, DigestChunkBytes), castagnoli)

// SetZero sets every chunk to the checksum of zeros without reading RAM:
// for fresh RAM (a new memfd reads as zero), where reading would allocate
// every page.
func (d *RAMDigest) SetZero() {
	for c := range d.crcs {
		d.SetChunkZero(c)
	}
}

// SetChunkZero records chunk c as all zero without reading it.
func (d *RAMDigest) SetChunkZero(c int) {
	clear(d.chunkPageSums(c))
	d.noSums[c] = false
	n := min(DigestChunkBytes, d.ramBytes-c*DigestChunkBytes)
	if n == DigestChunkBytes {
		d.crcs[c] = zeroChunkCRC
		return
	}
	d.crcs[c] = crc32.Checksum(make([]byte, n), castagnoli)
}

// UpdateChunk rehashes chunk c of ram, page by page.
func (d *RAMDigest) UpdateChunk(ram []byte, c int) {
	d.checkRAM(ram)
	end := min((c+1)*DigestChunkBytes, len(ram))
	d.hashChunk(c, ram[c*DigestChunkBytes:end])
}

// hashChunk sets chunk c's page sums and checksum from b, its bytes.
func (d *RAMDigest) hashChunk(c int, b []byte) {
	sums := d.chunkPageSums(c)
	for j := range sums {
		sums[j] = pageSum(b[j*PageBytes : (j+1)*PageBytes])
	}
	d.crcs[c] = foldPageSums(sums)
	d.noSums[c] = false
}

// chunkPageSums returns the page sums of chunk c.
func (d *RAMDigest) chunkPageSums(c int) []uint32 {
	from := c * chunkPages
	return d.pages[from:min(from+chunkPages, len(d.pages))]
}

// UpdatePage rehashes page p of ram and updates its chunk's checksum
// from the page's change: a round's scattered pages cost a page each.
func (d *RAMDigest) UpdatePage(ram []byte, p int) {
	d.checkRAM(ram)
	g := pageSum(ram[p*PageBytes : (p+1)*PageBytes])
	c, j := p/chunkPages, p%chunkPages
	if d.noSums[c] {
		// Its checksum came from SetChunk: the page's old sum is not
		// known, and a change from a wrong one would corrupt it.
		panic(fmt.Sprintf("migrate: UpdatePage on chunk %d, whose page sums SetChunk left unknown", c))
	}
	d.crcs[c] ^= chunkPageChange(d.pages[p], g, j, len(d.chunkPageSums(c)))
	d.pages[p] = g
}

// ApplyChunkChange XORs x, a sum of chunkPageChange values for chunk c,
// onto its checksum (the destination's page changes, Decoder.PageChanges).
func (d *RAMDigest) ApplyChunkChange(c int, x uint32) { d.crcs[c] ^= x }

// UpdateChunkFile rehashes chunk c reading it with pread from fd, the memfd
// under the RAM, into buf (at least DigestChunkBytes). Reading through the
// mapping instead faults in every page not mapped yet (the destination
// writes raw pages with pwrite, see Decoder.SetRAMFile); measured here on
// 256 MiB in 1 MiB pieces, pwrite then read through the mapping ran at
// 0.23 GB/s, pwrite then pread at 2.4 GB/s.
func (d *RAMDigest) UpdateChunkFile(fd int, c int, buf []byte) error {
	n := min(DigestChunkBytes, d.ramBytes-c*DigestChunkBytes)
	if len(buf) < n {
		return fmt.Errorf("migrate: digest buffer of %d bytes for a chunk of %d", len(buf), n)
	}
	if err := preadFull(fd, buf[:n], int64(c)*DigestChunkBytes); err != nil {
		return err
	}
	d.hashChunk(c, buf[:n])
	return nil
}

// SetChunk records crc, computed by the caller over chunk c's bytes as
// they were read or written, as the chunk's checksum. Its page sums are
// then unknown (the destination keeps none), and UpdatePage on the chunk
// panics until it is hashed again.
func (d *RAMDigest) SetChunk(c int, crc uint32) {
	d.crcs[c] = crc
	d.noSums[c] = true
}

// ChunkPageSums returns chunk c's page sums for the caller to fill (the
// source's bulk pass, Encoder.WriteRunFile), then SetChunkFromPageSums.
func (d *RAMDigest) ChunkPageSums(c int) []uint32 { return d.chunkPageSums(c) }

// SetChunkFromPageSums sets chunk c's checksum from its page sums.
func (d *RAMDigest) SetChunkFromPageSums(c int) {
	d.crcs[c] = foldPageSums(d.chunkPageSums(c))
	d.noSums[c] = false
}

// UpdatePages rehashes every chunk holding a page set in pages, with up to
// workers goroutines.
func (d *RAMDigest) UpdatePages(ram []byte, pages *Bitmap, workers int) {
	d.checkRAM(ram)
	const pagesPerChunk = DigestChunkBytes / PageBytes
	var chunks []int
	for p := pages.NextSet(0); p >= 0; {
		c := p / pagesPerChunk
		chunks = append(chunks, c)
		p = pages.NextSet((c + 1) * pagesPerChunk)
	}
	d.update(ram, chunks, workers)
}

// UpdateAll rehashes every chunk with up to workers goroutines.
func (d *RAMDigest) UpdateAll(ram []byte, workers int) {
	d.checkRAM(ram)
	chunks := make([]int, len(d.crcs))
	for i := range chunks {
		chunks[i] = i
	}
	d.update(ram, chunks, workers)
}

func (d *RAMDigest) update(ram []byte, chunks []int, workers int) {
	workers = max(1, min(workers, len(chunks)))
	if workers == 1 {
		for _, c := range chunks {
			d.UpdateChunk(ram, c)
		}
		return
	}
	var wg sync.WaitGroup
	per := (len(chunks) + workers - 1) / workers
	for w := 0; w < workers; w++ {
		part := chunks[min(w*per, len(chunks)):min((w+1)*per, len(chunks))]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, c := range part {
				d.UpdateChunk(ram, c)
			}
		}()
	}
	wg.Wait()
}

// Sum returns the digest to send or compare.
func (d *RAMDigest) Sum() Digest {
	h := sha256.New()
	var b [4]byte
	for _, c := range d.crcs {
		binary.LittleEndian.PutUint32(b[:], c)
		h.Write(b[:])
	}
	out := Digest{ChunkBytes: DigestChunkBytes, Chunks: uint64(len(d.crcs))}
	h.Sum(out.Sum[:0])
	return out
}

// FirstDifference returns the first chunk whose checksum differs from o's,
// or -1: for the error message when digests disagree.
func (d *RAMDigest) FirstDifference(o *RAMDigest) int {
	for i := range min(len(d.crcs), len(o.crcs)) {
		if d.crcs[i] != o.crcs[i] {
			return i
		}
	}
	if len(d.crcs) != len(o.crcs) {
		return min(len(d.crcs), len(o.crcs))
	}
	return -1
}

// maxRehashWorkers bounds the goroutines of RehashAll.
const maxRehashWorkers = 8

// RehashAll rehashes every chunk from what ram holds now: with pread on
// its memfd when ram is a Memory's mapping (reading through the mapping
// would fault in pages written with pwrite), else through ram. The
// engine's digest is otherwise kept from the pages as sent or written
// (see Decoder.ChunkSum); this makes it say what RAM holds at the moment
// of the call, at the cost of reading all of it.
func (d *RAMDigest) RehashAll(ram []byte) error {
	d.checkRAM(ram)
	workers := max(1, min(runtime.GOMAXPROCS(0), maxRehashWorkers, len(d.crcs)))
	fd := ramFile(ram)
	if fd < 0 {
		d.UpdateAll(ram, workers)
		return nil
	}
	defer closeRAMFile(fd)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, DigestChunkBytes)
			for c := w; c < len(d.crcs); c += workers {
				if err := d.UpdateChunkFile(fd, c, buf); err != nil {
					errs[w] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
