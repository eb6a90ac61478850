package gateway

import (
	"cmp"
	"net/netip"
)

// egressState decides what becomes of each datagram: the allowlist, the
// rate limits, and duplicate suppression — the ids known sent, and what a
// standby holds until the primary says it sent it. Time is the caller's
// (ns), so the simulated tests drive it. Not safe for concurrent use
// (Egress.mu).
type egressState struct {
	allow       Allowlist
	rate, burst float64
	window      int64 // ns; 0: suppression off
	holdFrames  int
	holdBytes   int

	// seen: id → when it was last known sent, by this node or another
	// primary; seenQ orders them for expiry (an id sent again appears
	// twice: the older entry is skipped when it expires).
	seen  map[uint64]int64
	seenQ []idAt
	// held: a standby's datagrams with ids, oldest first, until the
	// primary's record says they went (then they are dropped), the window
	// passes, or this node becomes the primary (then it sends them).
	held      []*heldDgram
	heldByID  map[uint64]*heldDgram
	heldBytes int
	// flush: sending has just started; what is held goes first.
	flush bool
	// synced: this node has seen the feed's records (or sent itself), so
	// it learns what the primary sends; until then a standby holds
	// nothing. A node that has just started, whose receiver has not yet
	// taken the feed (its first frames wait for Consul's confirmation),
	// would otherwise hold what the primary sent and say so in records it
	// never got, and send it again on taking over.
	synced  bool
	buckets buckets
	// refused is the last destination refused by the allowlist, for the
	// caller to log (with the state unlocked).
	refused netip.AddrPort
}

type idAt struct {
	id uint64
	at int64
}

type heldDgram struct {
	b    []byte
	dst  netip.AddrPort
	id   uint64
	at   int64
	from *egressCounters
	gone bool
}

func newEgressState(cfg EgressConfig) egressState {
	s := egressState{allow: cfg.Allow, window: int64(cfg.Window), holdFrames: cfg.HoldFrames, holdBytes: cfg.HoldBytes,
		seen: map[uint64]int64{}, heldByID: map[uint64]*heldDgram{}, buckets: buckets{}}
	s.setRate(cfg.Rate, cfg.Burst)
	return s
}

// setRate sets the per-destination rate and burst; burst 0 is the rate.
func (s *egressState) setRate(rate, burst int) {
	s.rate, s.burst = float64(rate), float64(cmp.Or(burst, rate))
}

// classify decides about one datagram b read from l's port, at now, with
// sending on or off; one to send is added to o (b is not copied then).
func (s *egressState) classify(l *egressListener, b []byte, trunc, on bool, now int64, o *egressOut) {
	c := &l.c
	if trunc {
		c.add(EgressTruncated, 1)
		return
	}
	dst, payload := l.cfg.Destination, b
	var id uint64
	var hasID bool
	if l.cfg.Header {
		h, p, err := ParseEgressHeader(b)
		if err != nil {
			c.add(EgressBadHeader, 1)
			return
		}
		if h.Dest.IsValid() {
			dst = h.Dest
		}
		payload, id, hasID = p, h.ID, h.HasID
		if !dst.IsValid() {
			c.add(EgressBadHeader, 1) // no destination in the header, none configured
			return
		}
	}
	s.decide(c, payload, dst, id, hasID && s.window > 0, on, now, o)
}

// decide is classify after the header: the allowlist, suppression, the
// role and the rate.
func (s *egressState) decide(c *egressCounters, payload []byte, dst netip.AddrPort, id uint64, dedup, on bool, now int64, o *egressOut) {
	if !s.allow.Allows(dst.Addr()) {
		c.add(EgressNotAllowed, 1)
		s.refused = dst
		return
	}
	if dedup {
		if _, ok := s.seen[id]; ok {
			if on {
				c.add(EgressDuplicate, 1)
			} else {
				c.add(EgressNotPrimary, 1) // the primary sent it
			}
			return
		}
	}
	if !on {
		if dedup && s.synced && s.heldByID[id] == nil {
			s.hold(c, payload, dst, id, now)
			return
		}
		c.add(EgressNotPrimary, 1)
		return
	}
	if s.rate > 0 && !s.buckets.of(dst.Addr(), s.burst, now).take(1, s.rate, s.burst, now) {
		c.add(EgressRateLimited, 1)
		return
	}
	if dedup {
		s.markSeen(id, now)
		s.synced = true
	}
	o.add(payload, dst, c, id, dedup)
}

