package nbdbench

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"syscall"
)

// chunkBytes is the unit the disk file is written in.
const chunkBytes = 4 << 20

// tmpfsMagic is TMPFS_MAGIC from statfs(2).
const tmpfsMagic = 0x01021994

// seedChunk is pseudo-random data from a fixed seed, so that every run,
// against every server, starts from byte-identical contents.
func seedChunk() []byte {
	r := rand.NewChaCha8([32]byte{'p', 'a', 'd', 'd', 'o', 'c', 'k', ' ', 'b', 'e', 'n', 'c', 'h'})
	b := make([]byte, chunkBytes)
	r.Read(b)
	return b
}

// writeDiskFile (re)creates path with sizeBytes of data: no holes, so
// every server reads real pages, and every 4 KiB block distinct (its
// offset is stamped in its first 8 bytes).
func writeDiskFile(path string, sizeBytes int64, seed []byte) error {
	if sizeBytes <= 0 || sizeBytes%4096 != 0 {
		return fmt.Errorf("size %d: want a positive multiple of 4096", sizeBytes)
	}
	// Remove first: pages the previous run wrote are freed and the new
	// file is laid out the same way every time.
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, chunkBytes)
	for off := int64(0); off < sizeBytes; off += chunkBytes {
		copy(buf, seed)
		n := min(int64(chunkBytes), sizeBytes-off)
		for b := int64(0); b < n; b += 4096 {
			binary.LittleEndian.PutUint64(buf[b:], uint64(off+b))
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// isTmpfs says whether dir is on tmpfs.
func isTmpfs(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Type == tmpfsMagic
}
