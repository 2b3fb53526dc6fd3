//go:build linux

package migrate

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMemorySharedViews(t *testing.T) {
	m, err := NewMemory("test", 16*PageBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Pages() != 16 || m.SizeBytes() != 16*PageBytes || len(m.Bytes()) != 16*PageBytes {
		t.Fatalf("size: pages %d bytes %d", m.Pages(), m.SizeBytes())
	}
	if !bytes.Equal(m.Page(3), make([]byte, PageBytes)) {
		t.Fatal("fresh page is not zero")
	}
	view, err := m.Map()
	if err != nil {
		t.Fatal(err)
	}
	copy(m.Page(3), "hello")
	if string(view[3*PageBytes:3*PageBytes+5]) != "hello" {
		t.Fatal("second mapping does not see the write")
	}
	// The fd is a file: pread sees the same bytes, which is what a VMM
	// in another process relies on.
	buf := make([]byte, 5)
	if _, err := unix.Pread(m.Fd(), buf, 3*PageBytes); err != nil || string(buf) != "hello" {
		t.Fatalf("pread: %q %v", buf, err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal("second close:", err)
	}
	if _, err := m.Map(); err != ErrClosed {
		t.Fatalf("Map after Close: %v", err)
	}
}

func TestMemoryBadSizes(t *testing.T) {
	for _, size := range []int64{0, -4096, 100, PageBytes + 1, MaxMemoryBytes + PageBytes} {
		if m, err := NewMemory("bad", size); err == nil {
			m.Close()
			t.Errorf("size %d accepted", size)
		}
	}
}

func TestOpenMemoryAdoptsFd(t *testing.T) {
	m, err := NewMemory("src", 4*PageBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	copy(m.Page(1), "shared")
	fd, err := unix.Dup(m.Fd())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenMemory(fd, 8*PageBytes); err == nil {
		t.Fatal("wrong size accepted")
	}
	m2, err := OpenMemory(fd, 4*PageBytes)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	defer m2.Close()
	if string(m2.Page(1)[:6]) != "shared" {
		t.Fatal("adopted memory does not share pages")
	}
}
