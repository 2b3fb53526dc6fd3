//go:build linux

package migrate

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UffdTracker is the default Tracker: userfaultfd write-protection in async
// mode plus the PAGEMAP_SCAN ioctl (Linux 6.7+).
//
// How it works: the tracked mappings are registered for write-protect with
// UFFD_FEATURE_WP_ASYNC, so a write to a protected page never reaches user
// space: the kernel clears the page's protection bit on the spot and the
// writer goes on. Start protects the whole range (UFFDIO_WRITEPROTECT; with
// WP_UNPOPULATED even pages never touched get a marker). Collect asks
// PAGEMAP_SCAN for pages whose protection is gone (PAGE_IS_WRITTEN) and, with
// PM_SCAN_WP_MATCHING, re-protects exactly those under the page table lock,
// so a write racing with the scan is either reported now or stays
// unprotected-and-written for the next round.
//
// The kernel tracks page table entries, not file pages. Writes through a
// mapping that is not tracked (another view of the same memfd, another
// process's mapping, pwrite on the fd) are not seen: every mapping the guest
// writes through must be passed to NewUffdTracker. Writes by the kernel into
// a tracked mapping (read(2) into guest RAM) fault like user writes and are
// seen.
type UffdTracker struct {
	uffd    int
	pagemap int
	views   []uffdView
	pages   int

	mu      sync.Mutex // serializes Start, Collect, Close; guards vec and arg
	vec     []pageRegion
	arg     pmScanArg
	scratch *Bitmap // distinct pages across views; nil with one view
	started bool
	closed  bool
}

type uffdView struct {
	start, end uintptr
}

// scanRegionsPerCall bounds PAGEMAP_SCAN's output vector (24 KiB). The
// kernel coalesces adjacent written pages into one region, so a 1 GiB scan
// needs one call unless the dirty set is fragmented; then Collect loops on
// walk_end.
const scanRegionsPerCall = 1024

// maxTrackedViews bounds the mappings one tracker follows.
const maxTrackedViews = 8

// NewUffdTracker tracks views, page-aligned mappings of the same guest RAM
// in this process (typically Memory.Bytes and the VMM's own mapping), all
// of the same length. Page i of every view is page i of the result. The
// mappings must outlive the tracker.
//
// On a kernel without the needed features the error is an
// *UnsupportedError naming the first missing one.
func NewUffdTracker(views ...[]byte) (*UffdTracker, error) {
	if len(views) == 0 || len(views) > maxTrackedViews {
		return nil, fmt.Errorf("migrate: a tracker follows 1 to %d mappings, got %d", maxTrackedViews, len(views))
	}
	size := len(views[0])
	if err := checkMemorySize(int64(size)); err != nil {
		return nil, err
	}
	t := &UffdTracker{uffd: -1, pagemap: -1, pages: size / PageBytes}
	for _, v := range views {
		if len(v) != size {
			return nil, fmt.Errorf("migrate: tracked mappings differ in length: %d and %d bytes", size, len(v))
		}
		start := uintptr(unsafe.Pointer(unsafe.SliceData(v)))
		if start%PageBytes != 0 {
			return nil, errors.New("migrate: tracked mapping is not page aligned")
		}
		t.views = append(t.views, uffdView{start: start, end: start + uintptr(size)})
	}
	if err := t.open(); err != nil {
		t.closeFds()
		return nil, err
	}
	t.vec = make([]pageRegion, scanRegionsPerCall)
	if len(t.views) > 1 {
		t.scratch = NewBitmap(t.pages)
	}
	return t, nil
}

// CheckUffdTracker reports whether this kernel and process can run an
// UffdTracker over guest memory: nil, or an *UnsupportedError naming what
// is missing, or the error of the syscall that failed (a seccomp filter,
// say). It probes a one-page memfd, the kind of memory guests have.
func CheckUffdTracker() error {
	m, err := NewMemory("paddock-uffd-probe", PageBytes)
	if err != nil {
		return err
	}
	defer m.Close()
	t, err := NewUffdTracker(m.Bytes())
	if err != nil {
		return err
	}
	return t.Close()
}

