package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"driftgate/internal/udpbatch"
)

// RepairStats is a snapshot of the relay's answers to repair requests.
type RepairStats struct {
	Requests    uint64            // requests read
	Frames      uint64            // frames resent, unicast or re-multicast
	Multicast   uint64            // of them, re-multicast (asked for by several receivers)
	Bytes       uint64            // bytes resent
	Suppressed  uint64            // asked for again right after a re-multicast: not resent
	Unavailable uint64            // frames asked for that the ring no longer holds
	Refused     map[string]uint64 // requests not answered, by reason (refuseNames)
}

// Why a repair request was refused, counted per request ("rate_limited":
// per frame not sent).
const (
	refuseNotAllowed = iota
	refuseMalformed
	refuseTag
	refuseReplay
	refuseRateLimited
	numRefusals
)

var refuseNames = [numRefusals]string{"not_allowed", "malformed", "bad_tag", "replay", "rate_limited"}

// Repair timing.
const (
	// suppressWindow: a frame asked for by a second receiver this soon
	// after it was resent to a first goes to the group once, not to each;
	// asked for again right after that, it is not resent.
	suppressWindow = 20 * time.Millisecond
	// replayWindow: with a key, requests stamped further than this from
	// the relay's clock are refused, so a recorded request cannot be
	// replayed at will.
	replayWindow = 30 * time.Second
)

type repairCounters struct {
	requests, frames, multicast, bytes, suppressed, unavailable atomic.Uint64
	refused                                                     [numRefusals]atomic.Uint64
}

// repairer answers repair requests from the relay's ring. Requests arrive
// on the relay's send sockets (a receiver asks the address its frames came
// from), one goroutine per socket.
type repairer struct {
	ring  *ring
	cfg   RepairConfig
	key   []byte // serve's keys (the relay's); the receiver's peer passes its own codec
	next  []byte // accepted too, during a key rotation
	group netip.AddrPort
	// allowed is who may ask besides cfg.Allow: the unicast destinations
	// and the peers from SetRepairPeers, replaced whole when either changes.
	allowed atomic.Pointer[map[netip.Addr]bool]
	c       repairCounters

	mu      sync.Mutex // guards buckets
	buckets buckets
}

// newRepairer answers from g; group, if valid, is where a frame several
// receivers ask for goes instead. handle is given the codec to check
// requests with; serve makes one from key and next.
func newRepairer(g *ring, cfg RepairConfig, group netip.AddrPort) *repairer {
	p := &repairer{ring: g, cfg: cfg.withDefaults(), group: group, buckets: buckets{}}
	p.allowed.Store(&map[netip.Addr]bool{})
	return p
}

// newRelayRepairer is the relay's: its own ring, sized by cfg.Repair,
// serving on the relay's send sockets.
func newRelayRepairer(cfg RelayConfig) *repairer {
	rc := cfg.Repair.withDefaults()
	p := newRepairer(newRing(rc.Frames, rc.Bytes), rc, cfg.Group)
	p.key, p.next = cfg.Key, cfg.NextKey
	return p
}

// setAllowed replaces the requesters answered besides cfg.Allow.
func (p *repairer) setAllowed(addrs []netip.AddrPort, peers []netip.Addr) {
	m := map[netip.Addr]bool{}
	for _, a := range addrs {
		m[a.Addr().Unmap()] = true
	}
	for _, a := range peers {
		m[a.Unmap()] = true
	}
	p.allowed.Store(&m)
}

func (p *repairer) allows(a netip.Addr) bool {
	a = a.Unmap()
	return (*p.allowed.Load())[a] || (len(p.cfg.Allow) > 0 && p.cfg.Allow.Allows(a))
}

// take reports whether requester may be sent n more bytes now: at most
// cfg.Rate a second, a quarter second's worth at once.
func (p *repairer) take(requester netip.Addr, n int, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	rate := float64(p.cfg.Rate)
	ns := now.UnixNano()
	return p.buckets.of(requester, rate/4, ns).take(float64(n), rate, rate/4, ns)
}

func (p *repairer) stats() RepairStats {
	s := RepairStats{
		Requests: p.c.requests.Load(), Frames: p.c.frames.Load(), Multicast: p.c.multicast.Load(),
		Bytes: p.c.bytes.Load(), Suppressed: p.c.suppressed.Load(), Unavailable: p.c.unavailable.Load(),
		Refused: map[string]uint64{},
	}
	for i, n := range refuseNames {
		s.Refused[n] = p.c.refused[i].Load()
	}
	return s
}

// repairBatch is how many frames one answer sends per system call.
const repairBatch = 64

// serve reads repair requests on s until ctx ends or s is closed.
func (p *repairer) serve(ctx context.Context, s *sender) error {
	w, err := udpbatch.New(s.conn, repairBatch, false)
	if err != nil {
		return err
	}
	codec := NewCodec(p.key, p.next)
	in := make([]byte, 2048)
	a := newAnswer(w)
	var n Nack
	n.Ranges = make([]SeqRange, 0, MaxNackRanges)
	stop := context.AfterFunc(ctx, func() { _ = s.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		m, from, err := s.conn.ReadFromUDPAddrPort(in)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			// ICMP errors surface on the next read (ECONNREFUSED from a
			// receiver that went away): not the relay's problem.
			continue
		}
		p.handle(codec, in[:m], from, &n, &a, time.Now())
	}
}

