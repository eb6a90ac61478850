package agent

// The simulated tier: the role loop driven through event sequences with
// fakes for the election, the VIPs, the relay and the registration, and a
// fake clock, so that a lease runs in microseconds and every assertion is
// on what the agent did, not on timing. The real tier is e2e/ (network
// namespaces, a Consul cluster, the kernel's address lifetimes).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"driftgate/consul"
	"driftgate/internal/config"
	"driftgate/internal/testkit"
	"driftgate/netvip"
)

// fakeClock runs timers when the test advances it, on the test's goroutine.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at            time.Time
	f             func()
	stopped, done bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if t.stopped || t.done {
			return false
		}
		t.stopped = true
		return true
	}
}

// Advance moves the clock by d, running each timer that falls due at its
// own instant, in order.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	target := c.now.Add(d)
	for {
		var next *fakeTimer
		for _, t := range c.timers {
			if !t.stopped && !t.done && !t.at.After(target) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			break
		}
		next.done = true
		c.now = next.at
		c.mu.Unlock()
		next.f()
		c.mu.Lock()
	}
	c.now = target
	c.mu.Unlock()
}

// fakeVIP records what the agent did to one address.
type fakeVIP struct {
	clock *fakeClock
	mu    sync.Mutex
	ops   []string // "add until +2.7s at +0s", "remove at +1s"
	on    bool
	start time.Time

	addErr, removeErr error
}

func (v *fakeVIP) rel(t time.Time) string { return t.Sub(v.start).String() }

func (v *fakeVIP) Add(until time.Time) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.clock.Now()
	if v.addErr != nil {
		v.ops = append(v.ops, "add failed at +"+v.rel(now))
		return v.addErr
	}
	v.on = true
	v.ops = append(v.ops, fmt.Sprintf("add until +%s at +%s", v.rel(until), v.rel(now)))
	return nil
}

func (v *fakeVIP) Remove() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.removeErr != nil {
		v.ops = append(v.ops, "remove failed")
		return v.removeErr
	}
	v.on = false
	v.ops = append(v.ops, "remove at +"+v.rel(v.clock.Now()))
	return nil
}

func (v *fakeVIP) Present() (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.on, nil
}

func (v *fakeVIP) history() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.ops)
}

// fakeElection holds one term at a time as the test says; StepDown of the
// held term emits MustDrop (as the real election does before answering)
// and of any other epoch answers ErrNotHolding.
type fakeElection struct {
	mu        sync.Mutex
	held      uint64
	stepDowns []uint64
	emit      func(consul.Event) error
}

func (e *fakeElection) Run(ctx context.Context, emit func(consul.Event) error) error {
	<-ctx.Done()
	return nil
}

func (e *fakeElection) StepDown(_ context.Context, epoch uint64, _ time.Duration) error {
	e.mu.Lock()
	e.stepDowns = append(e.stepDowns, epoch)
	held := e.held
	if epoch == held {
		e.held = 0
	}
	e.mu.Unlock()
	if epoch != held {
		return consul.ErrNotHolding
	}
	return e.emit(consul.Event{Kind: consul.MustDrop, Epoch: epoch, Reason: "step-down"})
}

func (e *fakeElection) Snapshot() consul.Snapshot { return consul.Snapshot{} }

func (e *fakeElection) steppedDown() []uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.stepDowns)
}

// fakeRelay records forwarding and the epoch.
type fakeRelay struct {
	mu         sync.Mutex
	epoch      uint64
	forwarding bool
	deadline   time.Time
}

func (r *fakeRelay) SetEpoch(e uint64)       { r.mu.Lock(); r.epoch = e; r.mu.Unlock() }
func (r *fakeRelay) SetDeadline(t time.Time) { r.mu.Lock(); r.deadline = t; r.mu.Unlock() }
func (r *fakeRelay) SetForwarding(on bool) {
	r.mu.Lock()
	r.forwarding = on
	r.mu.Unlock()
}
func (r *fakeRelay) state() (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.epoch, r.forwarding
}

