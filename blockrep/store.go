package blockrep

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"

	"github.com/paddock-io/paddock/internal/fileio"
)

// Store is one node's copy of a volume: a sparse data file, a checksum
// file (one crc32c per 4 KiB block) and the activity log, in one directory.
//
// Data and checksums are written with pwrite and made durable together by
// Flush (fdatasync of both). Nothing is synced per write: the activity log
// bounds what a crash can leave inconsistent, and Open re-verifies exactly
// that.
type Store struct {
	dir   string
	data  *os.File
	sums  *os.File
	size  int64
	al    *activityLog
	locks [256]sync.RWMutex // striped by block: a block's data and checksum change together
	// rec names the extents re-verified after a crash that no primary
	// has resent yet (recovered.go); the replication layer resends them.
	rec *recoveredSet
}

// StoreOptions tune a store.
type StoreOptions struct {
	ALExtents int // activity log capacity in 4 MiB extents; default 256
}

const maxVolumeBytes = 1 << 50 // 1 PiB: a limit, and room for the checksum file

// CreateStore makes a new empty store of sizeBytes in dir.
func CreateStore(dir string, sizeBytes int64, o StoreOptions) (*Store, error) {
	if sizeBytes <= 0 || sizeBytes%BlockBytes != 0 || sizeBytes > maxVolumeBytes {
		return nil, fmt.Errorf("volume size %d must be a positive multiple of %d up to %d", sizeBytes, BlockBytes, int64(maxVolumeBytes))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		return nil, fmt.Errorf("%s already holds a replica", dir)
	}
	for _, f := range []struct {
		name string
		size int64
	}{{"data", sizeBytes}, {"sums", sizeBytes / BlockBytes * sumBytes}} {
		fh, err := os.OpenFile(filepath.Join(dir, f.name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, err
		}
		err = fh.Truncate(f.size)
		if err == nil {
			err = fh.Sync()
		}
		fh.Close()
		if err != nil {
			return nil, err
		}
	}
	return OpenStore(dir, o)
}

// OpenStore opens a store; after a crash it recomputes the checksums of the
// extents the activity log names.
func OpenStore(dir string, o StoreOptions) (*Store, error) {
	if o.ALExtents == 0 {
		o.ALExtents = DefaultALExtents
	}
	s := &Store{dir: dir}
	var err error
	if s.data, err = os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR, 0); err != nil {
		return nil, err
	}
	if s.sums, err = os.OpenFile(filepath.Join(dir, "sums"), os.O_RDWR, 0); err != nil {
		s.data.Close()
		return nil, err
	}
	st, err := s.data.Stat()
	if err != nil {
		s.closeFiles()
		return nil, err
	}
	s.size = st.Size()
	sst, err := s.sums.Stat()
	if err != nil || sst.Size() != s.size/BlockBytes*sumBytes {
		s.closeFiles()
		return nil, fmt.Errorf("%s: checksum file does not match the data file", dir)
	}
	if s.rec, err = loadRecovered(dir); err != nil {
		s.closeFiles()
		return nil, err
	}
	var dirty []int64
	s.al, dirty, err = openActivityLog(filepath.Join(dir, "activity"), o.ALExtents, s.syncFiles)
	if err != nil {
		// Without a log we cannot know what a crash touched: the
		// replica is not opened (the node logs why) rather than serve
		// checksums that may not match the data.
		s.closeFiles()
		return nil, err
	}
	if len(dirty) > 0 {
		for _, e := range dirty {
			if err := s.reverify(e); err != nil {
				s.abandonOpen()
				return nil, err
			}
		}
		if err := s.syncFiles(); err != nil {
			s.abandonOpen()
			return nil, err
		}
		// The record first, the clean log second: a crash between the
		// two finds the log still dirty and records the extents again.
		// The other way round it would forget them (issue 4).
		if err := s.rec.add(dirty); err != nil {
			s.abandonOpen()
			return nil, err
		}
		if err := s.al.markClean(s.al.markBeforeFlush()); err != nil { // nothing writes during the open
			s.abandonOpen()
			return nil, err
		}
	}
	return s, nil
}

// abandonOpen closes a store whose Open failed during recovery without
// marking its log clean (Close would): the next Open must recover again.
func (s *Store) abandonOpen() {
	s.al.close()
	s.closeFiles()
}

func (s *Store) closeFiles() {
	s.data.Close()
	s.sums.Close()
}

// Size is the volume size.
func (s *Store) Size() int64 { return s.size }