// hold keeps a copy of a standby's datagram, dropping the oldest beyond the
// bounds (counted as expired).
func (s *egressState) hold(c *egressCounters, payload []byte, dst netip.AddrPort, id uint64, now int64) {
	h := &heldDgram{b: append([]byte(nil), payload...), dst: dst, id: id, at: now, from: c}
	s.held = append(s.held, h)
	s.heldByID[id] = h
	s.heldBytes += len(h.b)
	c.held.Add(1)
	for len(s.heldByID) > s.holdFrames || s.heldBytes > s.holdBytes {
		s.release(s.popHeld(), EgressExpired)
	}
}

// popHeld takes the oldest held datagram still there off the queue.
func (s *egressState) popHeld() *heldDgram {
	for len(s.held) > 0 {
		h := s.held[0]
		s.held[0] = nil
		s.held = s.held[1:]
		if !h.gone {
			return h
		}
	}
	return nil
}

// release ends h's holding with result r.
func (s *egressState) release(h *heldDgram, r EgressResult) {
	if s.unhold(h) {
		h.from.add(r, 1)
	}
}

// unhold ends h's holding, uncounted; false if it had ended.
func (s *egressState) unhold(h *heldDgram) bool {
	if h == nil || h.gone {
		return false
	}
	h.gone = true
	delete(s.heldByID, h.id)
	s.heldBytes -= len(h.b)
	h.from.held.Add(-1)
	return true
}

// markSeen remembers id as sent at now.
func (s *egressState) markSeen(id uint64, now int64) {
	s.seen[id] = now
	s.seenQ = append(s.seenQ, idAt{id, now})
	for len(s.seen) > maxEgressIDs {
		s.forgetOldest()
	}
}

func (s *egressState) forgetOldest() {
	e := s.seenQ[0]
	s.seenQ = s.seenQ[1:]
	if s.seen[e.id] == e.at {
		delete(s.seen, e.id)
	}
}

// learn takes ids a primary sent (its records, from the feed): nobody sends
// them again, and a standby drops its copies.
func (s *egressState) learn(ids []uint64, now int64) {
	if s.window == 0 {
		return
	}
	for _, id := range ids {
		s.markSeen(id, now)
		s.release(s.heldByID[id], EgressNotPrimary)
		s.synced = true
	}
}

// expire forgets ids and drops held datagrams older than the window.
func (s *egressState) expire(now int64) {
	if s.window == 0 {
		return
	}
	for len(s.seenQ) > 0 && now-s.seenQ[0].at > s.window {
		s.forgetOldest()
	}
	for len(s.held) > 0 && (s.held[0].gone || now-s.held[0].at > s.window) {
		s.release(s.held[0], EgressExpired) // nothing if gone
		s.held[0] = nil
		s.held = s.held[1:]
	}
	if len(s.seenQ) == 0 {
		s.seenQ = nil // let the array go after a burst
	}
}

// flushHeld adds what is held to o, oldest first, when sending starts: what
// the primary before did not say it sent.
func (s *egressState) flushHeld(o *egressOut, now int64) {
	s.flush = false
	for h := s.popHeld(); h != nil; h = s.popHeld() {
		s.unhold(h) // counted by what decide makes of it
		s.decide(h.from, h.b, h.dst, h.id, true, true, now, o)
	}
	s.held = nil
}
