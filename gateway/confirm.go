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
// order, bounded by count, bytes and age.
type pending struct {
	f     fifo[pendMeta]
	hold  time.Duration
	codec *Codec // decodes released frames again: they were checked on arrival
}

type pendMeta struct {
	epoch uint64
	from  netip.AddrPort
	at    int64 // ns, the receiver's clock
	gone  bool  // released or dropped out of order
}

func newPending(frames int, hold time.Duration) *pending {
	return &pending{f: newFIFO[pendMeta](frames, holdBytes), hold: hold, codec: NewCodec(nil)}
}

func (p *pending) len() int {
	k := 0
	for i := range p.f.n {
		if r, _ := p.f.rec(i); !r.m.gone {
			k++
		}
	}
	return k
}

// push holds raw; false when it cannot (full): the frame is dropped.
func (p *pending) push(epoch uint64, from netip.AddrPort, raw []byte, now int64) bool {
	return p.f.push(raw, pendMeta{epoch: epoch, from: from, at: now})
}

// release hands take the held frames of epoch, in order, and drops those
// of lower epochs (never confirmed), counting them in dropped; frames of
// higher epochs stay. It also drops what is older than the hold time.
func (p *pending) release(epoch uint64, now int64, take func(f Frame, raw []byte, from netip.AddrPort, at int64), dropped *uint64) {
	for i := range p.f.n {
		r, raw := p.f.rec(i)
		m := &r.m
		if m.gone {
			continue
		}
		switch {
		case m.epoch == epoch && now-m.at <= int64(p.hold):
			if f, err := p.codec.Decode(raw); err == nil {
				take(f, raw, m.from, m.at)
			}
			m.gone = true
		case m.epoch <= epoch || now-m.at > int64(p.hold):
			*dropped++
			m.gone = true
		}
	}
	p.trim()
}

// expire drops what has waited longer than the hold time, counting it, and
// returns when to look again (0: nothing held).
func (p *pending) expire(now int64, dropped *uint64) int64 {
	for i := range p.f.n {
		if r, _ := p.f.rec(i); !r.m.gone && now-r.m.at > int64(p.hold) {
			*dropped++
			r.m.gone = true
		}
	}
	p.trim()
	if p.f.n == 0 {
		return 0
	}
	r, _ := p.f.rec(0)
	return r.m.at + int64(p.hold) + 1
}

// trim forgets the gone records at the head.
func (p *pending) trim() {
	for p.f.n > 0 {
		if r, _ := p.f.rec(0); !r.m.gone {
			return
		}
		p.f.pop()
	}
}