// reverify recomputes the checksums of one extent from its data.
func (s *Store) reverify(extent int64) error {
	off := extent * ExtentBytes
	if off >= s.size {
		return nil
	}
	n := min(int64(ExtentBytes), s.size-off)
	buf := make([]byte, n)
	if err := pread(s.data, buf, off); err != nil {
		return err
	}
	sums := make([]byte, n/BlockBytes*sumBytes)
	for i := int64(0); i < n/BlockBytes; i++ {
		putSum(sums[i*sumBytes:], blockSum(buf[i*BlockBytes:(i+1)*BlockBytes]))
	}
	return pwrite(s.sums, sums, off/BlockBytes*sumBytes)
}

// lockRange locks the stripes of the blocks of [off, off+length) in
// ascending order (no deadlock between overlapping ranges).
func (s *Store) lockRange(off, length int64, write bool) func() {
	first, last := off/BlockBytes, (off+length-1)/BlockBytes
	var held [len(Store{}.locks)]bool
	n := 0
	for b := first; b <= last && n < len(held); b++ {
		if i := b % int64(len(held)); !held[i] {
			held[i] = true
			n++
		}
	}
	for i := range held {
		if held[i] {
			if write {
				s.locks[i].Lock()
			} else {
				s.locks[i].RLock()
			}
		}
	}
	return func() {
		for i := range held {
			if held[i] {
				if write {
					s.locks[i].Unlock()
				} else {
					s.locks[i].RUnlock()
				}
			}
		}
	}
}

func (s *Store) checkRange(off, length int64) error {
	if off < 0 || length < 0 || off+length > s.size || off+length < off {
		return fmt.Errorf("range %d+%d outside the volume (%d bytes): %w", off, length, s.size, unix.EINVAL)
	}
	return nil
}

// ReadAt reads p at off and checks every block it touches against its
// checksum. On a mismatch p is filled anyway and a *ChecksumError names the
// bad blocks (the caller reads them from another replica).
func (s *Store) ReadAt(p []byte, off int64) error {
	_, err := s.readAt(p, off, false)
	return err
}

// readAtSum is ReadAt of whole blocks that also returns the crc32c of
// all of p, folded from the block checksums the read computes anyway (a
// resync frame's checksum without another pass over the data).
func (s *Store) readAtSum(p []byte, off int64) (uint32, error) {
	if off%BlockBytes != 0 || len(p)%BlockBytes != 0 {
		return 0, fmt.Errorf("read of %d+%d: not whole blocks", off, len(p))
	}
	return s.readAt(p, off, true)
}

func (s *Store) readAt(p []byte, off int64, fold bool) (uint32, error) {
	var whole uint32
	n := int64(len(p))
	if n == 0 {
		return 0, nil
	}
	if err := s.checkRange(off, n); err != nil {
		return 0, err
	}
	unlock := s.lockRange(off, n, false)
	defer unlock()
	first, last := off/BlockBytes, (off+n-1)/BlockBytes
	aligned := off%BlockBytes == 0 && n%BlockBytes == 0
	var buf []byte
	if aligned {
		buf = p
	} else {
		buf = make([]byte, (last-first+1)*BlockBytes)
	}
	if err := pread(s.data, buf, first*BlockBytes); err != nil {
		return 0, err
	}
	sums := make([]byte, (last-first+1)*sumBytes)
	if err := pread(s.sums, sums, first*sumBytes); err != nil {
		return 0, err
	}
	var bad []int64
	for i := int64(0); i <= last-first; i++ {
		got := blockSum(buf[i*BlockBytes : (i+1)*BlockBytes])
		if !sumMatches(getSum(sums[i*sumBytes:]), got) {
			bad = append(bad, first+i)
		}
		if fold {
			whole = foldBlock(whole, got)
		}
	}
	if !aligned {
		copy(p, buf[off-first*BlockBytes:])
	}
	if bad != nil {
		return 0, &ChecksumError{Blocks: bad}
	}
	return whole, nil
}

// readRaw reads p at off as it lies on disk, without checking the
// checksums (digests: a bad block is digested as it is anyway).
func (s *Store) readRaw(p []byte, off int64) error {
	n := int64(len(p))
	if n == 0 {
		return nil
	}
	if err := s.checkRange(off, n); err != nil {
		return err
	}
	unlock := s.lockRange(off, n, false)
	defer unlock()
	return pread(s.data, p, off)
}

// WriteAt writes p at off with its checksums; with fua both are durable on
// return.
func (s *Store) WriteAt(p []byte, off int64, fua bool) error {
	return s.writeAt(p, nil, off, fua)
}

