package nbd

import (
	"sync"
	"syscall"
)

// MemoryBackend keeps an export in RAM. It is for tests, fuzzing and
// benchmarks, never for data that matters.
type MemoryBackend struct {
	mu       sync.RWMutex
	data     []byte
	readOnly bool
}

// NewMemoryBackend returns a zeroed export of sizeBytes.
func NewMemoryBackend(sizeBytes int64, readOnly bool) *MemoryBackend {
	return &MemoryBackend{data: make([]byte, sizeBytes), readOnly: readOnly}
}

// Bytes returns the contents (not a copy: only for tests).
func (m *MemoryBackend) Bytes() []byte { return m.data }

func (m *MemoryBackend) Size() int64 { return int64(len(m.data)) }

func (m *MemoryBackend) Features() Features {
	return Features{ReadOnly: m.readOnly, CanTrim: !m.readOnly, CanZero: !m.readOnly, CanFastZero: !m.readOnly, CanCache: true, CanMultiConn: true}
}

func (m *MemoryBackend) ReadAt(p []byte, off int64) error {
	m.mu.RLock()
	copy(p, m.data[off:])
	m.mu.RUnlock()
	return nil
}

func (m *MemoryBackend) WriteAt(p []byte, off int64, fua bool) error {
	if m.readOnly {
		return syscall.EPERM
	}
	m.mu.Lock()
	copy(m.data[off:], p)
	m.mu.Unlock()
	return nil
}

func (m *MemoryBackend) Flush() error { return nil }

func (m *MemoryBackend) Trim(off, length int64, fua bool) error {
	return m.Zero(off, length, false, false, fua)
}

func (m *MemoryBackend) Zero(off, length int64, noHole, fast, fua bool) error {
	if m.readOnly {
		return syscall.EPERM
	}
	m.mu.Lock()
	clear(m.data[off : off+length])
	m.mu.Unlock()
	return nil
}

func (m *MemoryBackend) Cache(off, length int64) error { return nil }
