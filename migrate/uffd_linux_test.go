//go:build linux

package migrate

import (
	"testing"
	"unsafe"
)

// The ioctl numbers are what gcc computes from the kernel's uapi headers
// (linux-libc-dev for the userfaultfd ones; PAGEMAP_SCAN from a struct of
// twelve __u64, as fs.h declares it in Linux 6.7).
func TestUffdABI(t *testing.T) {
	sizes := []struct {
		name      string
		got, want uintptr
	}{
		{"uffdio_api", unsafe.Sizeof(uffdioAPI{}), 24},
		{"uffdio_range", unsafe.Sizeof(uffdioRange{}), 16},
		{"uffdio_register", unsafe.Sizeof(uffdioRegister{}), 32},
		{"uffdio_writeprotect", unsafe.Sizeof(uffdioWriteprotect{}), 24},
		{"page_region", unsafe.Sizeof(pageRegion{}), 24},
		{"pm_scan_arg", unsafe.Sizeof(pmScanArg{}), 96},
	}
	for _, s := range sizes {
		if s.got != s.want {
			t.Errorf("sizeof(struct %s) = %d, want %d", s.name, s.got, s.want)
		}
	}
	ioctls := []struct {
		name      string
		got, want uintptr
	}{
		{"UFFDIO_API", uffdioAPIIoctl, 0xc018aa3f},
		{"UFFDIO_REGISTER", uffdioRegisterIoctl, 0xc020aa00},
		{"UFFDIO_UNREGISTER", uffdioUnregisterIoctl, 0x8010aa01},
		{"UFFDIO_WRITEPROTECT", uffdioWriteprotectIoctl, 0xc018aa06},
		{"USERFAULTFD_IOC_NEW", userfaultfdIocNew, 0xaa00},
		{"PAGEMAP_SCAN", pagemapScanIoctl, 0xc0606610},
	}
	for _, c := range ioctls {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}