// notes records sd_notify STATUS lines: the role changes, in order.
type notes struct {
	mu    sync.Mutex
	lines []string
}

func (n *notes) Notify(s string) {
	if rest, ok := strings.CutPrefix(s, "STATUS="); ok {
		n.mu.Lock()
		n.lines = append(n.lines, rest)
		n.mu.Unlock()
	}
}

func (n *notes) roles() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, l := range n.lines {
		out = append(out, strings.SplitN(l, " ", 2)[0])
	}
	return out
}

// sim is an agent wired to fakes, with its step-down loop and the terms'
// tasks in a task tree of its own.
type sim struct {
	t     *testing.T
	a     *Agent
	clock *fakeClock
	vip   *fakeVIP
	el    *fakeElection
	relay *fakeRelay
	notes *notes
	holds sync.WaitGroup // holding tasks running
	held  int            // holding tasks started
}

func newSim(t *testing.T) *sim {
	t.Helper()
	clock := newFakeClock()
	s := &sim{t: t, clock: clock, vip: &fakeVIP{clock: clock, start: clock.Now()}, el: &fakeElection{}, relay: &fakeRelay{}, notes: &notes{}}
	cfg := &config.Config{Node: "n1", VIPs: []config.VIP{{VIP: netvip.VIP{Prefix: netip.MustParsePrefix("198.18.0.100/24"), Iface: "eth0"}}},
		Election: config.Election{StepDownHoldOff: time.Second}}
	a := newAgent(cfg, slog.New(slog.DiscardHandler), s.notes, clock)
	a.vips, a.fwd, a.el = []VIP{s.vip}, s.relay, s.el
	s.el.emit = a.onElection
	a.hold = func(ctx context.Context, g *errgroup.Group, i int, allowed func() bool) func() uint64 {
		s.held++
		s.holds.Add(1)
		g.Go(func() error {
			defer s.holds.Done()
			<-ctx.Done()
			return nil
		})
		return func() uint64 { return 0 }
	}
	a.regs = newRegistrar(nopRegistry{}, a.log)
	ctx, cancel := context.WithCancel(context.Background())
	a.tasks, a.tasksCtx = errgroup.WithContext(ctx)
	s.a = a
	t.Cleanup(func() {
		cancel()
		if err := a.tasks.Wait(); err != nil {
			t.Errorf("task tree: %v", err)
		}
		if _, _, illegal := a.roles.counts(); illegal != 0 {
			t.Errorf("%d illegal role changes; roles: %v", illegal, s.notes.roles())
		}
	})
	return s
}

// runStepDowns starts the step-down loop (tests that race it start it late).
func (s *sim) runStepDowns() { s.a.tasks.Go(func() error { return s.a.stepDownLoop(s.a.tasksCtx) }) }

// emit hands the agent an election event as the election's goroutine does.
func (s *sim) emit(kind consul.EventKind, epoch uint64, deadlineIn time.Duration, reason string) error {
	s.t.Helper()
	e := consul.Event{Kind: kind, Epoch: epoch, Reason: reason, Time: s.clock.Now()}
	if deadlineIn > 0 {
		e.Deadline = s.clock.Now().Add(deadlineIn)
	}
	switch kind {
	case consul.Acquired:
		s.el.mu.Lock()
		s.el.held = epoch
		s.el.mu.Unlock()
	case consul.MustDrop, consul.Lost:
		s.el.mu.Lock()
		s.el.held = 0
		s.el.mu.Unlock()
	}
	return s.a.onElection(e)
}

// waitFor waits for what the step-down loop, on a goroutine of its own,
// does.
func (s *sim) waitFor(what string, cond func() bool) {
	s.t.Helper()
	if _, ok := testkit.Poll(5*time.Second, cond); !ok {
		s.t.Fatalf("%s: not after 5s; roles %v, VIP %v, step-downs %v", what, s.notes.roles(), s.vip.history(), s.el.steppedDown())
	}
}

