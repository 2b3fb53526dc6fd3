//go:build linux

package migrate

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// mfdNoexecSeal is MFD_NOEXEC_SEAL (Linux 6.3): guest RAM is never executed
// as a file, and asking for it keeps the kernel from logging a warning.
// Older kernels reject it with EINVAL, so NewMemory retries without.
const mfdNoexecSeal = 0x8

// Memory is a guest's RAM: an anonymous memfd mapped MAP_SHARED. Because it
// is a file, a VMM in another process can map the same pages (pass it Fd),
// and the destination can receive into it before the guest exists there.
//
// Bytes, Page and the mappings returned by Map stay valid until Close; using
// them afterwards faults. Memory does no locking of page contents: the guest
// writes them while the engine reads them, which is the point of dirty
// tracking.
type Memory struct {
	fd        int
	sizeBytes int64
	data      []byte
	// hugePages: the memfd is on hugetlbfs (NewHugeMemory). Such a file
	// takes no write(2), so the destination copies pages in through the
	// mapping instead of pwrite (ramFile).
	hugePages bool

	mu     sync.Mutex
	views  [][]byte // extra mappings from Map, unmapped by Close
	closed bool
}

// NewMemory creates a memfd of sizeBytes (a positive multiple of PageBytes),
// and maps it read-write. Pages are allocated by the kernel on first write;
// untouched pages read as zero and cost nothing.
func NewMemory(name string, sizeBytes int64) (*Memory, error) {
	if err := checkMemorySize(sizeBytes); err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|mfdNoexecSeal)
	if err == unix.EINVAL {
		fd, err = unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	}
	if err != nil {
		return nil, fmt.Errorf("migrate: memfd_create: %w", err)
	}
	m, err := sizeAndMap(fd, sizeBytes)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// HugePageBytes is the size of the huge pages NewHugeMemory asks for
// (MFD_HUGE_2MB). RAM on huge pages is a multiple of it.
const HugePageBytes = 2 << 20

// NewHugeMemory is NewMemory on 2 MiB huge pages from the kernel's
// hugetlb pool (MFD_HUGETLB), as hypervisors give guests: the host
// reserves the pool once (vm.nr_hugepages), pages come out of it without
// the page allocator, and they go back to it, not to the system, when the
// guest ends. Two things change for a migration: the destination writes
// pages through the mapping (hugetlbfs takes no pwrite), and a dirty page
// is a whole huge page, so a guest that writes 4 KiB here and there
// dirties 512 times as many bytes as with NewMemory. The pool must hold
// sizeBytes when this is called: the mapping reserves every page of it,
// and a short pool is an error here, never a SIGBUS later.
func NewHugeMemory(name string, sizeBytes int64) (*Memory, error) {
	if err := checkMemorySize(sizeBytes); err != nil {
		return nil, err
	}
	if sizeBytes%HugePageBytes != 0 {
		return nil, fmt.Errorf("migrate: RAM on huge pages must be a multiple of %d bytes, got %d", HugePageBytes, sizeBytes)
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_HUGETLB|unix.MFD_HUGE_2MB)
	if err != nil {
		return nil, fmt.Errorf("migrate: memfd_create on 2 MiB huge pages: %w (does the kernel have hugetlbfs?)", err)
	}
	m, err := sizeAndMap(fd, sizeBytes)
	if err != nil {
		if errors.Is(err, unix.ENOMEM) {
			return nil, fmt.Errorf("migrate: %d MiB of RAM on huge pages needs %d free 2 MiB pages in the hugetlb pool, and it has fewer (%s; raise it with sysctl vm.nr_hugepages): %w",
				sizeBytes>>20, sizeBytes/HugePageBytes, readHugePool(), err)
		}
		return nil, err
	}
	m.hugePages = true
	return m, nil
}

// hugePool is the hugetlb pool's counters from /proc/meminfo.
type hugePool struct {
	total, free, rsvd int64
	known             bool
}

func readHugePool() hugePool {
	var hp hugePool
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return hp
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "HugePages_Total:":
			hp.total, hp.known = n, true
		case "HugePages_Free:":
			hp.free = n
		case "HugePages_Rsvd:":
			hp.rsvd = n
		}
	}
	return hp
}

// available is what a new mapping can still reserve: free counts pages
// that mappings reserved but have not touched yet.
func (hp hugePool) available() int64 { return hp.free - hp.rsvd }

// String is for error messages.
func (hp hugePool) String() string {
	if !hp.known {
		return "no hugetlb pool"
	}
	return fmt.Sprintf("HugePages_Total: %d, HugePages_Free: %d, HugePages_Rsvd: %d", hp.total, hp.free, hp.rsvd)
}

