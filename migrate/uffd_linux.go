//go:build linux

package migrate

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel ABI for userfaultfd write-protection and PAGEMAP_SCAN, which
// golang.org/x/sys does not define. Sources: include/uapi/linux/userfaultfd.h
// and include/uapi/linux/fs.h (Linux 6.7+, where WP_ASYNC and PAGEMAP_SCAN
// arrived). uffd_linux_test.go checks the sizes and the ioctl numbers against
// the values a C compiler gives.

// ioctl number encoding of asm-generic/ioctl.h (x86, arm64, riscv: not the
// mips/powerpc/sparc variants, whose direction bits differ).
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	iocNrShift   = 0
	iocTypeShift = 8
	iocSizeShift = 16
	iocDirShift  = 30
)

func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<iocDirShift | typ<<iocTypeShift | nr<<iocNrShift | size<<iocSizeShift
}

// userfaultfd.h
const (
	uffdAPI = 0xAA // UFFD_API, also the ioctl type UFFDIO

	uffdUserModeOnly = 1 // UFFD_USER_MODE_ONLY: faults from user mode only; async WP needs none

	uffdFeatureWPHugetlbfsShmem = 1 << 12 // UFFD_FEATURE_WP_HUGETLBFS_SHMEM
	uffdFeatureWPUnpopulated    = 1 << 13 // UFFD_FEATURE_WP_UNPOPULATED
	uffdFeatureWPAsync          = 1 << 15 // UFFD_FEATURE_WP_ASYNC

	uffdioRegisterModeWP     = 1 << 1 // UFFDIO_REGISTER_MODE_WP
	uffdioWriteprotectModeWP = 1 << 0 // UFFDIO_WRITEPROTECT_MODE_WP

	uffdioNrRegister     = 0x00 // _UFFDIO_REGISTER
	uffdioNrUnregister   = 0x01 // _UFFDIO_UNREGISTER
	uffdioNrWriteprotect = 0x06 // _UFFDIO_WRITEPROTECT
	uffdioNrAPI          = 0x3F // _UFFDIO_API
)

type uffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

type uffdioRange struct {
	Start uint64
	Len   uint64
}

type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

type uffdioWriteprotect struct {
	Range uffdioRange
	Mode  uint64
}

var (
	userfaultfdIocNew = ioc(iocNone, uffdAPI, 0x00, 0) // USERFAULTFD_IOC_NEW on /dev/userfaultfd

	uffdioAPIIoctl          = ioc(iocRead|iocWrite, uffdAPI, uffdioNrAPI, unsafe.Sizeof(uffdioAPI{}))
	uffdioRegisterIoctl     = ioc(iocRead|iocWrite, uffdAPI, uffdioNrRegister, unsafe.Sizeof(uffdioRegister{}))
	uffdioUnregisterIoctl   = ioc(iocRead, uffdAPI, uffdioNrUnregister, unsafe.Sizeof(uffdioRange{}))
	uffdioWriteprotectIoctl = ioc(iocRead|iocWrite, uffdAPI, uffdioNrWriteprotect, unsafe.Sizeof(uffdioWriteprotect{}))
)

// fs.h
const (
	pageIsWPAllowed = 1 << 0 // PAGE_IS_WPALLOWED
	pageIsWritten   = 1 << 1 // PAGE_IS_WRITTEN

	pmScanWPMatching   = 1 << 0 // PM_SCAN_WP_MATCHING: write-protect what matched
	pmScanCheckWPAsync = 1 << 1 // PM_SCAN_CHECK_WPASYNC: fail on a page not under async WP
)

type pageRegion struct {
	Start      uint64
	End        uint64
	Categories uint64
}

type pmScanArg struct {
	Size              uint64
	Flags             uint64
	Start             uint64
	End               uint64
	WalkEnd           uint64
	Vec               uint64
	VecLen            uint64
	MaxPages          uint64
	CategoryInverted  uint64
	CategoryMask      uint64
	CategoryAnyofMask uint64
	ReturnMask        uint64
}

var pagemapScanIoctl = ioc(iocRead|iocWrite, 'f', 16, unsafe.Sizeof(pmScanArg{}))

// ioctlPtr issues an ioctl whose argument is a pointer. The kernel keeps no
// reference after returning, and Go's heap does not move, so the pointer's
// referent needs to stay alive only for the call.
func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}
