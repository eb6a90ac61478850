package gateway

import (
	"fmt"
	"net/netip"
	"sync"
)

// RepairConfig sizes the relay's repair ring and says whom it answers.
type RepairConfig struct {
	Off    bool // no ring, no answers: receivers' requests are ignored
	Frames int  // frames kept; 0 = DefaultRingFrames
	Bytes  int  // bytes kept; 0 = DefaultRingBytes
	// Allow: requesters answered besides the unicast destinations and the
	// peers given to SetRepairPeers. Empty: only those.
	Allow Allowlist
	// Rate: bytes per second answered to one requester (burst: a quarter
	// second's worth); 0 = DefaultRepairRate.
	Rate int
}

// Repair defaults: 2 s at 100k frames/s or 64 MiB, whichever is less; a
// requester gets up to 32 MiB/s of repairs.
const (
	DefaultRingFrames = 200_000
	DefaultRingBytes  = 64 << 20
	DefaultRepairRate = 32 << 20
)

// Validate checks the ring's bounds; errors name the field as the
// configuration file does.
func (c *RepairConfig) Validate() error {
	switch {
	case c.Frames < 0 || c.Frames > 1<<24:
		return fmt.Errorf("repair.frames: %d is out of range 1..%d (0: %d)", c.Frames, 1<<24, DefaultRingFrames)
	case c.Bytes != 0 && (c.Bytes < 2*maxFrameLen || c.Bytes > 1<<31):
		return fmt.Errorf("repair.bytes: %d is out of range %d..%d (0: %d)", c.Bytes, 2*maxFrameLen, 1<<31, DefaultRingBytes)
	case c.Rate < 0:
		return fmt.Errorf("repair.rate: %d must not be negative (0: %d bytes/s)", c.Rate, DefaultRepairRate)
	}
	return nil
}

func (c RepairConfig) withDefaults() RepairConfig {
	if c.Frames == 0 {
		c.Frames = DefaultRingFrames
	}
	if c.Bytes == 0 {
		c.Bytes = DefaultRingBytes
	}
	if c.Rate == 0 {
		c.Rate = DefaultRepairRate
	}
	return c
}

// ring keeps the relay's most recent frames, bounded by count and bytes,
// for answering repair requests with the very bytes first sent. Entries are
// indexed by sequence number; a later frame with the same index, or the
// arena wrapping over its bytes, evicts one. Everything is allocated by
// newRing: storing a frame is one copy under a lock taken once per batch.
type ring struct {
	mu   sync.Mutex
	a    arena
	ents []ringEntry
}

type ringEntry struct {
	epoch, seq uint64 // seq 0: empty
	pos        uint64
	len        int
	// The last repair of this frame, for suppression: when (ns) and to
	// whom; a group address means it was re-multicast.
	repairedAt int64
	repairedTo netip.Addr
}

func newRing(frames, bytes int) *ring {
	return &ring{a: newArena(bytes), ents: make([]ringEntry, frames)}
}

// putBatch stores frames whose sequence numbers are seqs, all of epoch,
// under one lock (the relay's batch).
func (g *ring) putBatch(epoch uint64, seqs []uint64, frames [][]byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, f := range frames {
		g.store(epoch, seqs[i], f)
	}
}

// put stores one frame.
func (g *ring) put(epoch, seq uint64, frame []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.store(epoch, seq, frame)
}

// store copies frame in. Callers hold mu.
func (g *ring) store(epoch, seq uint64, frame []byte) {
	pos := g.a.put(frame)
	g.ents[seq%uint64(len(g.ents))] = ringEntry{epoch: epoch, seq: seq, pos: pos, len: len(frame)}
}

// entry returns the live entry for (epoch, seq), or nil. Callers hold mu.
func (g *ring) entry(epoch, seq uint64) *ringEntry {
	e := &g.ents[seq%uint64(len(g.ents))]
	if e.seq != seq || e.epoch != epoch || seq == 0 || !g.a.intact(e.pos) {
		return nil
	}
	return e
}

// get appends the stored frame (epoch, seq) to dst; ok is false when it is
// no longer (or never was) in the ring.
func (g *ring) get(dst []byte, epoch, seq uint64) ([]byte, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.entry(epoch, seq)
	if e == nil {
		return dst, false
	}
	return append(dst, g.a.at(e.pos, e.len)...), true
}