// WarmHugePool touches every free page of the hugetlb pool once and gives
// them back, returning the bytes touched. On a VM whose host backs guest
// memory lazily, the first touch of a page is a fault on the host (about
// 1.7 CPU-s per GiB measured on this project's VMs, against 0.1 for a page
// touched before); pool pages stay with the pool when freed, so after
// this every huge page a guest or a migration takes is a cheap one. What
// `-mem-prealloc` does for one QEMU guest, once for the pool.
func WarmHugePool() (int64, error) {
	hp := readHugePool()
	free := hp.available()
	if free <= 0 {
		return 0, fmt.Errorf("migrate: the hugetlb pool has no free pages (%s; sysctl vm.nr_hugepages)", hp)
	}
	sizeBytes := free * HugePageBytes
	m, err := NewHugeMemory("paddock-warm-pool", sizeBytes)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	if err := PopulateWrite(m.Bytes()); err != nil {
		return 0, fmt.Errorf("migrate: touching the hugetlb pool: %w", err)
	}
	return sizeBytes, nil
}

// HugePages reports whether m is on huge pages (NewHugeMemory).
func (m *Memory) HugePages() bool { return m.hugePages }

// sizeAndMap sizes a new memfd and maps it; on error it closes fd.
func sizeAndMap(fd int, sizeBytes int64) (*Memory, error) {
	if err := unix.Ftruncate(fd, sizeBytes); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("migrate: ftruncate memfd to %d bytes: %w", sizeBytes, err)
	}
	m, err := mapMemory(fd, sizeBytes)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return m, nil
}

// OpenMemory adopts fd, a memfd (or any shmem file) of exactly sizeBytes,
// for example one received from a VMM over a unix socket. The Memory owns fd
// from then on: Close closes it. On error fd is left open.
func OpenMemory(fd int, sizeBytes int64) (*Memory, error) {
	if err := checkMemorySize(sizeBytes); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("migrate: fstat memory fd: %w", err)
	}
	if st.Size != sizeBytes {
		return nil, fmt.Errorf("migrate: memory fd holds %d bytes, want %d", st.Size, sizeBytes)
	}
	return mapMemory(fd, sizeBytes)
}

func mapMemory(fd int, sizeBytes int64) (*Memory, error) {
	data, err := unix.Mmap(fd, 0, int(sizeBytes), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("migrate: mmap %d bytes: %w", sizeBytes, err)
	}
	m := &Memory{fd: fd, sizeBytes: sizeBytes, data: data, hugePages: isHugetlbfs(fd)}
	mapped.Lock()
	mapped.m[&data[0]] = m
	mapped.Unlock()
	return m, nil
}

// mapped finds a Memory from its primary mapping: the destination is given
// RAM as a byte slice (DestOptions.PrepareRAM), and when that slice is a
// Memory's it writes raw pages with pwrite on the memfd (see ramFile).
var mapped = struct {
	sync.Mutex
	m map[*byte]*Memory
}{m: map[*byte]*Memory{}}

