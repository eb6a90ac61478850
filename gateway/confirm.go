package gateway

import (
	"net/netip"
	"time"
)

// Epoch confirmation defaults: a takeover's first frames usually arrive
// after the receiver's watch has seen the new term (the lock is taken
// before the VIP moves); this bounds what a stray epoch can cost.
const (
	DefaultHoldFrames = 1024
	DefaultHoldTime   = 500 * time.Millisecond
	holdBytes         = 4 << 20
	// DefaultSourceRate: datagrams a second from a host admitted only by a
	// receive.sources prefix (and a second's worth of burst).
	DefaultSourceRate = 10_000
	// replaySlack: a frame relayed longer than this before the receiver
	// started is a replay. Generous, for relays whose clock is behind.
	replaySlack = 30 * time.Second
)

// pending holds frames of epochs Consul has not confirmed yet, in arrival
// order, in one preallocated arena; bounded by count, bytes and age.
type pending struct {
	a     arena
	recs  []pendRec
	head  int // index of the oldest in recs (a ring)
	n     int
	hold  time.Duration
	codec *Codec // decodes released frames again: they were checked on arrival
}

type pendRec struct {
	epoch uint64
	from  netip.AddrPort
	at    int64 // ns, the receiver's clock
	pos   uint64
	len   int
	gone  bool // released or dropped out of order
}

func newPending(frames int, hold time.Duration) *pending {
	return &pending{a: newArena(holdBytes), recs: make([]pendRec, frames), hold: hold, codec: NewCodec(nil)}
}

func (p *pending) len() int {
	k := 0
	for i := range p.n {
		if !p.recs[(p.head+i)%len(p.recs)].gone {
			k++
		}
	}
	return k
}

// push holds raw; false when it cannot (full): the frame is dropped.
func (p *pending) push(epoch uint64, from netip.AddrPort, raw []byte, now int64) bool {
	if p.n == len(p.recs) {
		return false
	}
	pos := p.a.place(len(raw))
	if p.n > 0 && pos+uint64(len(raw))-p.recs[p.head].pos > uint64(len(p.a.buf)) {
		return false
	}
	pos = p.a.put(raw)
	p.recs[(p.head+p.n)%len(p.recs)] = pendRec{epoch: epoch, from: from, at: now, pos: pos, len: len(raw)}
	p.n++
	return true
}

// release hands take the held frames of epoch, in order, and drops those
// of lower epochs (never confirmed), counting them in dropped; frames of
// higher epochs stay. It also drops what is older than the hold time.
func (p *pending) release(epoch uint64, now int64, take func(f Frame, raw []byte, from netip.AddrPort, at int64), dropped *uint64) {
	for i := range p.n {
		rc := &p.recs[(p.head+i)%len(p.recs)]
		if rc.gone {
			continue
		}
		switch {
		case rc.epoch == epoch && now-rc.at <= int64(p.hold):
			raw := p.a.at(rc.pos, rc.len)
			if f, err := p.codec.Decode(raw); err == nil {
				take(f, raw, rc.from, rc.at)
			}
			rc.gone = true
		case rc.epoch <= epoch || now-rc.at > int64(p.hold):
			*dropped++
			rc.gone = true
		}
	}
	p.trim()
}

// expire drops what has waited longer than the hold time, counting it, and
// returns when to look again (0: nothing held).
func (p *pending) expire(now int64, dropped *uint64) int64 {
	for i := range p.n {
		rc := &p.recs[(p.head+i)%len(p.recs)]
		if !rc.gone && now-rc.at > int64(p.hold) {
			*dropped++
			rc.gone = true
		}
	}
	p.trim()
	if p.n == 0 {
		return 0
	}
	return p.recs[p.head].at + int64(p.hold) + 1
}

// trim forgets the gone records at the head.
func (p *pending) trim() {
	for p.n > 0 && p.recs[p.head].gone {
		p.head = (p.head + 1) % len(p.recs)
		p.n--
	}
}
