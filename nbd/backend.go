package nbd

import (
	"errors"
	"syscall"
)

// Backend is what an export serves. Offsets and lengths reaching a Backend
// have already been checked against Size and the server's limits, so an
// implementation may trust them. Methods are called concurrently.
//
// Errors are mapped to NBD error values by their errno (errors.As with
// syscall.Errno): EPERM/EROFS, ENOSPC/EDQUOT, EINVAL, ENOMEM, EOVERFLOW,
// ENOTSUP/EOPNOTSUPP and ESHUTDOWN keep their meaning, anything else is EIO.
type Backend interface {
	// Size is the export's size in bytes; it does not change while served.
	Size() int64
	// ReadAt fills p from off.
	ReadAt(p []byte, off int64) error
	// WriteAt writes p at off; with fua the data is durable on return.
	WriteAt(p []byte, off int64, fua bool) error
	// Flush makes every write that completed before the call durable.
	Flush() error
	// Trim tells the backend the range is no longer needed; reads of it
	// may return anything afterwards (the file backend returns zeroes).
	Trim(off, length int64, fua bool) error
	// Zero makes the range read as zeroes. With noHole the space stays
	// allocated; with fast the call fails with ENOTSUP instead of doing
	// slow work (writing zeroes block by block).
	Zero(off, length int64, noHole, fast, fua bool) error
	// Cache is a hint to prefetch the range.
	Cache(off, length int64) error
	// Features says what the backend can do; the server advertises only
	// these.
	Features() Features
}

// Features are the capabilities of a backend, advertised to clients as
// transmission flags.
type Features struct {
	ReadOnly    bool
	CanTrim     bool
	CanZero     bool
	CanFastZero bool
	CanCache    bool
	// CanMultiConn is true when a FLUSH or FUA on one connection makes
	// writes completed on every connection durable (one shared file).
	CanMultiConn bool
	Rotational   bool
}

// Extent is one run of the base:allocation metadata context.
type Extent struct {
	Length int64
	Hole   bool // not allocated
	Zero   bool // reads as zeroes
}

// BlockStatuser is implemented by backends that know which ranges are
// allocated. Extents must start at off, cover at most length bytes, hold at
// most maxExtents entries and never be empty.
type BlockStatuser interface {
	BlockStatus(off, length int64, maxExtents int) ([]Extent, error)
}

// errnoOf maps a backend error to an NBD error value.
func errnoOf(err error) uint32 {
	var en syscall.Errno
	if !errors.As(err, &en) {
		return EIO
	}
	switch en {
	case syscall.EPERM, syscall.EROFS, syscall.EACCES:
		return EPERM
	case syscall.ENOSPC, syscall.EDQUOT:
		return ENOSPC
	case syscall.EINVAL:
		return EINVAL
	case syscall.ENOMEM:
		return ENOMEM
	case syscall.EOVERFLOW:
		return EOVERFLOW
	case syscall.ENOTSUP:
		return ENOTSUP
	case syscall.ESHUTDOWN:
		return ESHUTDOWN
	}
	return EIO
}