func (t *UffdTracker) open() error {
	// Ask which features exist on a throw-away descriptor first:
	// UFFDIO_API may be called once per descriptor, and asking for a
	// missing feature fails with a bare EINVAL that names nothing.
	probe, err := openUffd()
	if err != nil {
		return err
	}
	api := uffdioAPI{API: uffdAPI}
	_, err = ioctlPtr(probe, uffdioAPIIoctl, unsafe.Pointer(&api))
	unix.Close(probe)
	if err != nil {
		return fmt.Errorf("migrate: UFFDIO_API: %w", err)
	}
	for _, f := range []struct {
		bit  uint64
		name string
	}{
		{uffdFeatureWPAsync, "UFFD_FEATURE_WP_ASYNC (Linux 6.7)"},
		{uffdFeatureWPUnpopulated, "UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4)"},
	} {
		if api.Features&f.bit == 0 {
			return &UnsupportedError{Feature: f.name}
		}
	}

	if t.uffd, err = openUffd(); err != nil {
		return err
	}
	api = uffdioAPI{API: uffdAPI, Features: uffdFeatureWPAsync | uffdFeatureWPUnpopulated}
	if _, err := ioctlPtr(t.uffd, uffdioAPIIoctl, unsafe.Pointer(&api)); err != nil {
		return fmt.Errorf("migrate: UFFDIO_API with WP_ASYNC: %w", err)
	}
	for _, v := range t.views {
		reg := uffdioRegister{
			Range: uffdioRange{Start: uint64(v.start), Len: uint64(v.end - v.start)},
			Mode:  uffdioRegisterModeWP,
		}
		if _, err := ioctlPtr(t.uffd, uffdioRegisterIoctl, unsafe.Pointer(&reg)); err != nil {
			if err == unix.EBUSY {
				return fmt.Errorf("migrate: UFFDIO_REGISTER: mapping already registered with another userfaultfd: %w", err)
			}
			if err == unix.EINVAL {
				// The range is page-aligned and checked, so the
				// kernel refuses the kind of memory: write-protect
				// on shmem needs CONFIG_PTE_MARKER_UFFD_WP.
				return &UnsupportedError{Feature: "userfaultfd write-protect on this memory (shmem needs CONFIG_PTE_MARKER_UFFD_WP)", Err: err}
			}
			return fmt.Errorf("migrate: UFFDIO_REGISTER in write-protect mode: %w", err)
		}
		if reg.Ioctls&(1<<uffdioNrWriteprotect) == 0 {
			return &UnsupportedError{Feature: "UFFDIO_WRITEPROTECT on this kind of memory"}
		}
	}

	if t.pagemap, err = unix.Open("/proc/self/pagemap", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return fmt.Errorf("migrate: open /proc/self/pagemap: %w", err)
	}
	// A read-only scan of one page: the cheapest way to learn whether the
	// ioctl exists (ENOTTY before Linux 6.7).
	var one [1]pageRegion
	arg := pmScanArg{
		Size:       uint64(unsafe.Sizeof(pmScanArg{})),
		Start:      uint64(t.views[0].start),
		End:        uint64(t.views[0].start + PageBytes),
		Vec:        uint64(uintptr(unsafe.Pointer(&one[0]))),
		VecLen:     1,
		ReturnMask: pageIsWritten,
	}
	if _, err := ioctlPtr(t.pagemap, pagemapScanIoctl, unsafe.Pointer(&arg)); err != nil {
		if err == unix.ENOTTY || err == unix.EINVAL {
			return &UnsupportedError{Feature: "PAGEMAP_SCAN ioctl (Linux 6.7)", Err: err}
		}
		return fmt.Errorf("migrate: PAGEMAP_SCAN: %w", err)
	}
	return nil
}

// openUffd opens a userfaultfd: through /dev/userfaultfd, whose file mode
// decides who may (Linux 6.1), else through the syscall. User-mode-only is
// enough: async write-protect faults are resolved in the kernel whoever
// writes.
func openUffd() (int, error) {
	flags := uintptr(unix.O_CLOEXEC | unix.O_NONBLOCK | uffdUserModeOnly)
	var devErr error
	if dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
		fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), userfaultfdIocNew, flags)
		unix.Close(dev)
		if errno == 0 {
			return int(fd), nil
		}
		devErr = errno
	} else {
		devErr = err
	}
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, flags, 0, 0)
	if errno == 0 {
		return int(fd), nil
	}
	if errno == unix.ENOSYS {
		return -1, &UnsupportedError{Feature: "userfaultfd", Err: errno}
	}
	return -1, fmt.Errorf("migrate: userfaultfd: /dev/userfaultfd: %v; syscall: %w", devErr, errno)
}

// Pages implements Tracker.
func (t *UffdTracker) Pages() int { return t.pages }

