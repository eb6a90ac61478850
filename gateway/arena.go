package gateway

// arena is a circular byte buffer for variable-length records. Positions
// are monotonic byte counts (never wrapped), so "has this record been
// overwritten" is one comparison. A record is contiguous in memory: one that
// would straddle the end starts again at offset 0, and the tail it skips
// counts as written.
//
// The relay's repair ring and the delivery queue both keep frames in one;
// it allocates once, in newArena, and never again.
type arena struct {
	buf []byte
	w   uint64 // bytes written (the next record's position, before padding)
}

func newArena(size int) arena { return arena{buf: make([]byte, size)} }

// prefault touches every page, so the kernel backs the arena now rather
// than one page fault at a time on the data path (measured: the mixed
// 64–1400 B relay benchmark lost a fifth of its rate to them while a
// fresh 64 MiB ring filled).
func (a *arena) prefault() {
	for i := 0; i < len(a.buf); i += 4096 {
		a.buf[i] = 0
	}
}

// place returns the position where a record of n bytes would go, skipping
// the tail when it does not fit there. n must not exceed len(buf).
func (a *arena) place(n int) uint64 {
	size := uint64(len(a.buf))
	pos := a.w
	if off := pos % size; off+uint64(n) > size {
		pos += size - off
	}
	return pos
}

// put copies b in at place(len(b)) and returns its position.
func (a *arena) put(b []byte) uint64 {
	pos := a.place(len(b))
	off := pos % uint64(len(a.buf))
	copy(a.buf[off:], b)
	a.w = pos + uint64(len(b))
	return pos
}

// at returns the n bytes at pos; the caller knows they are still there.
func (a *arena) at(pos uint64, n int) []byte {
	off := pos % uint64(len(a.buf))
	return a.buf[off : off+uint64(n) : off+uint64(n)]
}

// intact reports whether the record at pos has not been written over:
// writing runs forward, so its first byte is the first to go, once the
// write position passes pos + len(buf).
func (a *arena) intact(pos uint64) bool { return a.w <= pos+uint64(len(a.buf)) }

// fifo is a bounded queue of byte records, each with metadata M, in one
// arena: the delivery queue and the frames waiting for their epoch's
// confirmation. A record stays in place until popped, so a reader may use
// its bytes without copying.
type fifo[M any] struct {
	a       arena
	recs    []fifoRec[M] // a ring; the oldest at head
	head, n int
}

type fifoRec[M any] struct {
	pos uint64
	len int
	m   M
}

func newFIFO[M any](records, bytes int) fifo[M] {
	return fifo[M]{a: newArena(bytes), recs: make([]fifoRec[M], records)}
}

// push copies b in with m; false when the records or the bytes are used up.
func (f *fifo[M]) push(b []byte, m M) bool {
	if f.n == len(f.recs) {
		return false
	}
	// The bytes in use run from the oldest record to the write position.
	if pos := f.a.place(len(b)); f.n > 0 && pos+uint64(len(b))-f.recs[f.head].pos > uint64(len(f.a.buf)) {
		return false
	}
	pos := f.a.put(b)
	f.recs[(f.head+f.n)%len(f.recs)] = fifoRec[M]{pos: pos, len: len(b), m: m}
	f.n++
	return true
}

// rec is the i-th record from the oldest (i < n), and its bytes.
func (f *fifo[M]) rec(i int) (*fifoRec[M], []byte) {
	r := &f.recs[(f.head+i)%len(f.recs)]
	return r, f.a.at(r.pos, r.len)
}

// pop forgets the oldest record.
func (f *fifo[M]) pop() {
	f.head = (f.head + 1) % len(f.recs)
	f.n--
}

// usedBytes is what the records take, from the oldest to the newest.
func (f *fifo[M]) usedBytes() int {
	if f.n == 0 {
		return 0
	}
	return int(f.a.w - f.recs[f.head].pos)
}
