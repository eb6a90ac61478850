package gateway

import (
	"fmt"
	"time"
)

// Order is the order in which a receiver delivers frames.
type Order uint8

const (
	// OrderArrival delivers each new frame as it arrives; a repaired frame
	// comes after those that overtook it.
	OrderArrival Order = iota
	// OrderSequence delivers the frames of an epoch in sequence order: a
	// frame after a hole waits until the hole is filled, or for at most
	// the hold time, after which the hole is skipped (a frame that fills
	// it later is delivered when it comes).
	OrderSequence
)

// ParseOrder parses "arrival" or "sequence".
func ParseOrder(s string) (Order, error) {
	switch s {
	case "", "arrival":
		return OrderArrival, nil
	case "sequence":
		return OrderSequence, nil
	}
	return 0, fmt.Errorf("%q: want arrival or sequence", s)
}

func (o Order) String() string { return [...]string{"arrival", "sequence"}[o] }

// DefaultOrderHold is how long, in sequence order, frames wait behind a
// hole: ten times the repair latency's p99 on a LAN (docs/frame.md).
const DefaultOrderHold = 100 * time.Millisecond

// orderer holds frames that arrived after a hole until the hole is filled
// or the hold time is up. Held frames are copied into a ring keyed by
// sequence number; everything is allocated up front. The receiver calls it
// under its lock.
type orderer struct {
	hold    time.Duration
	held    *ring
	codec   *Codec // decodes held frames again: they were checked on arrival
	started bool
	epoch   uint64
	next    uint64 // the next sequence number to deliver
	high    uint64 // the highest held; nothing held when high < next
	// waiting: delivery waits for next, since blocked.
	waiting bool
	blocked int64
	skipped uint64 // sequence numbers given up on (the hold time ran out)
	// heldBytes is what the held frames take in the ring's arena; it must
	// stay below the arena's size (less one frame for the wrap), or the
	// ring would evict a held frame.
	heldBytes int
	cur       Frame
	buf       []byte
}

// Sequence order's bounds: the frames held behind a hole.
const (
	orderFrames = 16384
	orderBytes  = 16 << 20
)

func newOrderer(hold time.Duration) *orderer {
	return &orderer{hold: hold, held: newRing(orderFrames, orderBytes), codec: NewCodec(nil), buf: make([]byte, 0, maxFrameLen)}
}

// take is given a frame the tracker accepted, in arrival order, and calls
// deliver for every frame that is now due, in order.
func (o *orderer) take(f *Frame, raw []byte, now int64, deliver func(*Frame, []byte)) {
	switch {
	case !o.started || f.Epoch > o.epoch:
		// A new epoch: what the old one still holds goes first, in order.
		o.flush(deliver)
		first := uint64(1)
		if !o.started {
			first = f.Seq // joined mid-feed: nothing before it is missing
		}
		o.started, o.epoch, o.next, o.high, o.waiting = true, f.Epoch, first, first-1, false
	case f.Epoch < o.epoch || f.Seq < o.next:
		// A repair of the previous epoch, or of a hole already skipped:
		// late, but new; out of order is better than never.
		deliver(f, raw)
		return
	}
	if f.Seq != o.next {
		if f.Seq-o.next >= uint64(len(o.held.ents)) {
			// Beyond what can be held: give up the holes in front.
			o.skipTo(f.Seq-uint64(len(o.held.ents))+1, deliver)
		}
		if o.heldBytes+len(raw)+maxFrameLen > len(o.held.a.buf) {
			o.flush(deliver) // full: what is held goes now, holes given up
		}
		if f.Seq > o.next {
			o.held.put(o.epoch, f.Seq, raw)
			o.heldBytes += len(raw)
			o.high = max(o.high, f.Seq)
			if !o.waiting {
				o.waiting, o.blocked = true, now
			}
			return
		}
	}
	deliver(f, raw)
	o.next++
	o.release(now, deliver)
}

// release delivers the held frames that follow next without a hole.
func (o *orderer) release(now int64, deliver func(*Frame, []byte)) {
	for o.next <= o.high {
		var ok bool
		o.buf, ok = o.held.get(o.buf[:0], o.epoch, o.next)
		if !ok {
			if !o.waiting {
				o.waiting, o.blocked = true, now
			}
			return
		}
		o.deliverHeld(o.buf, deliver)
		o.next++
	}
	o.waiting, o.heldBytes = false, 0
}

// expire skips the hole in front once it has blocked delivery for the
// hold time, and reports when it should be called next (0: nothing held).
func (o *orderer) expire(now int64, deliver func(*Frame, []byte)) int64 {
	for o.waiting && now-o.blocked >= int64(o.hold) {
		// Skip to the first held frame after the hole.
		s := o.next
		o.held.mu.Lock()
		for ; s <= o.high; s++ {
			if o.held.entry(o.epoch, s) != nil {
				break
			}
		}
		o.held.mu.Unlock()
		o.skipped += s - o.next
		o.next = s
		o.waiting = false
		o.release(now, deliver) // waits again, from now, at the next hole
	}
	if !o.waiting {
		return 0
	}
	return o.blocked + int64(o.hold)
}

// skipTo gives up every hole before seq, delivering what is held there.
func (o *orderer) skipTo(seq uint64, deliver func(*Frame, []byte)) {
	for ; o.next < seq && o.next <= o.high; o.next++ {
		var ok bool
		if o.buf, ok = o.held.get(o.buf[:0], o.epoch, o.next); ok {
			o.deliverHeld(o.buf, deliver)
		} else {
			o.skipped++
		}
	}
	if o.next > o.high {
		o.heldBytes = 0
		o.next = max(o.next, seq) // nothing held beyond: jump
	}
}

// flush delivers everything held, in order, skipping holes.
func (o *orderer) flush(deliver func(*Frame, []byte)) {
	if o.started {
		o.skipTo(o.high+1, deliver)
	}
	o.waiting = false
}

func (o *orderer) deliverHeld(raw []byte, deliver func(*Frame, []byte)) {
	o.heldBytes -= len(raw)
	f, err := o.codec.Decode(raw)
	if err != nil {
		return // it decoded when it arrived; it cannot fail now
	}
	o.cur = f
	deliver(&o.cur, raw)
}
