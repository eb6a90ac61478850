package gateway

import (
	"fmt"
	"net/netip"
	"time"
)

// ReceiverRepair says how a receiver repairs gaps in the feed.
type ReceiverRepair struct {
	// Off: gaps are only counted (as unrecovered, once the deadline has
	// passed); no repair request is sent.
	Off bool
	// Reorder is how long a gap may stay open before it is asked for: a
	// frame merely overtaken by a later one arrives within it. 0 =
	// DefaultRepairReorder.
	Reorder time.Duration
	// Deadline is how long after it opened a gap is asked for before the
	// frames still missing are given up as unrecovered. 0 =
	// DefaultRepairDeadline.
	Deadline time.Duration
	// KeepFrames and KeepBytes bound the ring of frames this receiver keeps
	// to answer its peers: after a takeover, a frame of the deposed
	// primary that one receiver missed is asked of the others (the deposed
	// primary may be dead). 0 = DefaultKeepFrames, DefaultKeepBytes.
	KeepFrames, KeepBytes int
}

// Receiver repair defaults. Retries start at DefaultRepairRetry and double
// up to maxRepairRetry: a LAN answers in well under a millisecond, so one
// retry interval covers a lost request or answer.
const (
	DefaultRepairReorder  = 2 * time.Millisecond
	DefaultRepairDeadline = 2 * time.Second
	DefaultRepairRetry    = 10 * time.Millisecond
	DefaultKeepFrames     = 1 << 16 // the de-duplication window
	DefaultKeepBytes      = 16 << 20
	// peerAfter: a gap of the previous epoch is asked of the peers too
	// from its peerAfter-th request on, when its relay has not answered.
	peerAfter      = 2
	maxRepairRetry = 250 * time.Millisecond
	// perFrameAnswer is how long one frame of an answer is allowed to take
	// to arrive, over the first retry interval: generous for a LAN (a
	// relay sends a frame in 2–4 µs) and for a loaded host.
	perFrameAnswer = 10 * time.Microsecond
	// maxGaps bounds the open gaps a receiver tracks; a further one gives
	// up the oldest.
	maxGaps = 256
)

// Validate checks the timing; errors name the field as the configuration
// file does.
func (c *ReceiverRepair) Validate() error {
	switch {
	case c.Reorder < 0 || c.Reorder > time.Second:
		return fmt.Errorf("repair.reorder: %s is out of range 0..1s (0: %s)", c.Reorder, DefaultRepairReorder)
	case c.Deadline < 0 || c.Deadline > time.Minute:
		return fmt.Errorf("repair.deadline: %s is out of range 0..1m (0: %s)", c.Deadline, DefaultRepairDeadline)
	case c.Deadline != 0 && c.Deadline <= c.Reorder:
		return fmt.Errorf("repair.deadline: %s must be longer than repair.reorder %s", c.Deadline, c.Reorder)
	case c.KeepFrames < 0 || c.KeepFrames > 1<<24:
		return fmt.Errorf("repair.keep_frames: %d is out of range 1..%d (0: %d)", c.KeepFrames, 1<<24, DefaultKeepFrames)
	case c.KeepBytes != 0 && (c.KeepBytes < 2*maxFrameLen || c.KeepBytes > 1<<31):
		return fmt.Errorf("repair.keep_bytes: %d is out of range %d..%d (0: %d)", c.KeepBytes, 2*maxFrameLen, 1<<31, DefaultKeepBytes)
	}
	return nil
}

func (c ReceiverRepair) withDefaults() ReceiverRepair {
	if c.Reorder == 0 {
		c.Reorder = DefaultRepairReorder
	}
	if c.Deadline == 0 {
		c.Deadline = DefaultRepairDeadline
	}
	if c.KeepFrames == 0 {
		c.KeepFrames = DefaultKeepFrames
	}
	if c.KeepBytes == 0 {
		c.KeepBytes = DefaultKeepBytes
	}
	return c
}

// gap is a run of sequence numbers of one epoch not (all) received.
type gap struct {
	epoch, first, last uint64 // inclusive
	relay              netip.AddrPort
	opened, next       int64 // ns: when it was seen, when to ask next
	asked              int64 // ns: when it was last asked for
	tries              int
}

