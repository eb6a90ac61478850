package gateway

import (
	"errors"
	"fmt"
	"sync"
)

// QueueConfig bounds the delivery queue between a receiver and its
// application, in datagrams and in bytes; whichever is reached first.
type QueueConfig struct {
	Frames int // 0 = DefaultQueueFrames
	Bytes  int // 0 = DefaultQueueBytes
}

// Delivery queue defaults: 200 ms of a 10k datagrams/s feed is 2000
// datagrams; the defaults hold eight times that, or 8 MiB.
const (
	DefaultQueueFrames = 16384
	DefaultQueueBytes  = 8 << 20
)

// Validate checks the bounds; errors name the field as the configuration
// file does.
func (c *QueueConfig) Validate() error {
	switch {
	case c.Frames < 0 || c.Frames > 1<<22:
		return fmt.Errorf("queue.frames: %d is out of range 1..%d (0: %d)", c.Frames, 1<<22, DefaultQueueFrames)
	case c.Bytes != 0 && (c.Bytes < 2*maxFrameLen || c.Bytes > 1<<30):
		return fmt.Errorf("queue.bytes: %d is out of range %d..%d (0: %d)", c.Bytes, 2*maxFrameLen, 1<<30, DefaultQueueBytes)
	}
	return nil
}

func (c QueueConfig) withDefaults() QueueConfig {
	if c.Frames == 0 {
		c.Frames = DefaultQueueFrames
	}
	if c.Bytes == 0 {
		c.Bytes = DefaultQueueBytes
	}
	return c
}

// ErrQueueFull: the delivery queue is at its bound; the datagram is dropped
// and counted (DeliveryStats.Dropped["queue_full"]).
var ErrQueueFull = errors.New("delivery queue full: the application has not kept up; datagram dropped")

// DeliveryStats is a snapshot of a delivery queue.
type DeliveryStats struct {
	Depth      int               // datagrams waiting
	DepthBytes int               // their bytes
	MaxDepth   int               // the most that ever waited
	Written    uint64            // datagrams the application's socket took
	Dropped    map[string]uint64 // "queue_full", "write_error"
}

// queue is the delivery queue: one goroutine pushes (the receiver), one
// pops (the writer). A datagram stays in place until done, so the writer
// sends from the arena without copying and without holding the lock.
type queue struct {
	mu    sync.Mutex
	f     fifo[struct{}]
	ready chan struct{}

	maxDepth          int
	written           uint64
	full, writeErrors uint64
}

func newQueue(c QueueConfig) *queue {
	c = c.withDefaults()
	return &queue{f: newFIFO[struct{}](c.Frames, c.Bytes), ready: make(chan struct{}, 1)}
}

// push copies b in, or returns ErrQueueFull. The writer is woken by wake,
// once per batch of pushes, so that it takes them in one system call.
func (q *queue) push(b []byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.f.push(b, struct{}{}) {
		q.full++
		return ErrQueueFull
	}
	q.maxDepth = max(q.maxDepth, q.f.n)
	return nil
}

// wake tells the writer there is something to send.
func (q *queue) wake() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// peek fills bs with up to len(bs) datagrams from the head and returns how
// many; they stay queued, in place, until done.
func (q *queue) peek(bs [][]byte) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(len(bs), q.f.n)
	for i := range n {
		_, bs[i] = q.f.rec(i)
	}
	return n
}

// done removes the n head datagrams, of which failed were dropped.
func (q *queue) done(n, failed int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for range n {
		q.f.pop()
	}
	q.written += uint64(n - failed)
	q.writeErrors += uint64(failed)
}

func (q *queue) stats() DeliveryStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return DeliveryStats{Depth: q.f.n, DepthBytes: q.f.usedBytes(), MaxDepth: q.maxDepth, Written: q.written,
		Dropped: map[string]uint64{"queue_full": q.full, "write_error": q.writeErrors}}
}
