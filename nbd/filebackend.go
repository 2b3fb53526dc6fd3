package nbd

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/paddock-io/paddock/internal/fileio"
)

// zeroChunkBytes bounds the buffer used when zeroes must be written out by
// hand (a filesystem without FALLOC_FL_ZERO_RANGE and NO_HOLE asked for).
const zeroChunkBytes = 1 << 20

var zeroChunk = make([]byte, zeroChunkBytes)

// FileBackend serves a regular file (sparse) or a block device.
type FileBackend struct {
	f        *os.File
	fd       int
	size     int64
	readOnly bool
	isBlock  bool
}

// OpenFile opens path as a backend. A missing file is created sparse with
// sizeBytes; an existing one keeps its size, and sizeBytes, if nonzero, must
// match it (paddock never resizes data silently).
func OpenFile(path string, sizeBytes int64, readOnly bool) (*FileBackend, error) {
	if sizeBytes < 0 {
		return nil, fmt.Errorf("size %d is negative", sizeBytes)
	}
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if errors.Is(err, os.ErrNotExist) && !readOnly {
		if sizeBytes == 0 {
			return nil, fmt.Errorf("%s does not exist; give --size to create it", path)
		}
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			if err = f.Truncate(sizeBytes); err != nil {
				f.Close()
				os.Remove(path)
				return nil, fmt.Errorf("create %s: %w", path, err)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	b := &FileBackend{f: f, fd: int(f.Fd()), readOnly: readOnly}
	switch {
	case st.Mode().IsRegular():
		b.size = st.Size()
	case st.Mode()&os.ModeDevice != 0:
		b.isBlock = true
		end, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("size of %s: %w", path, err)
		}
		b.size = end
	default:
		f.Close()
		return nil, fmt.Errorf("%s is neither a regular file nor a block device", path)
	}
	if sizeBytes != 0 && sizeBytes != b.size {
		f.Close()
		return nil, fmt.Errorf("%s is %d bytes, not the %d asked for; paddock does not resize existing data", path, b.size, sizeBytes)
	}
	return b, nil
}

// Close closes the file.
func (b *FileBackend) Close() error { return b.f.Close() }

func (b *FileBackend) Size() int64 { return b.size }

func (b *FileBackend) Features() Features {
	return Features{
		ReadOnly:     b.readOnly,
		CanTrim:      !b.readOnly,
		CanZero:      !b.readOnly,
		CanFastZero:  !b.readOnly,
		CanCache:     true,
		CanMultiConn: true, // one file: fdatasync covers every connection's writes
	}
}

func (b *FileBackend) ReadAt(p []byte, off int64) error {
	return fileio.ReadFull(b.fd, p, off)
}

func (b *FileBackend) WriteAt(p []byte, off int64, fua bool) error {
	if b.readOnly {
		return unix.EPERM
	}
	if err := fileio.WriteFull(b.fd, p, off); err != nil {
		return err
	}
	if fua {
		return b.Flush()
	}
	return nil
}

func (b *FileBackend) Flush() error {
	if b.readOnly {
		return nil
	}
	for {
		err := unix.Fdatasync(b.fd)
		if err != unix.EINTR {
			return err
		}
	}
}

func (b *FileBackend) Trim(off, length int64, fua bool) error {
	if b.readOnly {
		return unix.EPERM
	}
	err := b.punch(off, length)
	if err == unix.EOPNOTSUPP || err == unix.ENOSYS {
		// TRIM is advisory: a filesystem that cannot punch holes
		// simply keeps the data.
		err = nil
	}
	if err == nil && fua {
		err = b.Flush()
	}
	return err
}

func (b *FileBackend) punch(off, length int64) error {
	if b.isBlock {
		return unix.EOPNOTSUPP
	}
	return fallocate(b.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

func (b *FileBackend) Zero(off, length int64, noHole, fast, fua bool) error {
	if b.readOnly {
		return unix.EPERM
	}
	var err error
	if !noHole {
		err = b.punch(off, length)
	} else if b.isBlock {
		err = unix.EOPNOTSUPP
	} else {
		err = fallocate(b.fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	}
	if err == unix.EOPNOTSUPP || err == unix.ENOSYS {
		if fast {
			return unix.ENOTSUP
		}
		err = b.writeZeroes(off, length)
	}
	if err == nil && fua {
		err = b.Flush()
	}
	return err
}

func (b *FileBackend) writeZeroes(off, length int64) error {
	for length > 0 {
		n := min(length, zeroChunkBytes)
		if err := b.WriteAt(zeroChunk[:n], off, false); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

func (b *FileBackend) Cache(off, length int64) error {
	return unix.Fadvise(b.fd, off, length, unix.FADV_WILLNEED)
}

// BlockStatus reports allocation from SEEK_DATA/SEEK_HOLE. lseek moves the
// shared file offset, which is harmless: all I/O uses pread/pwrite.
func (b *FileBackend) BlockStatus(off, length int64, maxExtents int) ([]Extent, error) {
	end := off + length
	if b.isBlock {
		return []Extent{{Length: length}}, nil
	}
	var out []Extent
	for off < end && len(out) < maxExtents {
		data, err := unix.Seek(b.fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO || (err == nil && data >= end) {
			out = append(out, Extent{Length: end - off, Hole: true, Zero: true})
			break
		}
		if err != nil {
			// A filesystem without SEEK_DATA: call it all data.
			out = append(out, Extent{Length: end - off})
			break
		}
		if data > off {
			out = append(out, Extent{Length: data - off, Hole: true, Zero: true})
			off = data
			continue
		}
		hole, err := unix.Seek(b.fd, off, unix.SEEK_HOLE)
		if err != nil || hole > end {
			hole = end
		}
		if hole <= off {
			hole = end
		}
		out = append(out, Extent{Length: hole - off})
		off = hole
	}
	return out, nil
}

// LeadingHole says how many bytes from off are a hole, with one SEEK_DATA.
func (b *FileBackend) LeadingHole(off, length int64) (int64, error) {
	if b.isBlock {
		return 0, nil
	}
	data, err := unix.Seek(b.fd, off, unix.SEEK_DATA)
	if err == unix.ENXIO {
		return length, nil // no data after off at all
	}
	if err != nil {
		return 0, err
	}
	return min(data-off, length), nil
}

func fallocate(fd int, mode uint32, off, length int64) error {
	for {
		err := unix.Fallocate(fd, mode, off, length)
		if err != unix.EINTR {
			return err
		}
	}
}