// writeAt is WriteAt with, when not nil, the crc32c of each block of p
// (p then holds whole blocks at a block boundary), computed already.
func (s *Store) writeAt(p []byte, blockSums []uint32, off int64, fua bool) error {
	n := int64(len(p))
	if blockSums != nil && (off%BlockBytes != 0 || n != int64(len(blockSums))*BlockBytes) {
		blockSums = nil // not whole blocks here: computed below
	}
	if n == 0 {
		return nil
	}
	if err := s.checkRange(off, n); err != nil {
		return err
	}
	if err := s.al.touch(off, n); err != nil {
		return err
	}
	defer s.al.done(off, n)
	unlock := s.lockRange(off, n, true)
	err := s.writeLockedSums(p, blockSums, off)
	unlock()
	if err == nil && fua {
		err = s.Flush()
	}
	return err
}

func (s *Store) writeLocked(p []byte, off int64) error { return s.writeLockedSums(p, nil, off) }

func (s *Store) writeLockedSums(p []byte, blockSums []uint32, off int64) error {
	n := int64(len(p))
	first, last := off/BlockBytes, (off+n-1)/BlockBytes
	sums := make([]byte, (last-first+1)*sumBytes)
	if blockSums != nil {
		if err := pwrite(s.data, p, off); err != nil {
			return err
		}
		for i, c := range blockSums {
			putSum(sums[i*sumBytes:], c)
		}
		return pwrite(s.sums, sums, first*sumBytes)
	}
	// A block the write covers in part keeps the rest of its bytes from
	// the disk: they are checked against their checksum first, or the
	// new checksum would vouch for bytes that went bad here (a corrupt
	// block that a read would have repaired from a replica would pass
	// as good from then on). The stripe lock keeps the block stable.
	var block []byte
	for _, b := range []int64{first, last} {
		start := b * BlockBytes
		if start >= off && start+BlockBytes <= off+n {
			continue // whole
		}
		if b == last && last == first && block != nil {
			break // one block, merged already
		}
		if block == nil {
			block = make([]byte, BlockBytes)
		}
		if err := pread(s.data, block, start); err != nil {
			return err
		}
		var stored [sumBytes]byte
		if err := pread(s.sums, stored[:], b*sumBytes); err != nil {
			return err
		}
		if !sumMatches(getSum(stored[:]), blockSum(block)) {
			return &ChecksumError{Blocks: []int64{b}}
		}
		lo, hi := max(start, off), min(start+BlockBytes, off+n)
		copy(block[lo-start:], p[lo-off:hi-off])
		putSum(sums[(b-first)*sumBytes:], blockSum(block))
	}
	if err := pwrite(s.data, p, off); err != nil {
		return err
	}
	for b := first; b <= last; b++ {
		start := b * BlockBytes
		if start >= off && start+BlockBytes <= off+n {
			putSum(sums[(b-first)*sumBytes:], blockSum(p[start-off:start-off+BlockBytes]))
		}
	}
	return pwrite(s.sums, sums, first*sumBytes)
}

// Zero makes a range read as zeroes (punching a hole where the range covers
// whole blocks) with matching checksums.
func (s *Store) Zero(off, length int64, fua bool) error {
	if length == 0 {
		return nil
	}
	if err := s.checkRange(off, length); err != nil {
		return err
	}
	if err := s.al.touch(off, length); err != nil {
		return err
	}
	defer s.al.done(off, length)
	unlock := s.lockRange(off, length, true)
	err := s.zeroLocked(off, length)
	unlock()
	if err == nil && fua {
		err = s.Flush()
	}
	return err
}

