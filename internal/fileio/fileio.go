// Package fileio holds the positional I/O loops that the file-backed
// stores share: whole-buffer pread and pwrite that retry on EINTR and
// finish short transfers.
package fileio

import "golang.org/x/sys/unix"

// ReadFull fills p from fd at off. Bytes past the end of the file read as
// zeroes (a file that shrank under us still gives defined data).
func ReadFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			clear(p)
			return nil
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// WriteFull writes all of p to fd at off.
func WriteFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwrite(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}