func (s *sim) role() Role { r, _, _ := s.a.Role(); return r }

func (s *sim) wantRoles(want ...string) {
	s.t.Helper()
	if d := cmp.Diff(want, s.notes.roles()); d != "" {
		s.t.Fatalf("role changes (-want +got):\n%s", d)
	}
}

func (s *sim) wantVIP(want ...string) {
	s.t.Helper()
	if d := cmp.Diff(want, s.vip.history()); d != "" {
		s.t.Fatalf("VIP operations (-want +got):\n%s", d)
	}
}

type nopRegistry struct{}

func (nopRegistry) SetRole(context.Context, string, bool) error { return nil }
func (nopRegistry) SetLink(context.Context, bool, string) error { return nil }
func (nopRegistry) Restore(context.Context) error               { return nil }
func (nopRegistry) Reconnected() <-chan struct{}                { return nil }

// A whole term: acquired, bound, renewed twice, lost. The VIP's kernel
// lifetime follows every renewal, forwarding is on exactly while bound,
// the holding tasks end with the term, the registration follows the role.
func TestSimTerm(t *testing.T) {
	s := newSim(t)
	s.emit(consul.Acquired, 7, 0, "")
	if ep, fwd := s.relay.state(); ep != 7 || fwd {
		t.Fatalf("after Acquired: relay epoch %d forwarding %v, want 7 and off", ep, fwd)
	}
	s.emit(consul.Bind, 7, 3*time.Second, "")
	if _, fwd := s.relay.state(); !fwd || s.held != 1 {
		t.Fatalf("after Bind: forwarding %v, holding tasks started %d", fwd, s.held)
	}
	if w := s.a.regs.wanted(); w.role != "primary" || !w.primary {
		t.Fatalf("registration wanted %+v, want primary with the tag", w)
	}
	s.clock.Advance(500 * time.Millisecond)
	s.emit(consul.Renewed, 7, 3*time.Second, "")
	s.clock.Advance(500 * time.Millisecond)
	s.emit(consul.Renewed, 6, 9*time.Second, "") // another term's: ignored
	s.emit(consul.Renewed, 7, 3*time.Second, "")
	// The relay stops by itself at the lease deadline, moved by each
	// renewal (a holder frozen past it must not relay on waking).
	s.relay.mu.Lock()
	dl := s.relay.deadline
	s.relay.mu.Unlock()
	if want := s.clock.Now().Add(3 * time.Second); !dl.Equal(want) {
		t.Fatalf("relay deadline %v, want the last renewal's %v", dl, want)
	}
	if err := s.emit(consul.MustDrop, 7, 0, "lock lost"); err != nil {
		t.Fatalf("MustDrop: %v", err)
	}
	s.holds.Wait() // the holding tasks end with the term
	if _, fwd := s.relay.state(); fwd {
		t.Fatal("forwarding after the drop")
	}
	if w := s.a.regs.wanted(); w.role != "standby" || w.primary {
		t.Fatalf("registration wanted %+v after the drop, want standby without the tag", w)
	}
	s.wantRoles("candidate", "primary", "fenced", "standby")
	s.wantVIP("add until +3s at +0s", "add until +3.5s at +500ms", "add until +4s at +1s", "remove at +1s")
	tr, reasons, _ := s.a.roles.counts()
	if tr["primary>fenced"] != 1 || reasons["lock lost"] != 1 {
		t.Fatalf("counts: transitions %v reasons %v", tr, reasons)
	}
}

// Lost before Bind: nothing was bound, so nothing is removed.
func TestSimLostBeforeBind(t *testing.T) {
	s := newSim(t)
	s.emit(consul.Acquired, 3, 0, "")
	s.emit(consul.Lost, 3, 0, "session invalidated")
	s.wantRoles("candidate", "standby")
	s.wantVIP()
}