// gaps schedules repair requests for the holes in the feed. It is pure
// logic over times passed in, so tests drive it with a fake clock; the
// receiver calls it under its lock.
type gaps struct {
	cfg  ReceiverRepair
	open []gap
	// peers are the other receivers' repair addresses (SetPeers), asked
	// for the previous epoch's gaps in turn.
	peers []netip.AddrPort

	unrecovered uint64
	repaired    uint64
	nacks       uint64
	latency     latencyHist
	// rtt is a smoothed time from a request to the first frame of its
	// answer (ns; TCP's 1/8 gain): a busy relay or receiver answers slower
	// than the first retry interval, and asking again before the answer
	// could arrive only has it sent twice.
	rtt int64
}

// add opens a gap of frames first..last of epoch, from relay, seen at now.
func (g *gaps) add(epoch, first, last uint64, relay netip.AddrPort, now int64, t *tracker) {
	if len(g.open) == maxGaps {
		g.giveUp(0, t)
	}
	g.open = append(g.open, gap{epoch: epoch, first: first, last: last, relay: relay, opened: now, next: now + int64(g.cfg.Reorder)})
}

// giveUp drops gap i, counting what it still misses as unrecovered.
func (g *gaps) giveUp(i int, t *tracker) {
	gp := &g.open[i]
	for s := gp.first; s <= gp.last; s++ {
		// What the tracker can no longer tell about counts as missing.
		if t.missing(gp.epoch, s) || !t.knows(gp.epoch, s) {
			g.unrecovered++
		}
	}
	g.open = append(g.open[:i], g.open[i+1:]...)
}

// closeEpoch is called before a new epoch shifts the tracker's windows:
// the gaps of the previous epoch (prev, if valid) are given up, the
// current epoch's stay open.
func (g *gaps) closeEpoch(t *tracker, prev uint64, valid bool) {
	for i := 0; i < len(g.open); {
		if valid && g.open[i].epoch == prev {
			g.giveUp(i, t)
			continue
		}
		i++
	}
}

// filled is called for a frame that filled a hole: it counts a repair if
// the frame had been asked for.
func (g *gaps) filled(epoch, seq uint64, now int64) bool {
	for i := range g.open {
		gp := &g.open[i]
		if gp.epoch == epoch && gp.first <= seq && seq <= gp.last {
			if gp.tries > 0 {
				g.repaired++
				g.latency.observe(time.Duration(now - gp.opened))
				if sample := now - gp.asked; gp.asked != 0 && sample > 0 {
					if g.rtt == 0 {
						g.rtt = sample
					} else {
						g.rtt += (sample - g.rtt) / 8
					}
					gp.asked = 0 // one sample per request
				}
				// Answers are arriving: a large one takes longer than a
				// retry interval to arrive whole, and asking again while it
				// does would only have the relay send it twice.
				gp.next = max(gp.next, now+int64(g.retryAfter(gp.tries)))
				return true
			}
			return false
		}
	}
	return false
}

// request is one repair request to send: to whom, and what.
type request struct {
	to   netip.AddrPort
	nack Nack
}

// due returns the repair requests to send at now (appending to reqs),
// shrinks the gaps to what is still missing, closes those that are
// complete, gives up those past their deadline or out of the window, and
// returns when it next has work (0: none).
func (g *gaps) due(now int64, t *tracker, reqs []request) ([]request, int64) {
	var next int64
	for i := 0; i < len(g.open); {
		gp := &g.open[i]
		// Shrink to the missing part; the tracker forgets what slides out
		// of its window, so that part can no longer be told apart.
		for gp.first <= gp.last && !t.missing(gp.epoch, gp.first) && t.knows(gp.epoch, gp.first) {
			gp.first++
		}
		for gp.last >= gp.first && !t.missing(gp.epoch, gp.last) && t.knows(gp.epoch, gp.last) {
			gp.last--
		}
		switch {
		case gp.first > gp.last:
			g.open = append(g.open[:i], g.open[i+1:]...)
			continue
		case now-gp.opened >= int64(g.cfg.Deadline) || !t.knows(gp.epoch, gp.first):
			g.giveUp(i, t)
			continue
		}
		if gp.next <= now && !g.cfg.Off {
			reqs = g.ask(reqs, gp, gp.relay, t, now)
			if gp.epoch != t.epoch && gp.tries+1 >= peerAfter && len(g.peers) > 0 {
				// The deposed primary has not answered: it may be dead.
				// The other receivers may have what it sent.
				reqs = g.ask(reqs, gp, g.peers[gp.tries%len(g.peers)], t, now)
			}
			gp.tries++
			gp.asked = now
			// A large answer takes a while to arrive whole (8000 frames
			// after an 8 s outage): asking again before it can have would
			// only have it sent twice.
			transfer := time.Duration(gp.last-gp.first+1) * perFrameAnswer
			gp.next = now + int64(max(g.retryAfter(gp.tries), transfer))
		}
		if g.cfg.Off {
			gp.next = gp.opened + int64(g.cfg.Deadline)
		}
		if next == 0 || gp.next < next {
			next = gp.next
		}
		i++
	}
	return reqs, next
}

