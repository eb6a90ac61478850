package gateway

// WindowSize is how many sequence numbers behind the newest one a receiver
// remembers, for de-duplication and for repair: a gap can be repaired only
// while it is inside the window (3 s at 20k frames/s; 8 KiB of bits).
const WindowSize = 1 << 16

// headGap: a receiver whose first frame of a feed has a sequence number up
// to this asks for the frames before it. A joiner sees a running feed's
// head this small only if it was there when the feed began (64 frames are
// 3 ms at 20k/s, 0.3 s at 200/s), and at worst it is handed that many
// frames it did not wait for.
const headGap = 64

// verdict is what the tracker decided about a frame.
type verdict uint8

const (
	accept    verdict = iota + 1 // new: deliver
	fill                         // new, behind the newest: a hole filled (reordered or repaired); deliver
	duplicate                    // seen before inside the window: drop
	stale                        // epoch older than the newest accepted: a deposed primary
	late                         // behind the window: cannot tell if seen, drop
)

// tracker follows (epoch, sequence) for one feed. It is the receiver's
// fencing and ordering logic, kept free of I/O so it can be table-tested.
type tracker struct {
	started bool
	epoch   uint64
	highest uint64 // highest sequence number accepted in epoch
	seen    [WindowSize / 64]uint64

	lost     uint64 // frames skipped by a gap and not (yet) arrived
	gaps     uint64 // number of gap events
	epochs   uint64 // epoch changes seen (including the first)
	restarts uint64 // standalone (epoch 0) relay restarts detected

	// The gap the last check opened (first..last of epoch), or last = 0;
	// the receiver takes it to schedule its repair.
	gapFirst, gapLast uint64

	// The previous epoch's window, kept across one takeover so that its
	// holes can still be filled by repairs: a frame of the previous epoch
	// is accepted only into a hole below the newest one this receiver took
	// from it, that is, one relayed before a frame accepted while that
	// epoch was current. Anything else from it is stale.
	prev struct {
		valid          bool
		epoch, highest uint64
		seen           [WindowSize / 64]uint64
	}
}

// check decides on a frame and, if accepted, records it.
func (t *tracker) check(epoch, seq uint64) verdict {
	switch {
	case !t.started:
		// The first frame sets the baseline: a receiver that starts while
		// a feed is running has not lost what came before it. Unless the
		// feed has only just begun: a receiver that was waiting for it and
		// whose first frame is one of the epoch's first headGap lost the
		// ones before it (the head of a stream has no gap to show it).
		t.started = true
		t.reset(epoch)
		if seq > 1 && seq <= headGap {
			t.gaps++
			t.lost += seq - 1
			t.gapFirst, t.gapLast = 1, seq-1
		}
		t.mark(seq)
		t.highest = seq
		return accept
	case epoch < t.epoch:
		if p := &t.prev; p.valid && epoch == p.epoch && t.prevMissing(seq) {
			p.seen[(seq/64)%(WindowSize/64)] |= 1 << (seq % 64)
			if t.lost > 0 {
				t.lost--
			}
			return fill
		}
		if t.prev.valid && epoch == t.prev.epoch && t.knows(epoch, seq) {
			return duplicate // a second repair of a hole already filled
		}
		return stale
	case epoch > t.epoch:
		// A new primary: its sequence starts at 1, so anything before seq
		// in the new epoch was lost at the takeover.
		t.prev.valid, t.prev.epoch, t.prev.highest, t.prev.seen = true, t.epoch, t.highest, t.seen
		t.reset(epoch)
	}
	if seq > t.highest {
		if gap := seq - t.highest - 1; gap > 0 {
			t.gaps++
			t.lost += gap
			t.gapFirst, t.gapLast = t.highest+1, seq-1
		}
		t.advance(seq)
		return accept
	}
	if t.highest-seq >= WindowSize {
		if epoch == 0 {
			// A standalone relay has no epoch to tell its restarts apart;
			// a sequence far behind the window on a LAN means it restarted.
			t.restarts++
			t.prev.valid = false
			t.reset(0)
			t.advance(seq)
			return accept
		}
		return late
	}
	if t.isMarked(seq) {
		return duplicate
	}
	t.mark(seq)
	if t.lost > 0 {
		t.lost--
	}
	return fill
}

// announce takes the relay's word that it sent up to seq of epoch: the
// frames after the newest one received are missing (the tail a pause
// hides). It opens their gap, as check does, and reports whether it did.
func (t *tracker) announce(epoch, seq uint64) bool {
	if !t.started || epoch != t.epoch || seq <= t.highest {
		return false
	}
	first := t.highest + 1
	t.advance(seq)
	t.unmark(seq) // announced, not received
	t.gaps++
	t.lost += seq - first + 1
	t.gapFirst, t.gapLast = first, seq
	return true
}

// follow starts over at epoch, lower than the one followed: Consul was
// rebuilt and its indexes began again. Only Consul's word may do this
// (Receiver.ConfirmEpoch); a frame never does.
func (t *tracker) follow(epoch uint64) {
	t.prev.valid = false
	t.reset(epoch)
	t.started = true
}

// knows reports whether seq of epoch is inside the window (the current
// epoch's or the previous one's), where the tracker can tell whether it
// arrived.
func (t *tracker) knows(epoch, seq uint64) bool {
	if t.started && epoch == t.epoch {
		return seq <= t.highest && t.highest-seq < WindowSize
	}
	p := &t.prev
	return p.valid && epoch == p.epoch && seq <= p.highest && p.highest-seq < WindowSize
}

// missing reports whether seq of epoch is inside a window and has not
// arrived.
func (t *tracker) missing(epoch, seq uint64) bool {
	if t.started && epoch == t.epoch {
		return t.knows(epoch, seq) && !t.isMarked(seq)
	}
	return t.knows(epoch, seq) && t.prevMissing(seq)
}

// prevMissing: seq is a hole in the previous epoch's window.
func (t *tracker) prevMissing(seq uint64) bool {
	p := &t.prev
	return seq <= p.highest && p.highest-seq < WindowSize && p.seen[(seq/64)%(WindowSize/64)]&(1<<(seq%64)) == 0
}

func (t *tracker) reset(epoch uint64) {
	t.epoch = epoch
	t.highest = 0
	t.seen = [WindowSize / 64]uint64{}
	t.epochs++
}

// advance moves the window's top to seq, forgetting what falls out of it.
func (t *tracker) advance(seq uint64) {
	if seq-t.highest >= WindowSize {
		t.seen = [WindowSize / 64]uint64{}
	} else {
		for s := t.highest + 1; s < seq; s++ {
			t.unmark(s)
		}
	}
	t.highest = seq
	t.mark(seq)
}

func (t *tracker) mark(seq uint64)   { t.seen[(seq/64)%(WindowSize/64)] |= 1 << (seq % 64) }
func (t *tracker) unmark(seq uint64) { t.seen[(seq/64)%(WindowSize/64)] &^= 1 << (seq % 64) }
func (t *tracker) isMarked(seq uint64) bool {
	return t.seen[(seq/64)%(WindowSize/64)]&(1<<(seq%64)) != 0
}