// Lease expiry with no confirmation: the timed renewal moves the kernel's
// expiry to within ExpirySlack + 50 ms of the deadline (whole seconds
// rounded down would otherwise end it up to a second early); the
// election's MustDrop at the deadline removes it.
func TestSimLeaseExpiry(t *testing.T) {
	s := newSim(t)
	s.emit(consul.Acquired, 9, 0, "")
	s.emit(consul.Bind, 9, 2700*time.Millisecond, "")
	// 2.7s − 300ms slack = 2.4s: the renewal is due at 0.4s − 50ms.
	s.clock.Advance(349 * time.Millisecond)
	s.wantVIP("add until +2.7s at +0s")
	s.clock.Advance(time.Millisecond)
	s.wantVIP("add until +2.7s at +0s", "add until +2.7s at +350ms")
	s.clock.Advance(2350 * time.Millisecond) // the deadline
	s.emit(consul.MustDrop, 9, 0, "lease expired: no confirmation sent in the last 2.7s")
	s.clock.Advance(10 * time.Second) // no timer left behind
	s.wantVIP("add until +2.7s at +0s", "add until +2.7s at +350ms", "remove at +2.7s")
	s.wantRoles("candidate", "primary", "fenced", "standby")
}

// The kernel removing the VIP when the lifetime set for the lease runs out
// is the lease doing its job, not an operator's act: no step-down (which
// would cost the hold-off); the election's deadline ends the term. The
// same removal before that instant is someone else's.
func TestSimOwnLeaseRunsOut(t *testing.T) {
	s := newSim(t)
	removed := netvip.Event{Kind: netvip.VIPRemoved, Iface: "eth0", VIP: netip.MustParsePrefix("198.18.0.100/24")}
	s.emit(consul.Acquired, 9, 0, "")
	s.emit(consul.Bind, 9, 2700*time.Millisecond, "")
	// Lifetime 2 s at +0; the timed renewal at +350 ms sets 2 s again:
	// the kernel removes the VIP from +2.35 s on.
	s.clock.Advance(time.Second)
	s.a.onLink(removed)
	if req := <-s.a.stepDownCh; req.epoch != 9 || !strings.Contains(req.reason, "by someone else") {
		t.Fatalf("a removal before the lifetime ran out: step-down %+v, want epoch 9, by someone else", req)
	}
	s.clock.Advance(1350 * time.Millisecond) // +2.35 s
	s.a.onLink(removed)
	if n := len(s.a.stepDownCh); n != 0 {
		t.Fatalf("the lease running out asked for %d step-downs, want none", n)
	}
	s.clock.Advance(350 * time.Millisecond) // the deadline
	s.emit(consul.MustDrop, 9, 0, "lease expired: no confirmation sent in the last 2.7s")
	s.wantRoles("candidate", "primary", "fenced", "standby")
}

// Link down on the primary: the link check goes critical and the term the
// event was about is ended; carrier back passes the check again.
func TestSimLinkDown(t *testing.T) {
	s := newSim(t)
	s.runStepDowns()
	s.emit(consul.Acquired, 4, 0, "")
	s.emit(consul.Bind, 4, 3*time.Second, "")
	s.a.onLink(netvip.Event{Kind: netvip.CarrierLost, Iface: "eth0"})
	if w := s.a.regs.wanted(); w.linkUp {
		t.Fatal("link check still wanted passing after carrier loss")
	}
	s.waitFor("the step-down", func() bool { return s.role() == RoleStandby })
	if got := s.el.steppedDown(); !slices.Equal(got, []uint64{4}) {
		t.Fatalf("step-downs %v, want [4]", got)
	}
	s.a.onLink(netvip.Event{Kind: netvip.CarrierGained, Iface: "eth0"})
	if w := s.a.regs.wanted(); !w.linkUp {
		t.Fatal("link check not wanted passing after carrier came back")
	}
	s.wantRoles("candidate", "primary", "fenced", "standby")
	s.wantVIP("add until +3s at +0s", "remove at +0s")
}