// ramFile returns a duplicate of the memfd whose primary mapping is
// exactly ram, or -1. The duplicate keeps the file alive if the Memory is
// closed meanwhile (writes then go to a discarded file, never to whatever
// reuses the descriptor number); the caller closes it.
func ramFile(ram []byte) int {
	m := memoryOf(ram)
	if m == nil {
		return -1
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || int64(len(ram)) != m.sizeBytes {
		return -1
	}
	fd, err := unix.FcntlInt(uintptr(m.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// ramFileForWrite is ramFile for pwrite: -1 when the RAM is on hugetlbfs,
// which has no write(2); the caller then copies through the mapping.
func ramFileForWrite(ram []byte) int {
	if m := memoryOf(ram); m == nil || m.hugePages {
		return -1
	}
	return ramFile(ram)
}

// memoryOf returns the Memory whose primary mapping starts at ram, or nil.
func memoryOf(ram []byte) *Memory {
	if len(ram) == 0 {
		return nil
	}
	mapped.Lock()
	defer mapped.Unlock()
	return mapped.m[&ram[0]]
}

// hugetlbfsMagic is HUGETLBFS_MAGIC, statfs's f_type of hugetlbfs.
const hugetlbfsMagic = 0x958458f6

// isHugetlbfs reports whether fd is a file on hugetlbfs (a memfd made
// with MFD_HUGETLB, or one a VMM handed over).
func isHugetlbfs(fd int) bool {
	var st unix.Statfs_t
	return unix.Fstatfs(fd, &st) == nil && uint32(st.Type) == hugetlbfsMagic
}

// closeRAMFile closes a descriptor from ramFile.
func closeRAMFile(fd int) { unix.Close(fd) }

// preadFull fills b from offBytes of fd.
func preadFull(fd int, b []byte, offBytes int64) error {
	for len(b) > 0 {
		n, err := unix.Pread(fd, b, offBytes)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("migrate: pread from guest RAM: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("migrate: pread from guest RAM: end of file at %d", offBytes)
		}
		b, offBytes = b[n:], offBytes+int64(n)
	}
	return nil
}

// pwriteFull writes all of b at offBytes of fd.
func pwriteFull(fd int, b []byte, offBytes int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(fd, b, offBytes)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("migrate: pwrite to guest RAM: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("migrate: pwrite to guest RAM wrote nothing at %d", offBytes)
		}
		b, offBytes = b[n:], offBytes+int64(n)
	}
	return nil
}

// pwritevFull writes the pieces of iov, in order, from offBytes of fd with
// as few pwritev calls as the kernel allows (one, normally; IOV_MAX is
// 1024 and a caller passes at most MaxPagesPerFrame pieces). It consumes
// iov's slice headers on a short write.
func pwritevFull(fd int, iov [][]byte, offBytes int64) error {
	for len(iov) > 0 {
		n, err := unix.Pwritev(fd, iov, offBytes)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("migrate: pwritev to guest RAM: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("migrate: pwritev to guest RAM wrote nothing at %d", offBytes)
		}
		offBytes += int64(n)
		for n > 0 && len(iov) > 0 {
			if n >= len(iov[0]) {
				n -= len(iov[0])
				iov = iov[1:]
			} else {
				iov[0] = iov[0][n:]
				n = 0
			}
		}
	}
	return nil
}

// Bytes returns the primary mapping of the whole RAM.
func (m *Memory) Bytes() []byte { return m.data }

// SizeBytes returns the RAM size.
func (m *Memory) SizeBytes() int64 { return m.sizeBytes }

// Pages returns the number of pages.
func (m *Memory) Pages() int { return int(m.sizeBytes / PageBytes) }

// Page returns page i of the primary mapping.
func (m *Memory) Page(i int) []byte {
	off := i * PageBytes
	return m.data[off : off+PageBytes : off+PageBytes]
}

// Fd returns the memfd, for handing to a VMM. It stays owned by m.
func (m *Memory) Fd() int { return m.fd }

// Map makes another MAP_SHARED mapping of the same pages, as a VMM in this
// process would. A tracker sees writes only through the mappings it tracks:
// track every mapping that the guest writes through. Close unmaps it.
func (m *Memory) Map() ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	view, err := unix.Mmap(m.fd, 0, int(m.sizeBytes), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("migrate: mmap second view: %w", err)
	}
	m.views = append(m.views, view)
	return view, nil
}

// Close unmaps every mapping and closes the memfd. The pages are freed when
// no other process holds the file. Close is idempotent.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	mapped.Lock()
	delete(mapped.m, &m.data[0])
	mapped.Unlock()
	var first error
	for _, v := range m.views {
		if err := unix.Munmap(v); err != nil && first == nil {
			first = fmt.Errorf("migrate: munmap view: %w", err)
		}
	}
	m.views = nil
	if err := unix.Munmap(m.data); err != nil && first == nil {
		first = fmt.Errorf("migrate: munmap: %w", err)
	}
	m.data = nil
	if err := unix.Close(m.fd); err != nil && first == nil {
		first = fmt.Errorf("migrate: close memfd: %w", err)
	}
	m.fd = -1
	return first
}

// madvPopulateWrite is MADV_POPULATE_WRITE (Linux 5.14): fault pages in
// writable, in one call.
const madvPopulateWrite = 23

// PopulateWrite allocates and maps the pages of b (a page-aligned part of
// a mapping) in one call. Faulting shmem pages one by one costs ~17 µs a
// page here under parallel writers, a populate ~1.2 µs: the destination
// populates a chunk before it first writes it. An error (an old kernel)
// only means the pages fault in as they are written.
func PopulateWrite(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return unix.Madvise(b, madvPopulateWrite)
}

// IsHole reports whether [offBytes, offBytes+lengthBytes) of the memfd
// holds no allocated page: it reads as zero, and reading it through the
// mapping would allocate every page. The source's bulk pass sends such
// ranges as zero without touching them.
func (m *Memory) IsHole(offBytes, lengthBytes int64) bool {
	next, err := unix.Seek(m.fd, offBytes, unix.SEEK_DATA)
	if err == unix.ENXIO {
		return true // no data at or after offBytes
	}
	return err == nil && next >= offBytes+lengthBytes
}
