package gateway

import (
	"sync/atomic"
	"time"
)

// leaseEnd is when sending ends by itself: the holder's lease deadline,
// as the agent last moved it. The relay and the egress check it for every
// batch, so a holder frozen past its lease sends nothing on waking, even
// before anyone turns it off. It is kept on the monotonic clock, as ns
// since base; safe for concurrent use.
type leaseEnd struct {
	base time.Time
	at   atomic.Int64 // ns since base; 0: no deadline
}

func newLeaseEnd() *leaseEnd { return &leaseEnd{base: time.Now()} }

// set moves the deadline to t; the zero time removes it.
func (d *leaseEnd) set(t time.Time) {
	if t.IsZero() {
		d.at.Store(0)
		return
	}
	d.at.Store(max(1, int64(t.Sub(d.base))))
}

// passed reports whether the deadline has passed; a nil leaseEnd never
// does.
func (d *leaseEnd) passed() bool {
	if d == nil {
		return false
	}
	at := d.at.Load()
	return at != 0 && int64(time.Since(d.base)) > at
}
