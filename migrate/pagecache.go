package migrate

// pageCache holds what the sender last sent for recently dirtied pages, the
// reference an XBZRLE delta is computed against. It is bounded (capacity
// pages, memory taken in 1 MiB blocks as it fills) and evicts the least
// recently used page. Invariant the encoder keeps: a cached page holds
// exactly the bytes the receiver holds for it, so every send of a page
// updates its entry, whatever the encoding.
//
// Not safe for concurrent use: each page stream's encoder has its own, and
// the engine pins a page to one stream.
type pageCache struct {
	capacity int
	blocks   [][]byte         // slot s is blocks[s/slotsPerBlock][...]
	slotOf   map[uint64]int32 // page index -> slot
	pageOf   []uint64         // slot -> page index
	prev     []int32          // LRU list over slots: head is most recent
	next     []int32
	head     int32
	tail     int32
}

const (
	slotsPerBlock = 256 // 1 MiB blocks
	noSlot        = -1
)

func newPageCache(capacityBytes int64) *pageCache {
	capacity := int(min(capacityBytes/PageBytes, MaxMemoryBytes/PageBytes))
	if capacity <= 0 {
		return nil
	}
	return &pageCache{
		capacity: capacity,
		slotOf:   make(map[uint64]int32),
		head:     noSlot,
		tail:     noSlot,
	}
}

func (c *pageCache) slot(s int32) []byte {
	b := c.blocks[s/slotsPerBlock]
	off := int(s%slotsPerBlock) * PageBytes
	return b[off : off+PageBytes : off+PageBytes]
}

func (c *pageCache) unlink(s int32) {
	p, n := c.prev[s], c.next[s]
	if p != noSlot {
		c.next[p] = n
	} else {
		c.head = n
	}
	if n != noSlot {
		c.prev[n] = p
	} else {
		c.tail = p
	}
}

func (c *pageCache) pushFront(s int32) {
	c.prev[s], c.next[s] = noSlot, c.head
	if c.head != noSlot {
		c.prev[c.head] = s
	}
	c.head = s
	if c.tail == noSlot {
		c.tail = s
	}
}

// get returns the cached copy of page i and marks it recently used.
func (c *pageCache) get(i uint64) ([]byte, bool) {
	s, ok := c.slotOf[i]
	if !ok {
		return nil, false
	}
	if c.head != s {
		c.unlink(s)
		c.pushFront(s)
	}
	return c.slot(s), true
}

// put stores content as page i's copy, evicting the least recently used
// page when full.
func (c *pageCache) put(i uint64, content []byte) {
	s, ok := c.slotOf[i]
	switch {
	case ok:
		c.unlink(s)
	case len(c.pageOf) < c.capacity:
		s = int32(len(c.pageOf))
		if int(s)%slotsPerBlock == 0 {
			n := min(slotsPerBlock, c.capacity-int(s))
			c.blocks = append(c.blocks, make([]byte, n*PageBytes))
		}
		c.pageOf = append(c.pageOf, i)
		c.prev = append(c.prev, noSlot)
		c.next = append(c.next, noSlot)
		c.slotOf[i] = s
	default:
		s = c.tail
		c.unlink(s)
		delete(c.slotOf, c.pageOf[s])
		c.pageOf[s] = i
		c.slotOf[i] = s
	}
	copy(c.slot(s), content)
	c.pushFront(s)
}

// update refreshes page i's copy if it is cached, without making it recent:
// pages sent in bulk (a run) should not push out the hot ones.
func (c *pageCache) update(i uint64, content []byte) {
	if s, ok := c.slotOf[i]; ok {
		copy(c.slot(s), content)
	}
}

func (c *pageCache) len() int { return len(c.slotOf) }
