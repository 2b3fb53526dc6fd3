package blockrep

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"slices"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// The activity log bounds what a crash costs without a synchronous metadata
// write per data write (DRBD's idea). The volume is cut into extents of
// 4 MiB; before a write touches an extent that is not "hot", the extent is
// added to the log and the log is made durable (one pwrite + fdatasync).
// Writes to hot extents cost nothing extra. When the log is full, the
// least recently used extent leaves it, after an fdatasync of the data and
// checksums has made its writes durable. After a crash, only the extents in
// the log can hold data and checksums that disagree, so only they are
// re-verified (their checksums recomputed from the data) and, later, resent
// to peers. A clean stop syncs everything and writes a clean record that
// still names the hot extents: nothing to re-verify, but they stay hot
// after the next start, since a crashed primary's write in flight may have
// reached this copy there and not another one (issue 4); promises name
// them until newer writes evict them.
//
// On disk: two slots of alSlotBytes, written alternately, each with a
// sequence number and a crc32c, so a torn write of one slot leaves the
// other intact.

const (
	ExtentBytes      = 4 << 20
	alSlotBytes      = 8192
	alHeaderBytes    = 4 + 4 + 8 + 4 + 4 // magic, flags, seq, count, crc
	alMaxExtents     = (alSlotBytes - alHeaderBytes) / 8
	alMagic          = 0x5044414c // "PDAL"
	alFlagClean      = 1
	DefaultALExtents = 256 // 1 GiB of hot data
)

type activityLog struct {
	mu       sync.Mutex
	f        *os.File
	seq      uint64
	capacity int
	hot      map[int64]uint64 // extent -> last use (a counter)
	busy     map[int64]int    // extent -> writes in flight
	tick     uint64
	// syncData makes data and checksums durable before an extent leaves.
	syncData func() error
	// rewrite: the record on disk may not name every hot extent as
	// dirty (it says clean, which keeps its hot extents named, or its
	// last write failed), so the next write rewrites it even when its
	// extents are hot already.
	rewrite bool
	updates int64 // log writes, for metrics and tests
	// touches counts writes begun (touch), so that a clean record can
	// refuse to cover a write that began after the flush it stands on.
	touches uint64
}

type alRecord struct {
	seq     uint64
	clean   bool
	extents []int64
}

func encodeAL(r alRecord) []byte {
	b := make([]byte, alSlotBytes)
	binary.BigEndian.PutUint32(b[0:], alMagic)
	var flags uint32
	if r.clean {
		flags = alFlagClean
	}
	binary.BigEndian.PutUint32(b[4:], flags)
	binary.BigEndian.PutUint64(b[8:], r.seq)
	binary.BigEndian.PutUint32(b[16:], uint32(len(r.extents)))
	for i, e := range r.extents {
		binary.BigEndian.PutUint64(b[alHeaderBytes+8*i:], uint64(e))
	}
	binary.BigEndian.PutUint32(b[20:], 0)
	sum := crc32.Checksum(b, castagnoli)
	binary.BigEndian.PutUint32(b[20:], sum)
	return b
}

func decodeAL(b []byte) (alRecord, error) {
	if len(b) != alSlotBytes || binary.BigEndian.Uint32(b) != alMagic {
		return alRecord{}, errors.New("no activity log record")
	}
	sum := binary.BigEndian.Uint32(b[20:])
	c := append([]byte(nil), b...)
	binary.BigEndian.PutUint32(c[20:], 0)
	if crc32.Checksum(c, castagnoli) != sum {
		return alRecord{}, errors.New("activity log record checksum mismatch")
	}
	n := binary.BigEndian.Uint32(b[16:])
	if n > alMaxExtents {
		return alRecord{}, errors.New("activity log record too long")
	}
	r := alRecord{seq: binary.BigEndian.Uint64(b[8:]), clean: binary.BigEndian.Uint32(b[4:])&alFlagClean != 0}
	for i := uint32(0); i < n; i++ {
		r.extents = append(r.extents, int64(binary.BigEndian.Uint64(b[alHeaderBytes+8*i:])))
	}
	return r, nil
}

// openActivityLog reads the log and returns the extents a crash may have
// left inconsistent (empty after a clean shutdown). A log with neither slot
// readable is an error: the caller must then re-verify everything.
func openActivityLog(path string, capacity int, syncData func() error) (*activityLog, []int64, error) {
	// At most half of what a slot holds: a promise names the hot and the
	// recovered extents together (Replica.hotAndRecovered).
	if capacity <= 0 || capacity > alMaxExtents/2 {
		return nil, nil, fmt.Errorf("activity log of %d extents: 1 to %d", capacity, alMaxExtents/2)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, err
	}
	al := &activityLog{f: f, capacity: capacity, hot: map[int64]uint64{}, busy: map[int64]int{}, syncData: syncData}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if st.Size() == 0 {
		// A new log: start clean.
		if err := al.write(true); err != nil {
			f.Close()
			return nil, nil, err
		}
		return al, nil, nil
	}
	var best *alRecord
	for slot := 0; slot < 2; slot++ {
		b := make([]byte, alSlotBytes)
		if _, err := f.ReadAt(b, int64(slot)*alSlotBytes); err != nil {
			continue
		}
		r, err := decodeAL(b)
		if err != nil {
			continue
		}
		if best == nil || r.seq > best.seq {
			best = &r
		}
	}
	if best == nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: both activity log slots are unreadable", path)
	}
	al.seq = best.seq
	al.rewrite = best.clean
	if !best.clean {
		return al, best.extents, nil
	}
	// A clean stop synced data and checksums, so nothing needs a
	// re-verify; but the extents it still named hot stay hot. A write
	// in flight from a primary that then crashed may have reached this
	// copy and not another one in them, and only the hot extents of the
	// promises tell the next primary where to compare (issue 4). They
	// leave the log as any hot extent does: evicted by newer writes,
	// which come only from a primary that collected this promise.
	for _, e := range best.extents {
		al.tick++
		al.hot[e] = al.tick
	}
	return al, nil, nil
}