// retryAfter is the wait after the n-th request for a gap: doubling from
// DefaultRepairRetry, and at least four round trips as measured.
func (g *gaps) retryAfter(n int) time.Duration {
	d := max(DefaultRepairRetry<<min(n-1, 8), 4*time.Duration(g.rtt))
	return min(d, maxRepairRetry)
}

// ask adds the missing ranges of gp to the request to `to` for its epoch.
func (g *gaps) ask(reqs []request, gp *gap, to netip.AddrPort, t *tracker, now int64) []request {
	var rq *request
	for i := range reqs {
		if reqs[i].to == to && reqs[i].nack.Epoch == gp.epoch && len(reqs[i].nack.Ranges) < MaxNackRanges {
			rq = &reqs[i]
		}
	}
	if rq == nil {
		reqs = append(reqs, request{to: to, nack: Nack{Epoch: gp.epoch, Timestamp: now}})
		rq = &reqs[len(reqs)-1]
		g.nacks++
	}
	total := 0
	for _, r := range rq.nack.Ranges {
		total += int(r.Count)
	}
	for s := gp.first; s <= gp.last; {
		if !t.missing(gp.epoch, s) {
			s++
			continue
		}
		e := s
		for e+1 <= gp.last && t.missing(gp.epoch, e+1) {
			e++
		}
		n := min(e-s+1, uint64(MaxNackFrames-total))
		if n == 0 || len(rq.nack.Ranges) == MaxNackRanges {
			break // asked again on the next try
		}
		rq.nack.Ranges = append(rq.nack.Ranges, SeqRange{First: s, Count: uint32(n)})
		total += int(n)
		s += n
	}
	return reqs
}

// latencyHist counts repair latencies into fixed buckets.
type latencyHist struct {
	counts [len(latencyBounds) + 1]uint64
	sum    time.Duration
}

// latencyBounds are the histogram's upper bounds.
var latencyBounds = [...]time.Duration{
	500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2 * time.Second,
}

func (h *latencyHist) observe(d time.Duration) {
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	h.counts[i]++
	h.sum += d
}

// RepairLatency is a histogram of the time from a gap's detection to the
// arrival of a repaired frame.
type RepairLatency struct {
	Bounds []time.Duration // upper bounds; the last bucket is everything above
	Counts []uint64        // per bucket (not cumulative), len(Bounds)+1
	Sum    time.Duration
}

// Quantile returns the upper bound of the bucket holding the q-quantile
// (0 < q ≤ 1) — "p50 ≤ 2ms" — or 0 with no observation; above the last
// bound it returns the largest latency bound doubled.
func (l RepairLatency) Quantile(q float64) time.Duration {
	var total uint64
	for _, c := range l.Counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.999999)
	var cum uint64
	for i, c := range l.Counts {
		cum += c
		if cum >= rank {
			if i < len(l.Bounds) {
				return l.Bounds[i]
			}
			break
		}
	}
	return 2 * l.Bounds[len(l.Bounds)-1]
}

func (h *latencyHist) snapshot() RepairLatency {
	return RepairLatency{Bounds: latencyBounds[:], Counts: append([]uint64(nil), h.counts[:]...), Sum: h.sum}
}
