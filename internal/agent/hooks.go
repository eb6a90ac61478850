package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"driftgate/internal/config"
)

// transitionEvent is what hooks are told.
type transitionEvent struct {
	From, To Role
	Reason   string
	Epoch    uint64
	Node     string
	VIPs     []string
}

// hookRunner runs hooks in order for each transition, on its own goroutine:
// a slow or failing hook never delays the role loop. If transitions come
// faster than hooks finish, the oldest queued ones are dropped and counted.
type hookRunner struct {
	hooks   atomic.Pointer[[]config.Hook] // replaced whole by a reload
	log     *slog.Logger
	queue   chan transitionEvent
	failed  atomic.Uint64
	ran     atomic.Uint64
	dropped atomic.Uint64
}

func newHookRunner(hooks []config.Hook, log *slog.Logger) *hookRunner {
	h := &hookRunner{log: log.With("component", "hooks"), queue: make(chan transitionEvent, 64)}
	h.set(hooks)
	return h
}

// set replaces the hooks (a reload); transitions queued already run them.
func (h *hookRunner) set(hooks []config.Hook) {
	hs := slices.Clone(hooks)
	h.hooks.Store(&hs)
}

// enqueue never blocks.
func (h *hookRunner) enqueue(e transitionEvent) {
	if len(*h.hooks.Load()) == 0 {
		return
	}
	select {
	case h.queue <- e:
	default:
		h.dropped.Add(1)
		h.log.Warn("hook queue full; transition not passed to hooks", "to", e.To.String())
	}
}

// stopHookBudget bounds how long the hooks of the transitions queued at a
// stop may run in all (each within its own timeout); the unit's
// TimeoutStopSec leaves room for it.
const stopHookBudget = 15 * time.Second

// Run runs queued hooks until ctx is cancelled; then it runs those still
// queued — the stop's own transitions, which a hook that reacts to losing
// the VIP exists for — each to completion within its timeout and all
// within stopHookBudget, and returns nil. A hook running when ctx ends is
// not killed for it either.
func (h *hookRunner) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			h.drain(time.Now().Add(stopHookBudget))
			return nil
		case e := <-h.queue:
			for _, hk := range *h.hooks.Load() {
				h.run(context.Background(), hk, e)
			}
		}
	}
}

// drain runs the queued transitions' hooks until the queue is empty or the
// deadline passes; what is left is dropped and counted.
func (h *hookRunner) drain(deadline time.Time) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	for {
		select {
		case e := <-h.queue:
			for _, hk := range *h.hooks.Load() {
				if ctx.Err() != nil {
					h.dropped.Add(1)
					h.log.Warn("stopping: no time left for a hook", "hook", hk.Name, "role", e.To.String())
					continue
				}
				h.run(ctx, hk, e)
			}
		default:
			return
		}
	}
}

func (h *hookRunner) run(ctx context.Context, hk config.Hook, e transitionEvent) {
	ctx, cancel := context.WithTimeout(ctx, hk.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, hk.Command[0], hk.Command[1:]...)
	// On timeout kill the hook's whole process group: a shell script's
	// children would otherwise keep its output open and the runner waiting.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	cmd.Env = append(os.Environ(),
		"DRIFTGATE_ROLE="+e.To.String(),
		"DRIFTGATE_PREVIOUS_ROLE="+e.From.String(),
		"DRIFTGATE_REASON="+e.Reason,
		fmt.Sprintf("DRIFTGATE_EPOCH=%d", e.Epoch),
		"DRIFTGATE_NODE="+e.Node,
		"DRIFTGATE_VIPS="+strings.Join(e.VIPs, " "),
	)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	h.ran.Add(1)
	if err != nil {
		h.failed.Add(1)
		h.log.Warn("hook failed", "hook", hk.Name, "role", e.To.String(), "err", err, "took", time.Since(start).Round(time.Millisecond), "output", strings.TrimSpace(string(out)))
		return
	}
	h.log.Debug("hook ran", "hook", hk.Name, "role", e.To.String(), "took", time.Since(start).Round(time.Millisecond))
}