// write makes the current hot set durable in the next slot.
func (al *activityLog) write(clean bool) error {
	al.seq++
	r := alRecord{seq: al.seq, clean: clean}
	for e := range al.hot {
		r.extents = append(r.extents, e)
	}
	sort.Slice(r.extents, func(i, j int) bool { return r.extents[i] < r.extents[j] })
	al.rewrite = true // until the record is durable
	if _, err := al.f.WriteAt(encodeAL(r), int64(al.seq%2)*alSlotBytes); err != nil {
		return err
	}
	al.updates++
	if err := unix.Fdatasync(int(al.f.Fd())); err != nil {
		return err
	}
	al.rewrite = clean
	return nil
}

// touch makes the extents of [off, off+length) hot, writing the log only
// when one of them was cold, and counts the write as in flight until done.
func (al *activityLog) touch(off, length int64) error {
	if length <= 0 {
		return nil
	}
	first, last := off/ExtentBytes, (off+length-1)/ExtentBytes
	al.mu.Lock()
	defer al.mu.Unlock()
	al.touches++
	changed := false
	for e := first; e <= last; e++ {
		al.tick++
		if _, ok := al.hot[e]; !ok {
			// Down to below capacity: a log restored after a clean
			// stop may hold more than this store's capacity.
			for len(al.hot) >= al.capacity {
				evicted, err := al.evict()
				if err != nil {
					return err
				}
				if !evicted {
					break
				}
			}
			if len(al.hot) >= alMaxExtents {
				return fmt.Errorf("activity log full: %d extents have writes in flight", len(al.hot))
			}
			changed = true
		}
		al.hot[e] = al.tick
	}
	if changed || al.rewrite {
		if err := al.write(false); err != nil {
			return err
		}
	}
	for e := first; e <= last; e++ {
		al.busy[e]++
	}
	return nil
}

// done ends what touch began.
func (al *activityLog) done(off, length int64) {
	if length <= 0 {
		return
	}
	first, last := off/ExtentBytes, (off+length-1)/ExtentBytes
	al.mu.Lock()
	for e := first; e <= last; e++ {
		if al.busy[e]--; al.busy[e] <= 0 {
			delete(al.busy, e)
		}
	}
	al.mu.Unlock()
}

// evict drops the least recently used extent that has no write in flight,
// after making every completed write durable: the extent is then no longer
// at risk. An extent with a write in flight must stay, or that write could
// land after the sync and be lost to recovery. With none idle, the log
// grows past its capacity for a while (up to alMaxExtents).
func (al *activityLog) evict() (bool, error) {
	var victim int64 = -1
	var oldest uint64
	for e, t := range al.hot {
		if al.busy[e] > 0 {
			continue
		}
		if victim < 0 || t < oldest {
			victim, oldest = e, t
		}
	}
	if victim < 0 {
		return false, nil
	}
	if err := al.syncData(); err != nil {
		return false, err
	}
	delete(al.hot, victim)
	return true, nil
}

// markClean records a clean state (after a flush of everything): nothing
// to re-verify after the next start. The hot extents stay named in the
// record (and hot after the next start): consistent on this disk, they
// may still differ from another copy where a crashed primary's write in
// flight reached one and not the other. since is cleanMark from before
// that flush began: a write in flight then (its data may have landed
// after the flush read it) or begun after it (in flight, or done but
// maybe not durable) leaves the record not clean, so its extent is
// re-verified after a crash.
func (al *activityLog) markClean(since cleanMark) error {
	al.mu.Lock()
	defer al.mu.Unlock()
	// Idle then and no write begun since: none is in flight now either.
	return al.write(since.idle && al.touches == since.touches)
}

// cleanMark is what markClean needs to know of the time a flush began.
type cleanMark struct {
	touches uint64 // writes begun so far
	idle    bool   // none of them in flight
}

// markBeforeFlush is taken before the flush that markClean relies on.
func (al *activityLog) markBeforeFlush() cleanMark {
	al.mu.Lock()
	defer al.mu.Unlock()
	return cleanMark{touches: al.touches, idle: len(al.busy) == 0}
}

func (al *activityLog) close() error { return al.f.Close() }

// hotExtents lists the extents a crash could leave different from a peer:
// those written recently or with a write in flight.
func (al *activityLog) hotExtents() []int64 {
	al.mu.Lock()
	defer al.mu.Unlock()
	out := make([]int64, 0, len(al.hot))
	for e := range al.hot {
		out = append(out, e)
	}
	slices.Sort(out)
	return out
}