// handle answers one request.
func (p *repairer) handle(codec *Codec, b []byte, from netip.AddrPort, n *Nack, a *answer, now time.Time) {
	p.c.requests.Add(1)
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if !p.allows(from.Addr()) {
		p.c.refused[refuseNotAllowed].Add(1)
		return
	}
	if err := codec.DecodeNack(b, n); err != nil {
		if errors.Is(err, ErrNackTag) {
			p.c.refused[refuseTag].Add(1)
		} else {
			p.c.refused[refuseMalformed].Add(1)
		}
		return
	}
	if codec.Authenticated() {
		if d := now.Sub(time.Unix(0, n.Timestamp)); d > replayWindow || d < -replayWindow {
			p.c.refused[refuseReplay].Add(1)
			return
		}
	}
	a.start(from, p.group)
	nowNs := now.UnixNano()
	limited := false
	for _, r := range n.Ranges {
		for seq := r.First; seq < r.First+uint64(r.Count); seq++ {
			if limited {
				p.c.refused[refuseRateLimited].Add(1)
				continue
			}
			switch p.pick(a, n.Epoch, seq, from.Addr(), nowNs) {
			case pickUnavailable:
				p.c.unavailable.Add(1)
			case pickSuppressed:
				p.c.suppressed.Add(1)
			case pickUnicast, pickGroup:
				if !p.take(from.Addr(), a.lastLen, now) {
					a.unpick()
					limited = true
					p.c.refused[refuseRateLimited].Add(1)
				}
			}
			if a.full() {
				p.flush(a)
			}
		}
	}
	p.flush(a)
}

type pickResult uint8

const (
	pickUnavailable pickResult = iota
	pickSuppressed
	pickUnicast
	pickGroup
)

// pick copies frame (epoch, seq) into the answer, to the requester or, if
// another receiver asked for it just before, to the group.
func (p *repairer) pick(a *answer, epoch, seq uint64, requester netip.Addr, now int64) pickResult {
	g := p.ring
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.entry(epoch, seq)
	if e == nil {
		return pickUnavailable
	}
	recent := now-e.repairedAt < int64(suppressWindow)
	toGroup := false
	switch {
	case recent && p.group.IsValid() && e.repairedTo == p.group.Addr():
		return pickSuppressed
	case recent && p.group.IsValid() && e.repairedTo.IsValid() && e.repairedTo != requester &&
		p.group.Addr().Is4() == requester.Is4(): // the group is reached from this family's socket
		toGroup = true
	}
	a.add(g.a.at(e.pos, e.len), toGroup)
	e.repairedAt, e.repairedTo = now, requester
	if toGroup {
		e.repairedTo = p.group.Addr()
		return pickGroup
	}
	return pickUnicast
}

// flush sends what the answer holds.
func (p *repairer) flush(a *answer) {
	for i, frames := range [2][][]byte{a.uni, a.grp} {
		if len(frames) == 0 {
			continue
		}
		to := a.to
		if i == 1 {
			to = a.group
		}
		failed, _ := a.w.WriteBatch(frames, to)
		sent := len(frames) - failed
		p.c.frames.Add(uint64(sent))
		if i == 1 {
			p.c.multicast.Add(uint64(sent))
		}
	}
	p.c.bytes.Add(uint64(a.bytes))
	a.reset()
}

// answer collects the frames of one reply in a preallocated buffer.
type answer struct {
	w         batchWriter
	to, group netip.AddrPort
	buf       []byte
	uni, grp  [][]byte
	bytes     int
	lastLen   int
	lastGroup bool
}

// newAnswer is an answer written with w: room for a batch of average
// frames, and flushed before a largest one would not fit.
func newAnswer(w batchWriter) answer {
	return answer{w: w, buf: make([]byte, 0, repairBatch*maxFrameLen/8)}
}

func (a *answer) start(to, group netip.AddrPort) {
	a.to, a.group = to, group
	a.reset()
}

func (a *answer) reset() { a.buf, a.uni, a.grp, a.bytes = a.buf[:0], a.uni[:0], a.grp[:0], 0 }

func (a *answer) add(frame []byte, toGroup bool) {
	off := len(a.buf)
	a.buf = append(a.buf, frame...)
	f := a.buf[off:len(a.buf):len(a.buf)]
	if toGroup {
		a.grp = append(a.grp, f)
	} else {
		a.uni = append(a.uni, f)
	}
	a.bytes += len(frame)
	a.lastLen, a.lastGroup = len(frame), toGroup
}

// unpick takes back the frame add put in last.
func (a *answer) unpick() {
	a.buf = a.buf[:len(a.buf)-a.lastLen]
	if a.lastGroup {
		a.grp = a.grp[:len(a.grp)-1]
	} else {
		a.uni = a.uni[:len(a.uni)-1]
	}
	a.bytes -= a.lastLen
}

// full: one more frame might not fit without growing the buffer, or a
// batch is complete.
func (a *answer) full() bool {
	return len(a.uni)+len(a.grp) >= repairBatch || cap(a.buf)-len(a.buf) < maxFrameLen
}
