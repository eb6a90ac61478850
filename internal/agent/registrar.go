package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// registry is this node's Consul registration as the registrar changes it
// (*consul.Registration).
type registry interface {
	SetRole(ctx context.Context, role string, primary bool) error
	SetLink(ctx context.Context, up bool, note string) error
	// Restore registers the service and checks again.
	Restore(ctx context.Context) error
	// Reconnected fires when the local agent answers again after failures
	// (it may have restarted).
	Reconnected() <-chan struct{}
}

// regWant is the registration the agent wants Consul to have.
type regWant struct {
	role     string
	primary  bool
	linkUp   bool
	linkNote string
}

// registrar applies the wanted registration on one goroutine: latest state
// wins, in order, and nothing on the role loop waits for Consul.
type registrar struct {
	reg        registry
	log        *slog.Logger
	retryEvery time.Duration
	kick       chan struct{}

	mu   sync.Mutex
	want regWant
}

func newRegistrar(reg registry, log *slog.Logger) *registrar {
	r := &registrar{reg: reg, log: log, retryEvery: time.Second, kick: make(chan struct{}, 1),
		want: regWant{role: RoleStandby.String(), linkUp: true}}
	r.kick <- struct{}{} // write everything once at start (see Run)
	return r
}

// set records a wish and wakes the registrar; it never blocks.
func (r *registrar) set(f func(*regWant)) {
	r.mu.Lock()
	f(&r.want)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// wanted returns the current wish.
func (r *registrar) wanted() regWant {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.want
}

// Run applies wishes until ctx ends, then returns nil. A failed update is
// retried after retryEvery with whatever is wanted by then. After a failure
// the state in Consul is unknown (a request that timed out may have been
// applied), so it is written again even if it looks unchanged. So is it at
// start: a Consul agent that restarted on its data directory restores the
// checks of an earlier run with their last status (a link check critical
// since a crash), and re-registering keeps that status.
func (r *registrar) Run(ctx context.Context) error {
	var applied regWant
	roleKnown, linkKnown, restore := false, false, false
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		case <-retry:
		case <-r.reg.Reconnected():
			// The local agent may have restarted: it restores the
			// checks it persisted, but the link check as registered,
			// not as last set. Set everything again.
			restore = true
		}
		retry = nil
		if restore {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := r.reg.Restore(rctx); err != nil {
				r.log.Warn("restoring the registration", "err", err)
				retry = time.After(r.retryEvery)
			} else {
				restore, roleKnown, linkKnown = false, false, false
			}
			cancel()
		}
		w := r.wanted()
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if !roleKnown || w.role != applied.role || w.primary != applied.primary {
			if err := r.reg.SetRole(rctx, w.role, w.primary); err != nil {
				r.log.Warn("updating the service registration", "role", w.role, "err", err)
				roleKnown, retry = false, time.After(r.retryEvery)
			} else {
				roleKnown, applied.role, applied.primary = true, w.role, w.primary
			}
		}
		if !linkKnown || w.linkUp != applied.linkUp {
			if err := r.reg.SetLink(rctx, w.linkUp, w.linkNote); err != nil {
				r.log.Warn("updating the link check", "err", err)
				linkKnown, retry = false, time.After(r.retryEvery)
			} else {
				linkKnown, applied.linkUp = true, w.linkUp
			}
		}
		cancel()
	}
}