// The VIP removed by someone else ends the term; the removal the agent's
// own drop causes (the watcher reports it after the drop) does not ask for
// another step-down.
func TestSimVIPRemoved(t *testing.T) {
	s := newSim(t)
	s.emit(consul.Acquired, 5, 0, "")
	s.emit(consul.Bind, 5, 3*time.Second, "")
	removed := netvip.Event{Kind: netvip.VIPRemoved, Iface: "eth0", VIP: netip.MustParsePrefix("198.18.0.100/24")}
	s.a.onLink(removed)
	// The step-down loop is not running: the request waits in its queue.
	if req := <-s.a.stepDownCh; req.epoch != 5 || !strings.Contains(req.reason, "removed from eth0 by someone else") {
		t.Fatalf("step-down request %+v, want epoch 5, removed by someone else", req)
	}
	s.emit(consul.MustDrop, 5, 0, "step-down")
	s.a.onLink(removed) // the echo of our own removal
	s.emit(consul.Acquired, 6, 0, "")
	s.emit(consul.Bind, 6, 3*time.Second, "")
	s.a.onLink(netvip.Event{Kind: netvip.VIPAdded, Iface: "eth0"})
	if n := len(s.a.stepDownCh); n != 0 {
		t.Fatalf("%d step-downs asked after our own removal and a new bind, want none", n)
	}
	if s.role() != RolePrimary {
		t.Fatalf("role %s, want primary in term 6", s.role())
	}
}

// A step-down asked for term 5 that waits while term 5 ends and term 6
// begins must not end term 6: requests carry their epoch.
func TestSimStaleStepDown(t *testing.T) {
	s := newSim(t)
	s.emit(consul.Acquired, 5, 0, "")
	s.emit(consul.Bind, 5, 3*time.Second, "")
	s.a.onLink(netvip.Event{Kind: netvip.CarrierLost, Iface: "eth0"}) // queued: the loop is not running
	s.emit(consul.MustDrop, 5, 0, "session invalidated")
	s.emit(consul.Acquired, 6, 0, "")
	s.emit(consul.Bind, 6, 3*time.Second, "")
	s.runStepDowns()
	s.waitFor("the queued request to be answered", func() bool { return len(s.el.steppedDown()) == 1 })
	if got := s.el.steppedDown(); got[0] != 5 {
		t.Fatalf("the request asked about epoch %d, want 5", got[0])
	}
	if on, _ := s.vip.Present(); !on || s.role() != RolePrimary {
		t.Fatalf("term 6 after a stale step-down: role %s, VIP present %v", s.role(), on)
	}
	s.wantRoles("candidate", "primary", "fenced", "standby", "candidate", "primary")
}

// A bind that fails steps down; one that fails for want of the capability
// stops the agent instead (it would fail in every term).
func TestSimBindFails(t *testing.T) {
	t.Run("retryable", func(t *testing.T) {
		s := newSim(t)
		s.runStepDowns()
		s.vip.addErr = errors.New("adding VIP 198.18.0.100/24 on eth0: no such interface")
		s.emit(consul.Acquired, 2, 0, "")
		s.emit(consul.Bind, 2, 3*time.Second, "")
		s.waitFor("the step-down", func() bool { return s.role() == RoleStandby })
		if _, fwd := s.relay.state(); fwd || s.held != 0 {
			t.Fatalf("after a failed bind: forwarding %v, holding tasks %d", fwd, s.held)
		}
		s.wantRoles("candidate", "fenced", "standby")
		// The drop removes the VIP again although the bind did not add
		// it: a partial bind's clean-up may have failed.
		s.wantVIP("add failed at +0s", "remove at +0s")
		select {
		case err := <-s.a.fatal:
			t.Fatalf("a retryable bind failure stopped the agent: %v", err)
		default:
		}
	})
	t.Run("EPERM", func(t *testing.T) {
		s := newSim(t)
		s.runStepDowns()
		s.vip.addErr = fmt.Errorf("adding VIP 198.18.0.100/24 on eth0: %w (needs CAP_NET_ADMIN)", unix.EPERM)
		s.emit(consul.Acquired, 2, 0, "")
		s.emit(consul.Bind, 2, 3*time.Second, "")
		select {
		case err := <-s.a.fatal:
			if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
				t.Fatalf("fatal error %v, want EPERM naming CAP_NET_ADMIN", err)
			}
		default:
			t.Fatal("EPERM on bind did not stop the agent")
		}
		if got := s.el.steppedDown(); len(got) != 0 {
			t.Fatalf("EPERM asked for step-downs %v; the shutdown drops instead", got)
		}
	})
}

