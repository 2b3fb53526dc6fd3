package migrate

import (
	"bytes"
	"testing"
)

func TestPageCacheLRU(t *testing.T) {
	c := newPageCache(3 * PageBytes)
	page := func(b byte) []byte { return bytes.Repeat([]byte{b}, PageBytes) }
	c.put(1, page(1))
	c.put(2, page(2))
	c.put(3, page(3))
	if _, ok := c.get(1); !ok { // 1 becomes most recent: order 1,3,2
		t.Fatal("1 missing")
	}
	c.update(2, page(22)) // refreshes 2 without promoting it
	c.put(4, page(4))     // evicts 2
	if _, ok := c.get(2); ok {
		t.Fatal("2 should be evicted")
	}
	for _, i := range []uint64{1, 3, 4} {
		got, ok := c.get(i)
		if !ok || got[0] != byte(i) {
			t.Fatalf("page %d: %v %v", i, ok, got[:1])
		}
	}
	c.update(9, page(9)) // absent: no insert
	if c.len() != 3 {
		t.Fatalf("len %d", c.len())
	}
	c.put(3, page(33))
	if got, _ := c.get(3); got[0] != 33 {
		t.Fatal("put over an entry")
	}
	if newPageCache(PageBytes-1) != nil {
		t.Fatal("cache under one page")
	}
}

// A cache bigger than one block allocates block by block, and keeps working
// through many evictions.
func TestPageCacheManyEvictions(t *testing.T) {
	const capacity = slotsPerBlock + 10
	c := newPageCache(capacity * PageBytes)
	buf := make([]byte, PageBytes)
	for i := uint64(0); i < 5*capacity; i++ {
		buf[0], buf[1] = byte(i), byte(i>>8)
		c.put(i, buf)
	}
	if c.len() != capacity || len(c.blocks) != 2 {
		t.Fatalf("len %d blocks %d", c.len(), len(c.blocks))
	}
	for i := uint64(4 * capacity); i < 5*capacity; i++ {
		got, ok := c.get(i)
		if !ok || got[0] != byte(i) || got[1] != byte(i>>8) {
			t.Fatalf("page %d lost", i)
		}
	}
}
