package migrate

import "errors"

// PageBytes is the unit of dirty tracking and of the page stream. Guest RAM
// sizes are whole multiples of it. Huge pages are not used: tracking at 4 KiB
// keeps a write to one byte from resending 2 MiB.
const PageBytes = 4096

// MaxMemoryBytes bounds a guest's RAM (1 TiB). Bitmaps, page indexes in
// frames and the decoder's limits are all sized from it, so nothing a peer
// says can make us allocate more than this implies.
const MaxMemoryBytes = 1 << 40

// ErrClosed is returned by operations on a Memory or Tracker after Close.
var ErrClosed = errors.New("migrate: closed")

// checkMemorySize returns an error unless sizeBytes is a positive multiple of
// PageBytes no larger than MaxMemoryBytes.
func checkMemorySize(sizeBytes int64) error {
	if sizeBytes <= 0 || sizeBytes%PageBytes != 0 || sizeBytes > MaxMemoryBytes {
		return errors.New("migrate: memory size must be a positive multiple of 4096 bytes, at most 1 TiB")
	}
	return nil
}
