package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/paddock-io/paddock/internal/atomicfile"
)

// replicaRecord is the node's memory, kept outside the volumes' own
// directories, of which volumes it has created a replica of. A replica
// whose directory is gone while the record names it was lost (a replaced
// disk, a deleted directory): it is created again Blank, so that its
// promises do not count as knowledge and it is rebuilt in full before it
// holds data again (blockrep/epoch.go, rule 4). Without the record, a
// lost replica would come back looking like a new one that never took a
// write, and could complete a promise quorum that elects a stale replica.
type replicaRecord struct {
	path string
	mu   sync.Mutex
	ids  []uint64 // sorted volume ids
}

func loadReplicaRecord(path string) (*replicaRecord, error) {
	r := &replicaRecord{path: path}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return r, nil
	case err != nil:
		return nil, err
	}
	if err := json.Unmarshal(b, &r.ids); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	slices.Sort(r.ids)
	return r, nil
}

// created says whether this node created a replica of volume id before.
func (r *replicaRecord) created(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := slices.BinarySearch(r.ids, id)
	return ok
}

// add records a replica durably; it must return before the replica's
// directory is created.
func (r *replicaRecord) add(id uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := slices.BinarySearch(r.ids, id)
	if ok {
		return nil
	}
	next := slices.Insert(slices.Clone(r.ids), i, id)
	if err := r.save(next); err != nil {
		return err
	}
	r.ids = next
	return nil
}

// remove forgets a replica whose volume was deleted (after its directory
// was removed; volume ids are never reused).
func (r *replicaRecord) remove(id uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := slices.BinarySearch(r.ids, id)
	if !ok {
		return nil
	}
	next := slices.Delete(slices.Clone(r.ids), i, i+1)
	if err := r.save(next); err != nil {
		return err
	}
	r.ids = next
	return nil
}

func (r *replicaRecord) save(ids []uint64) error {
	b, err := json.Marshal(ids)
	if err != nil {
		return err
	}
	return atomicfile.Write(r.path, b, 0o600)
}