// A bind whose clean-up failed leaves a VIP that the drop must remove,
// or report: the election must not call the term's end clean.
func TestSimPartialBindCleanupFails(t *testing.T) {
	s := newSim(t)
	s.runStepDowns()
	second := &fakeVIP{clock: s.clock, start: s.clock.Now(), addErr: errors.New("no such interface")}
	s.a.vips = append(s.a.vips, second)
	s.a.vipNames = append(s.a.vipNames, "198.18.0.101/24 on eth1")
	s.vip.removeErr = errors.New("device busy")
	s.emit(consul.Acquired, 2, 0, "")
	s.emit(consul.Bind, 2, 3*time.Second, "")
	// The step-down's MustDrop reports that the first VIP is still there.
	s.waitFor("the step-down", func() bool { return len(s.el.steppedDown()) == 1 })
	s.waitFor("fenced", func() bool { return s.role() == RoleFenced })
	if on, _ := s.vip.Present(); !on {
		t.Fatal("the fake lost its VIP")
	}
	s.wantVIP("add until +3s at +0s", "remove failed", "remove failed")
}

// A VIP that cannot be removed leaves the node fenced and tells the
// election (which then lets no successor hurry); a new term may begin.
func TestSimDropFails(t *testing.T) {
	s := newSim(t)
	s.emit(consul.Acquired, 8, 0, "")
	s.emit(consul.Bind, 8, 3*time.Second, "")
	s.vip.removeErr = errors.New("removing VIP 198.18.0.100/24 on eth0: device busy")
	if err := s.emit(consul.MustDrop, 8, 0, "lock lost"); err == nil {
		t.Fatal("MustDrop with a failed removal returned nil")
	}
	if s.role() != RoleFenced {
		t.Fatalf("role %s after a failed drop, want fenced", s.role())
	}
	s.vip.removeErr = nil
	s.emit(consul.Acquired, 11, 0, "")
	s.wantRoles("candidate", "primary", "fenced", "candidate")
}

// TestLegal walks the whole role table: every change it lists is legal,
// every other pair is not, and setting an illegal one is counted.
func TestLegal(t *testing.T) {
	all := append([]Role{RoleInvalid}, Roles()...)
	var got []string
	for _, from := range all {
		for _, to := range all {
			if Legal(from, to) {
				got = append(got, from.String()+">"+to.String())
			}
		}
	}
	want := []string{
		"standby>candidate", "standby>stopping",
		"candidate>standby", "candidate>primary", "candidate>fenced", "candidate>stopping",
		"primary>fenced", "primary>stopping",
		"fenced>standby", "fenced>candidate", "fenced>stopping",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("legal role changes (-want +got):\n%s", d)
	}
	rs := newRoleState(time.Now())
	rs.set(RolePrimary, "skipped candidate", 1, time.Now(), slog.New(slog.DiscardHandler))
	if _, _, illegal := rs.counts(); illegal != 1 {
		t.Fatalf("illegal changes counted %d, want 1", illegal)
	}
	if r, _, _ := rs.get(); r != RolePrimary {
		t.Fatalf("role %s after an illegal change, want it made anyway (primary)", r)
	}
}
