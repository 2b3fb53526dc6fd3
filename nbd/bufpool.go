package nbd

import (
	"math/bits"
	"sync"
)

// Buffers for payloads come from pools by power-of-two size class, from
// 4 KiB up to 64 MiB, so steady I/O allocates nothing.
const (
	minPoolShift = 12
	maxPoolShift = 26
)

var bufPools [maxPoolShift - minPoolShift + 1]sync.Pool

func poolClass(n int) int {
	if n <= 1<<minPoolShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minPoolShift
}

// getBuf returns a buffer of length n (contents undefined).
func getBuf(n int) []byte {
	if n == 0 {
		return nil
	}
	c := poolClass(n)
	if c >= len(bufPools) {
		return make([]byte, n)
	}
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(c+minPoolShift))
}

func putBuf(b []byte) {
	if cap(b) == 0 {
		return
	}
	c := poolClass(cap(b))
	if c >= len(bufPools) || cap(b) != 1<<(c+minPoolShift) {
		return
	}
	b = b[:cap(b)]
	bufPools[c].Put(&b)
}
