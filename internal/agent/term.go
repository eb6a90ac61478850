package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"driftgate/netvip"
)

// VIP is one floating address on this host, as the role loop uses it
// (*netvip.Manager).
type VIP interface {
	// Add puts the address on its interface until the lease deadline (the
	// kernel's valid lifetime); adding one that is there extends it.
	// netvip.ErrLeaseTooShort means nothing was changed.
	Add(until time.Time) error
	// Remove takes it off; removing one that is absent succeeds.
	Remove() error
	// Present reports whether it is on the interface.
	Present() (bool, error)
}

// Fence ends the lease in the kernel to the millisecond (*netvip.Fence):
// the kernel stops answering for the VIPs at the time given last, even if
// the process is frozen. A time already past fences them now.
type Fence interface {
	Extend(until time.Time) error
}

// holdFunc starts, in g, the tasks that run while a term holds VIP i:
// announcer, conflict guard, probe. allowed reports whether the term still
// holds (read before every announcement). It returns a counter of the
// announcements sent, or nil.
type holdFunc func(ctx context.Context, g *errgroup.Group, i int, allowed func() bool) (sent func() uint64)

// term is one holding period, from Bind to drop: it owns the VIPs' kernel
// lease and the tasks that run only while holding, under an errgroup of its
// own whose context is a child of the agent's task tree (the agent waits
// for it). A term is used from the election's goroutine, except for the
// lease timer, which mu orders against drop.
type term struct {
	epoch uint64
	clock Clock
	log   *slog.Logger
	vips  []VIP
	names []string // of vips, for logs
	fence Fence    // nil: the VIPs' address lifetimes alone
	// deadline is the lease's end as last renewed (unix ns on clock):
	// announcements stop at it even before drop runs.
	deadline atomic.Int64

	holding atomic.Bool // until drop starts
	cancel  context.CancelFunc
	g       *errgroup.Group
	sent    []func() uint64

	mu        sync.Mutex // orders renewals, including the timer's, against drop
	stopTimer func() bool
	// expires is when the kernel's lifetime for the VIPs, as last set,
	// runs out: a removal seen after it is the lease running out, not an
	// operator's act.
	expires time.Time
}

// bindTerm adds every VIP until deadline and starts the holding tasks. If
// an address cannot be added, those already added are removed and the
// error is returned (the caller steps down, or stops on EPERM).
func bindTerm(ctx context.Context, epoch uint64, deadline time.Time, vips []VIP, names []string, fence Fence, hold holdFunc, clock Clock, log *slog.Logger) (*term, error) {
	if fence != nil {
		// Answered only until the deadline, before the address is there.
		if err := fence.Extend(deadline); err != nil {
			return nil, fmt.Errorf("binding the VIPs: %w", err)
		}
	}
	for i, v := range vips {
		if err := v.Add(deadline); err != nil {
			// A failed removal is logged; the drop that follows removes
			// every VIP again and reports it.
			_ = removeVIPs(vips[:i], names, log)
			if fence != nil {
				_ = fence.Extend(time.Time{})
			}
			return nil, fmt.Errorf("binding %s: %w", names[i], err)
		}
	}
	t := &term{epoch: epoch, clock: clock, log: log, vips: vips, names: names, fence: fence}
	t.expires, _ = netvip.Expires(deadline, clock.Now(), fence != nil)
	t.deadline.Store(deadline.UnixNano())
	t.holding.Store(true)
	tctx, cancel := context.WithCancel(ctx)
	t.cancel = cancel
	t.g, tctx = errgroup.WithContext(tctx)
	for i := range vips {
		if hold != nil {
			if sent := hold(tctx, t.g, i, t.allowed); sent != nil {
				t.sent = append(t.sent, sent)
			}
		}
	}
	t.scheduleRenewal(deadline)
	return t, nil
}

// allowed reports whether the term may still announce: it holds and its
// lease has not ended (a holder that thaws after its lease announces
// nothing before the agent notices; announcements leave through packet
// sockets, which the fence does not see).
func (t *term) allowed() bool {
	return t.holding.Load() && t.clock.Now().UnixNano() < t.deadline.Load()
}

// wait waits for the term's tasks, which end after drop.
func (t *term) wait() error { return t.g.Wait() }

// announcements counts what this term's announcers sent.
func (t *term) announcements() uint64 {
	var n uint64
	for _, f := range t.sent {
		n += f()
	}
	return n
}