func (s *Store) zeroLocked(off, length int64) error {
	// Whole blocks are punched, with their checksums set to 0 ("never
	// written", which must read as zeroes); partial edges are written.
	headEnd := min(off+length, (off+BlockBytes-1)/BlockBytes*BlockBytes)
	tailStart := max(headEnd, (off+length)/BlockBytes*BlockBytes)
	if headEnd > off {
		if err := s.writeLocked(make([]byte, headEnd-off), off); err != nil {
			return err
		}
	}
	if tailStart > headEnd {
		if err := unix.Fallocate(int(s.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, headEnd, tailStart-headEnd); err != nil {
			if !errors.Is(err, unix.EOPNOTSUPP) {
				return err
			}
			for o := headEnd; o < tailStart; o += zeroChunkBytes {
				if err := pwrite(s.data, make([]byte, min(zeroChunkBytes, tailStart-o)), o); err != nil {
					return err
				}
			}
		}
		if err := pwrite(s.sums, make([]byte, (tailStart-headEnd)/BlockBytes*sumBytes), headEnd/BlockBytes*sumBytes); err != nil {
			return err
		}
	}
	if off+length > tailStart {
		return s.writeLocked(make([]byte, off+length-tailStart), tailStart)
	}
	return nil
}

const zeroChunkBytes = 1 << 20

// Flush makes every completed write durable.
func (s *Store) Flush() error { return s.syncFiles() }

func (s *Store) syncFiles() error {
	err := unix.Fdatasync(int(s.data.Fd()))
	if err == nil {
		err = unix.Fdatasync(int(s.sums.Fd()))
	}
	if err != nil {
		return s.syncFailed(err)
	}
	return nil
}

// syncFailed handles a failed fdatasync. The kernel reports a writeback
// error once and then marks the pages it could not write clean: what
// reads return (the page cache) may not be what the disk holds, the
// next fdatasync succeeds, and the checksum file may have reached the
// disk where the data did not, so even a checksum digest of a block can
// match a peer's while its data on disk is old. So the cached pages of
// both files are dropped (reads come from the disk from now on) and the
// whole copy is recorded as suspect: the next promotion compares the
// data of every region with a peer's (recovered.go) before this copy
// serves or counts as up to date. The record says so in memory even
// where the disk refuses to keep it.
func (s *Store) syncFailed(err error) error {
	_ = unix.Fadvise(int(s.data.Fd()), 0, 0, unix.FADV_DONTNEED)
	_ = unix.Fadvise(int(s.sums.Fd()), 0, 0, unix.FADV_DONTNEED)
	if rerr := s.rec.markWhole(); rerr != nil {
		return fmt.Errorf("fdatasync: %w (and recording this replica as suspect failed: %v)", err, rerr)
	}
	return fmt.Errorf("fdatasync: %w; this replica is suspect until a primary compares it with a peer's", err)
}

// VerifyBlocks re-reads [off, off+length) and returns the blocks whose data
// does not match their checksums (scrub).
func (s *Store) VerifyBlocks(off, length int64) ([]int64, error) {
	buf := make([]byte, min(length, ExtentBytes))
	var bad []int64
	for pos := off; pos < off+length; pos += int64(len(buf)) {
		chunk := buf[:min(int64(len(buf)), off+length-pos)]
		err := s.ReadAt(chunk, pos)
		var ce *ChecksumError
		if errors.As(err, &ce) {
			bad = append(bad, ce.Blocks...)
		} else if err != nil {
			return bad, err
		}
	}
	return bad, nil
}

// Close flushes, records a clean shutdown (the hot extents stay named,
// activitylog.go), and closes the files.
func (s *Store) Close() error {
	// A write may still be on its way in (a peer message being handled
	// while the node stops): one in flight now or begun later is not
	// covered by the flush below, and the record then stays dirty.
	since := s.al.markBeforeFlush()
	err := s.syncFiles()
	if err == nil && s.SyncFailures() == 0 {
		// After a failed fdatasync in this process the record stays
		// dirty: this flush succeeding says nothing of the pages the
		// failed one lost, and the next open re-verifies the hot
		// extents (the whole-volume mark may not have reached the disk).
		err = s.al.markClean(since)
	}
	s.al.close()
	s.closeFiles()
	return err
}

func pread(f *os.File, p []byte, off int64) error  { return fileio.ReadFull(int(f.Fd()), p, off) }
func pwrite(f *os.File, p []byte, off int64) error { return fileio.WriteFull(int(f.Fd()), p, off) }

// HotExtents lists the 4 MiB extents written recently (the activity log,
// across clean restarts too): after a crash of a primary, only they can
// differ between replicas.
func (s *Store) HotExtents() []int64 { return s.al.hotExtents() }

// Dir is the directory of the store.
func (s *Store) Dir() string { return s.dir }

// sumDigests returns one 64-bit digest per region of [off, off+length)
// computed from the stored block checksums instead of the data: the
// xxhash64 of the region's crc32c values (little endian, 4 bytes each, a
// stored 0 resolved by resolveZeroSums, so a punched, a zero-written and
// a never-written block agree). It reads 4 bytes per 4 KiB block, so comparing a restarted replica's hot
// extents costs almost nothing on either node, where reading and hashing
// the data cost both nodes a pass over it while a resync ran.
//
// It stands for the data as far as the stored checksums do: a block's
// data and checksum change together under its stripe lock (a write that
// covers a block in part checks the rest against the checksum first);
// after a crash, the extents that a write may have left torn were
// re-verified (checksums recomputed from the data) when the store opened;
// a clean record never covers a write begun after its flush. What it
// cannot see is silent corruption of data under an intact checksum: that
// is what scrub and verify (data digests) are for. Two blocks that differ
// with the same crc32c go unseen with probability 2^-32 each (DRBD's
// csums-alg and verify-alg allow crc32c for the same job), and a guest
// can write such a pair on purpose (crc32c is linear). What that buys it
// is a write of its own that a crashed replica lost staying lost on that
// copy, found by the next scrub; no other volume's data is involved.
func (s *Store) sumDigests(off, length, regionBytes int64) ([]uint64, error) {
	if regionBytes < BlockBytes || regionBytes%BlockBytes != 0 || off%regionBytes != 0 {
		return nil, fmt.Errorf("checksum digest of %d+%d in regions of %d: not aligned", off, length, regionBytes)
	}
	if err := s.checkRange(off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, nil
	}
	first := off / BlockBytes
	blocks := (length + BlockBytes - 1) / BlockBytes
	sums := make([]byte, blocks*sumBytes)
	unlock := s.lockRange(off, length, false)
	defer unlock()
	if err := pread(s.sums, sums, first*sumBytes); err != nil {
		return nil, err
	}
	if err := s.resolveZeroSums(sums, first); err != nil {
		return nil, err
	}
	perRegion := regionBytes / BlockBytes * sumBytes
	out := make([]uint64, 0, (length+regionBytes-1)/regionBytes)
	for o := int64(0); o < int64(len(sums)); o += perRegion {
		out = append(out, xxhash.Sum64(sums[o:min(o+perRegion, int64(len(sums)))]))
	}
	return out, nil
}

// resolveZeroSums replaces each stored 0 in sums (the checksums of the
// blocks from first on, in file order) with the crc32c of what that block
// holds. A stored 0 is ambiguous: "never written" or punched (the block
// reads as zeroes), or a block whose crc32c is 0, which a guest can write
// on purpose (crc32c is linear). Taking it for a zero block would make
// such a block compare equal to a zero block on another replica, and a
// write of it that a replica lost would never be resent. A block in a
// hole of the data file is zero; the others are read. Holes are found with
// SEEK_DATA, so a sparse volume costs a few lseek calls, not reads. The
// caller holds the blocks' stripe locks.
func (s *Store) resolveZeroSums(sums []byte, first int64) error {
	n := int64(len(sums) / sumBytes)
	var buf []byte
	for i := int64(0); i < n; {
		if getSum(sums[i*sumBytes:]) != 0 {
			i++
			continue
		}
		// A run of stored zeroes: [i, j).
		j := i + 1
		for j < n && getSum(sums[j*sumBytes:]) == 0 {
			j++
		}
		for k := i; k < j; {
			// The next block of the run that holds data, if any.
			data, err := unix.Seek(int(s.data.Fd()), (first+k)*BlockBytes, unix.SEEK_DATA)
			switch {
			case errors.Is(err, unix.ENXIO):
				data = (first + j) * BlockBytes // holes to the end of the file
			case err != nil:
				data = (first + k) * BlockBytes // no SEEK_DATA here: read them all
			}
			d := min(max(data/BlockBytes-first, k), j)
			for ; k < d; k++ {
				putSum(sums[k*sumBytes:], zeroBlockSum)
			}
			if k == j {
				break
			}
			// Blocks with data from k on: read up to the next hole (or
			// the end of the run), at most a buffer at a time.
			e := j
			if hole, err := unix.Seek(int(s.data.Fd()), (first+k)*BlockBytes, unix.SEEK_HOLE); err == nil {
				e = min(j, max(k+1, (hole+BlockBytes-1)/BlockBytes-first))
			}
			e = min(e, k+zeroSumReadBlocks)
			if buf == nil {
				buf = make([]byte, zeroSumReadBlocks*BlockBytes)
			}
			chunk := buf[:(e-k)*BlockBytes]
			if err := pread(s.data, chunk, (first+k)*BlockBytes); err != nil {
				return err
			}
			for b := int64(0); b < e-k; b++ {
				putSum(sums[(k+b)*sumBytes:], blockSum(chunk[b*BlockBytes:(b+1)*BlockBytes]))
			}
			k = e
		}
		i = j
	}
	return nil
}

// zeroSumReadBlocks bounds one read of resolveZeroSums.
const zeroSumReadBlocks = 256