// Start implements Tracker: write-protect every page of every view.
func (t *UffdTracker) Start() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	for _, v := range t.views {
		wp := uffdioWriteprotect{
			Range: uffdioRange{Start: uint64(v.start), Len: uint64(v.end - v.start)},
			Mode:  uffdioWriteprotectModeWP,
		}
		if _, err := ioctlPtr(t.uffd, uffdioWriteprotectIoctl, unsafe.Pointer(&wp)); err != nil {
			return fmt.Errorf("migrate: UFFDIO_WRITEPROTECT: %w", err)
		}
	}
	t.started = true
	return nil
}

// Collect implements Tracker.
func (t *UffdTracker) Collect(dst *Bitmap) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, ErrClosed
	}
	if !t.started {
		return 0, ErrNotStarted
	}
	if dst.Len() != t.pages {
		return 0, fmt.Errorf("migrate: Collect into a bitmap of %d bits, tracker has %d pages", dst.Len(), t.pages)
	}
	if t.scratch == nil {
		return t.scan(t.views[0], dst)
	}
	t.scratch.Reset()
	for _, v := range t.views {
		if _, err := t.scan(v, t.scratch); err != nil {
			return 0, err
		}
	}
	dst.Or(t.scratch)
	return t.scratch.Count(), nil
}

// scan reports and re-protects the written pages of one view into dst and
// returns how many it found.
func (t *UffdTracker) scan(v uffdView, dst *Bitmap) (int, error) {
	found := 0
	start := v.start
	for start < v.end {
		t.arg = pmScanArg{
			Size:         uint64(unsafe.Sizeof(pmScanArg{})),
			Flags:        pmScanWPMatching | pmScanCheckWPAsync,
			Start:        uint64(start),
			End:          uint64(v.end),
			Vec:          uint64(uintptr(unsafe.Pointer(&t.vec[0]))),
			VecLen:       uint64(len(t.vec)),
			CategoryMask: pageIsWritten,
			ReturnMask:   pageIsWritten,
		}
		n, err := ioctlPtr(t.pagemap, pagemapScanIoctl, unsafe.Pointer(&t.arg))
		if err != nil {
			if err == unix.EPERM {
				return found, fmt.Errorf("migrate: PAGEMAP_SCAN: part of the tracked range is no longer under async write-protect (remapped?): %w", err)
			}
			return found, fmt.Errorf("migrate: PAGEMAP_SCAN: %w", err)
		}
		if n > uintptr(len(t.vec)) {
			return found, fmt.Errorf("migrate: PAGEMAP_SCAN returned %d regions for a vector of %d", n, len(t.vec))
		}
		for _, r := range t.vec[:n] {
			// Regions lie inside this call's [start, end), so a page
			// is never counted twice by one Collect.
			if r.Start < uint64(start) || r.End > uint64(v.end) || r.Start >= r.End || r.Start%PageBytes != 0 || r.End%PageBytes != 0 {
				return found, fmt.Errorf("migrate: PAGEMAP_SCAN region [%#x,%#x) outside [%#x,%#x)", r.Start, r.End, start, v.end)
			}
			from := int((uintptr(r.Start) - v.start) / PageBytes)
			to := int((uintptr(r.End) - v.start) / PageBytes)
			dst.SetRange(from, to)
			found += to - from
		}
		// walk_end is where the kernel stopped: the end of the range,
		// or the end of the last region when the vector filled up.
		walkEnd := uintptr(t.arg.WalkEnd)
		if walkEnd <= start || walkEnd > v.end {
			return found, fmt.Errorf("migrate: PAGEMAP_SCAN made no progress: walk_end %#x for a scan of [%#x,%#x)", walkEnd, start, v.end)
		}
		start = walkEnd
	}
	return found, nil
}

// Close implements Tracker: unregistering drops the write-protection, so
// the guest's writes cost nothing afterwards.
func (t *UffdTracker) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	for _, v := range t.views {
		// The mapping may be gone already (Memory closed first);
		// closing the descriptor below unregisters in any case.
		r := uffdioRange{Start: uint64(v.start), Len: uint64(v.end - v.start)}
		ioctlPtr(t.uffd, uffdioUnregisterIoctl, unsafe.Pointer(&r))
	}
	return t.closeFds()
}

func (t *UffdTracker) closeFds() error {
	var first error
	if t.pagemap >= 0 {
		first = unix.Close(t.pagemap)
		t.pagemap = -1
	}
	if t.uffd >= 0 {
		if err := unix.Close(t.uffd); err != nil && first == nil {
			first = err
		}
		t.uffd = -1
	}
	return first
}
