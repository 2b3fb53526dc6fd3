package blockrep

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/paddock-io/paddock/internal/atomicfile"
)

// The recovered record: the extents a crash of this replica may have left
// older than the other copies, kept on disk until a primary confirms it
// sent them again.
//
// After a crash (power loss, kernel crash) writes this replica
// acknowledged without a FLUSH may be missing from its disk; they lie in
// the extents its activity log named. Open re-verifies those extents (so
// their checksums match whatever data survived) and then marks the log
// clean, so the log alone would forget them at the next crash, and the
// checksums no longer tell that the data is old. The record remembers
// them instead: it is written (crash-safely: write, fsync, rename, fsync
// dir) before the log is marked clean, it survives any number of
// restarts, and only a primary that resent those extents (MsgResolve,
// after this replica flushed them) shrinks it. Until then the replica is
// not a complete up-to-date copy: its promises say so (FlagRecovering),
// a primary keeps it out of the generation's set until the extents are
// resent, and a recovering candidate fetches them from a copy that is
// not recovering before it serves.
//
// The record is bounded: past maxRecoveredExtents extents it says "the
// whole volume" instead (a full digest comparison resolves it).

const (
	recoveredFileName = "recovered.json"
	// maxRecoveredExtents bounds the list (and the promise that carries
	// it, beside the hot extents): half of what an activity log slot
	// holds, as the log's capacity is.
	maxRecoveredExtents = alMaxExtents / 2
)

type recoveredFile struct {
	// Whole: every extent is suspect (the list overflowed, or the
	// record could not be read).
	Whole   bool    `json:"whole,omitempty"`
	Extents []int64 `json:"extents,omitempty"`
}

// recoveredSet is the record in memory, beside its file.
type recoveredSet struct {
	mu      sync.Mutex
	path    string
	whole   bool
	extents []int64 // sorted, no duplicates
	// syncFailures counts the failed fdatasyncs of this process
	// (markWhole): a resolve that a comparison begun before one of them
	// asks for is refused, since what was compared may not be on disk.
	syncFailures uint64
}

// loadRecovered reads the record; a missing file is an empty record. An
// unreadable one counts as the whole volume: the safe side (a resend of
// everything that differs, found by digests).
func loadRecovered(dir string) (*recoveredSet, error) {
	rs := &recoveredSet{path: filepath.Join(dir, recoveredFileName)}
	b, err := os.ReadFile(rs.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return rs, nil
	case err != nil:
		return nil, err
	}
	var f recoveredFile
	if err := json.Unmarshal(b, &f); err != nil || len(f.Extents) > maxRecoveredExtents {
		rs.whole = true
		return rs, nil
	}
	rs.whole = f.Whole
	rs.extents = normExtents(f.Extents)
	return rs, nil
}

func normExtents(es []int64) []int64 {
	out := slices.Clone(es)
	// An extent past the largest volume cannot exist (a forged promise or
	// a damaged record): dropped, so that no offset computed from it
	// overflows (found in review). Those past this volume's end are
	// skipped where they are used.
	out = slices.DeleteFunc(out, func(e int64) bool { return e < 0 || e >= maxVolumeBytes/ExtentBytes })
	slices.Sort(out)
	return slices.Compact(out)
}

// save writes the record crash-safely; an empty record removes the file
// (then fsyncs the directory, so the removal is durable too).
func (rs *recoveredSet) save() error {
	if !rs.whole && len(rs.extents) == 0 {
		if err := os.Remove(rs.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		d, err := os.Open(filepath.Dir(rs.path))
		if err != nil {
			return err
		}
		defer d.Close()
		return d.Sync()
	}
	b, err := json.Marshal(recoveredFile{Whole: rs.whole, Extents: rs.extents})
	if err != nil {
		return err
	}
	return atomicfile.Write(rs.path, b, 0o600)
}

// add records more suspect extents, durably.
func (rs *recoveredSet) add(es []int64) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if len(es) == 0 {
		return nil
	}
	next := normExtents(append(slices.Clone(rs.extents), es...))
	whole := rs.whole
	if len(next) > maxRecoveredExtents {
		whole, next = true, nil
	}
	if whole {
		next = nil
	}
	prevWhole, prev := rs.whole, rs.extents
	rs.whole, rs.extents = whole, next
	if err := rs.save(); err != nil {
		rs.whole, rs.extents = prevWhole, prev
		return fmt.Errorf("recording the extents a crash may have left old: %w", err)
	}
	return nil
}

// markWhole records every extent as suspect (a failed fdatasync,
// Store.syncFailed). The record in memory says so even when the file
// cannot be written: this process does not take its copy for a
// complete one either way.
func (rs *recoveredSet) markWhole() error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.syncFailures++
	rs.whole, rs.extents = true, nil
	if err := rs.save(); err != nil {
		return fmt.Errorf("recording the whole volume as suspect: %w", err)
	}
	return nil
}

// resolve drops extents that a primary resent (whole: it compared the
// whole volume), durably. The caller flushed the data first and says how
// many fdatasyncs had failed when the comparison began (SyncFailures):
// if one failed since, or the record says the whole volume and only
// extents were resent, nothing is dropped and the answer is an error
// (the primary compares again).
func (rs *recoveredSet) resolve(es []int64, whole bool, syncFailuresBefore uint64) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.syncFailures != syncFailuresBefore {
		return fmt.Errorf("an fdatasync failed on this replica after the comparison began (%d failures in this process): its copy must be compared again", rs.syncFailures)
	}
	if rs.whole && !whole {
		return errors.New("this replica's record says its whole copy is suspect: resending extents does not resolve it, the whole volume must be compared")
	}
	prevWhole, prev := rs.whole, rs.extents
	if whole {
		rs.whole, rs.extents = false, nil
	} else if !rs.whole {
		rs.extents = slices.DeleteFunc(slices.Clone(rs.extents), func(e int64) bool { return slices.Contains(es, e) })
	}
	if rs.whole == prevWhole && len(rs.extents) == len(prev) {
		return nil
	}
	if err := rs.save(); err != nil {
		rs.whole, rs.extents = prevWhole, prev
		return fmt.Errorf("clearing resent extents from the recovered record: %w", err)
	}
	return nil
}

func (rs *recoveredSet) get() (extents []int64, whole bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return slices.Clone(rs.extents), rs.whole
}

// Recovered lists the extents this replica re-verified after a crash (and
// after any earlier crash) that no primary has yet confirmed it resent;
// whole says the entire volume is suspect instead. Until both are empty
// the replica is not a complete up-to-date copy.
func (s *Store) Recovered() (extents []int64, whole bool) { return s.rec.get() }

// Recovering says whether any extent is still unresolved.
func (s *Store) Recovering() bool {
	es, whole := s.rec.get()
	return whole || len(es) > 0
}

// ResolveRecovered makes what was written so far durable, then drops the
// given extents (whole: all of them) from the recovered record. A primary
// calls it (MsgResolve) once it resent them; a recovering primary once it
// fetched them from a copy that is not recovering.
func (s *Store) ResolveRecovered(extents []int64, whole bool, syncFailuresBefore uint64) error {
	if err := s.Flush(); err != nil {
		return err
	}
	return s.rec.resolve(extents, whole, syncFailuresBefore)
}

// SyncFailures counts the fdatasyncs that failed on this store in this
// process. A comparison notes it when it begins and passes it to
// ResolveRecovered.
func (s *Store) SyncFailures() uint64 {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	return s.rec.syncFailures
}