// renew extends the VIPs' kernel lifetimes to the new lease deadline. The
// kernel removes a VIP whose lifetime ends, so a daemon that is frozen
// (SIGSTOP, a hung disk, a VM pause) or killed without clean-up cannot keep
// it past its lease: the one case the daemon's own deadline cannot cover.
func (t *term) renew(deadline time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.holding.Load() {
		return
	}
	extended := true
	if t.fence != nil {
		// If this fails the fence ends the lease at the last deadline it
		// took, and announcements stop there too.
		if err := t.fence.Extend(deadline); err != nil {
			t.log.Warn("extending the lease in the kernel fence", "err", err)
			extended = false
		}
	}
	if extended {
		t.deadline.Store(deadline.UnixNano())
	}
	t.setLifetimes(deadline)
	t.scheduleRenewalLocked(deadline)
}

func (t *term) scheduleRenewal(deadline time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.scheduleRenewalLocked(deadline)
}

// scheduleRenewalLocked arranges one more renewal. Lifetimes are whole
// seconds, rounded down, so one set now may end up to a second before the
// deadline, and a Consul hiccup shorter than T_fence would cost the VIP.
// So one more renewal runs at the instant when the time left to the
// deadline is just over a whole second count; the next confirmation
// cancels it, and if none comes, it moves the kernel's expiry to within
// ExpirySlack + 50 ms of the deadline.
func (t *term) scheduleRenewalLocked(deadline time.Time) {
	if t.stopTimer != nil {
		t.stopTimer()
		t.stopTimer = nil
	}
	left := deadline.Sub(t.clock.Now()) - netvip.ExpirySlack
	if at := left%time.Second - 50*time.Millisecond; left > time.Second && at > 0 {
		t.stopTimer = t.clock.AfterFunc(at, func() {
			t.mu.Lock()
			defer t.mu.Unlock()
			if t.holding.Load() {
				t.setLifetimes(deadline)
			}
		})
	}
}

// setLifetimes sets the VIPs' kernel lifetimes for a lease ending at
// deadline; called with mu held.
func (t *term) setLifetimes(deadline time.Time) {
	now := t.clock.Now()
	set := false
	for i, v := range t.vips {
		if err := v.Add(deadline); err != nil {
			if errors.Is(err, netvip.ErrLeaseTooShort) {
				// The lifetime set before ends earlier still.
				t.log.Debug("not extending the VIP's lifetime", "vip", t.names[i], "err", err)
				continue
			}
			// If renewals keep failing the kernel removes the VIP and
			// the watcher steps down.
			t.log.Warn("extending the VIP's lifetime", "vip", t.names[i], "err", err)
			continue
		}
		set = true
	}
	if exp, err := netvip.Expires(deadline, now, t.fence != nil); set && err == nil {
		t.expires = exp
	}
}

// leaseRanOut reports whether the kernel's lifetime for the VIPs has ended
// by now, so that their removal is the lease doing its job.
func (t *term) leaseRanOut() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.expires.IsZero() && !t.clock.Now().Before(t.expires)
}

// drop removes the VIPs, first and fast, then ends the holding tasks
// (without waiting for them: the agent does). An error says a VIP may
// still be there.
func (t *term) drop() error {
	t.holding.Store(false) // announcers stop before the VIP goes
	// A renewal in progress finishes before the VIPs go; later ones see
	// holding false.
	t.mu.Lock()
	if t.stopTimer != nil {
		t.stopTimer()
		t.stopTimer = nil
	}
	t.mu.Unlock()
	var errs []error
	if t.fence != nil {
		// Fenced at once, before the addresses go (and if one cannot).
		if err := t.fence.Extend(time.Time{}); err != nil {
			t.log.Error("fencing the VIPs", "err", err)
			errs = append(errs, err)
		}
	}
	errs = append(errs, removeVIPs(t.vips, t.names, t.log))
	t.cancel()
	return errors.Join(errs...)
}

// removeVIPs removes every VIP (removing an absent one succeeds) and
// returns every failure: one may still be on the host.
func removeVIPs(vips []VIP, names []string, log *slog.Logger) error {
	var errs []error
	for i, v := range vips {
		if err := v.Remove(); err != nil {
			log.Error("removing the VIP", "vip", names[i], "err", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
