package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"driftgate/consul"
	"driftgate/gateway"
	"driftgate/internal/config"
	"driftgate/internal/retry"
	"driftgate/netvip"
)

// Notifier tells the service manager about the daemon (sd_notify);
// implementations ignore calls when not under systemd.
type Notifier interface {
	Notify(state string)
}

type nopNotifier struct{}

func (nopNotifier) Notify(string) {}

// Election is the Consul election as the role loop uses it
// (*consul.Election).
type Election interface {
	// Run takes part until ctx ends, reporting through emit.
	Run(ctx context.Context, emit func(consul.Event) error) error
	// StepDown ends the term with epoch; consul.ErrNotHolding if it has
	// ended already.
	StepDown(ctx context.Context, epoch uint64, holdOff time.Duration) error
	Snapshot() consul.Snapshot
}

// Forwarder is the relay as the role loop drives it (*gateway.Relay).
type Forwarder interface {
	SetEpoch(epoch uint64)
	SetForwarding(on bool)
	// SetDeadline ends forwarding by itself at the lease deadline: a
	// holder frozen past it relays nothing on waking.
	SetDeadline(t time.Time)
}

// Agent is the driftgate daemon on one server: it takes part in the
// election, holds the VIP and relays while primary, and receives the feed
// always. Its role changes in one place, transition.
type Agent struct {
	cfg    *config.Config
	log    *slog.Logger
	notify Notifier
	clock  Clock
	client *api.Client

	relay    *gateway.Relay
	egress   *gateway.Egress // nil: no egress ports
	fwd      Forwarder       // the relay and the egress, as the role loop sees them
	recv     *gateway.Receiver
	vips     []VIP
	vipNames []string
	fence    Fence // nil: election.kernel_fence lifetime
	hold     holdFunc
	el       Election
	reg      *consul.Registration
	regs     *registrar
	hooks    *hookRunner
	roles    *roleState
	unlock   func() // releases the instance lock

	// tasks is the task tree; terms add their waits to it, and their
	// contexts are children of tasksCtx.
	tasks      *errgroup.Group
	tasksCtx   context.Context
	stepDownCh chan stepDownReq
	fatal      chan error // ends Run with the error (EPERM)

	mu         sync.Mutex
	term       *term  // the holding term, nil when not holding
	annBefore  uint64 // announcements of earlier terms
	acquiredAt time.Time
	reloadMu   sync.Mutex // one reload at a time
	// live is the configuration as reloads left it (nil: none yet, the one
	// the agent started with): what the next reload compares with.
	live *config.Config

	conflicts  atomic.Uint64
	lastResync atomic.Int64 // ns: when checkRefused last registered a check again
	healthy    atomic.Bool
	// takeover observes how long a new holder waited from acquiring the
	// lock to binding the VIP (T_wait, or ~0 after a clean release).
	takeover prometheus.Histogram
}

// newAgent returns an agent with the parts every tier has; New adds the
// system's, a simulated test its fakes.
func newAgent(cfg *config.Config, log *slog.Logger, n Notifier, clock Clock) *Agent {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if n == nil {
		n = nopNotifier{}
	}
	a := &Agent{cfg: cfg, log: log.With("component", "agent"), notify: n, clock: clock,
		roles: newRoleState(clock.Now()), stepDownCh: make(chan stepDownReq, 8), fatal: make(chan error, 1),
		takeover: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "driftgate_takeover_seconds",
			Help:    "Time from acquiring the lock to binding the VIP.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 20}})}
	for _, v := range cfg.VIPs {
		a.vipNames = append(a.vipNames, v.String())
	}
	a.hooks = newHookRunner(cfg.Hooks, log)
	return a
}

// New checks what can be checked without touching the system and returns
// an agent; Run does the work.
func New(cfg *config.Config, log *slog.Logger, n Notifier) (*Agent, error) {
	a := newAgent(cfg, log, n, systemClock{})
	var err error
	if a.client, err = consul.NewClient(cfg.Consul.ClientConfig); err != nil {
		return nil, err
	}
	rc := cfg.Relay.RelayConfig
	if u := a.remoteReceivers(rc.Unicast); len(u) > 0 || rc.Group.IsValid() || rc.DynamicUnicast {
		rc.Unicast = u // else this node alone: keep it, the relay needs a destination
	}
	if cfg.Relay.KeyFile != "" {
		if rc.Key, rc.NextKey, err = gateway.LoadKeys(cfg.Relay.KeyFile); err != nil {
			return nil, fmt.Errorf("relay.key_file: %w", err)
		}
	}
	if a.relay, err = gateway.NewRelay(rc, a.log); err != nil {
		return nil, err
	}
	a.relay.SetForwarding(false)
	a.fwd = a.relay
	if cfg.Receive.Enabled {
		var key, next []byte
		if cfg.Receive.KeyFile != "" {
			if key, next, err = gateway.LoadKeys(cfg.Receive.KeyFile); err != nil {
				return nil, fmt.Errorf("receive.key_file: %w", err)
			}
		}
		d, err := cfg.Receive.DeliverURL.Open(gateway.OpenOptions{Queue: cfg.Receive.Queue, Log: a.log})
		if err != nil {
			return nil, fmt.Errorf("receive.deliver: %w", err)
		}
		rc := cfg.Receive.ReceiverConfig
		rc.Key, rc.NextKey, rc.Deliver = key, next, d
		// A relay may send from a VIP too: the VIPs are sources.
		rc.Sources = a.sources(rc.Sources)
		a.recv, err = gateway.NewReceiver(rc, a.log)
		if err != nil {
			d.Close()
			return nil, err
		}
		// As primary, the node's receiver takes the relay's frames in
		// process: no loopback copy, no second read on the host.
		a.relay.SetLocal(a.recv)
	}
	if cfg.Egress.Enabled {
		if a.egress, err = gateway.NewEgress(cfg.Egress.EgressConfig, a.log); err != nil {
			return nil, err
		}
		if cfg.Egress.Window > 0 {
			// The ids the primary sent reach every node in the feed.
			a.egress.SetPublish(a.relay.Publish)
			a.recv.SetRecords(a.egress.TakeRecord)
		}
		a.fwd = sendPath{a.relay, a.egress}
	}
	a.hold = a.holdTasks
	return a, nil
}

// sendPath is the relay and the egress, driven as one Forwarder. The
// egress starts after the relay and stops before it: its last batch's ids
// go out through the relay before the relay stops, so the next primary
// knows them.
type sendPath struct {
	relay  Forwarder
	egress Forwarder
}

func (p sendPath) SetEpoch(epoch uint64) { p.relay.SetEpoch(epoch); p.egress.SetEpoch(epoch) }

func (p sendPath) SetDeadline(t time.Time) { p.relay.SetDeadline(t); p.egress.SetDeadline(t) }

func (p sendPath) SetForwarding(on bool) {
	if on {
		p.relay.SetForwarding(true)
		p.egress.SetForwarding(true)
		return
	}
	p.egress.SetForwarding(false) // returns once nothing more leaves
	p.relay.SetForwarding(false)
}

// Lock takes the node's instance lock (see LockInstance); Run takes it if
// the caller did not. Callers that open other resources first (the metrics
// listener) take it before them, so a second agent fails with a clear error.
func (a *Agent) Lock() (release func(), err error) {
	unlock, err := LockInstance(a.cfg.Node)
	if err != nil {
		return nil, err
	}
	a.unlock = unlock
	return unlock, nil
}

// Role returns the current role, epoch and since when.
func (a *Agent) Role() (Role, uint64, time.Time) { return a.roles.get() }

// transition is the one place the role changes. It logs, counts, tells
// systemd and queues the hooks; none of that can block.
func (a *Agent) transition(to Role, reason string, epoch uint64) {
	from := a.roles.set(to, reason, epoch, a.clock.Now(), a.log)
	a.log.Info("role change", "from", from.String(), "to", to.String(), "reason", reason, "epoch", epoch)
	a.notify.Notify(fmt.Sprintf("STATUS=%s (epoch %d): %s", to, epoch, reason))
	vips := make([]string, len(a.cfg.VIPs))
	for i, v := range a.cfg.VIPs {
		vips[i] = v.Prefix.String()
	}
	a.hooks.enqueue(transitionEvent{From: from, To: to, Reason: reason, Epoch: epoch, Node: a.cfg.Node, VIPs: vips})
}

// Run starts the daemon and runs it until ctx is cancelled; then a primary
// steps down cleanly (drop the VIP, release the lock), the node
// deregisters, and Run returns nil. It returns an error when start-up
// fails (nothing is held then) or a task fails for good (EPERM).
func (a *Agent) Run(ctx context.Context) error {
	if a.unlock == nil {
		if _, err := a.Lock(); err != nil {
			return err
		}
	}
	defer a.unlock()
	// Start-up. A VIP left by a crashed run must go before anything else:
	// this node is not primary now. And a lock the dead run still holds
	// goes too, so the standby need not wait for the heartbeat check.
	res, err := Cleanup(ctx, a.cfg, a.client)
	if err != nil {
		return fmt.Errorf("start-up clean-up: %w", err)
	}
	for _, v := range res.Removed {
		a.log.Warn("removed a VIP left behind by an earlier run", "vip", v)
	}
	if res.Released {
		a.log.Warn("released the leader lock left by an earlier run", "clean", res.Clean)
	}
	if res.ReleaseErr != nil {
		a.log.Warn("checking for a lock left by an earlier run", "err", res.ReleaseErr)
	}
	var fence *netvip.Fence
	if a.cfg.Election.KernelFence == config.FenceNFTables {
		var addrs []netip.Addr
		for _, v := range a.cfg.VIPs {
			addrs = append(addrs, v.Prefix.Addr())
		}
		if fence, err = netvip.OpenFence(addrs); err != nil {
			return fmt.Errorf("election.kernel_fence %s: %w (kernel_fence: %s uses the VIP's address lifetime alone, whole seconds, and needs a profile that allows it)",
				config.FenceNFTables, err, config.FenceLifetime)
		}
		a.fence = fence
	}
	for _, v := range a.cfg.VIPs {
		m, err := netvip.New(v.VIP)
		if err != nil {
			return err
		}
		if fence != nil {
			m.SetFenced()
		}
		defer m.Close()
		a.vips = append(a.vips, m)
	}
	if fence != nil {
		defer a.closeFence(fence) // before the managers close: it asks them
	}
	if err := a.relay.Bind(ctx); err != nil {
		return err
	}
	if a.recv != nil {
		if err := a.recv.Bind(ctx); err != nil {
			return err
		}
	}
	if a.egress != nil {
		// Sent from the relay's socket on the VIP if it has one on the
		// source's port: replies to the service then reach the relay.
		if c := a.relay.ListenConn(a.cfg.Egress.Source); c != nil {
			a.egress.SetSourceConn(c)
		}
		if err := a.egress.Bind(ctx); err != nil {
			return err
		}
	}
	var watchers []*netvip.Watcher
	for _, v := range a.cfg.VIPs {
		w, err := netvip.Watch(v.VIP)
		if err != nil {
			return err
		}
		watchers = append(watchers, w)
	}
	// The data path runs before Consul answers: a node whose Consul is
	// away still receives (frames of an epoch Consul has not confirmed
	// wait for it, receive.confirm_epochs), and systemd is told it is up
	// as soon as it can receive — registering may take as long as Consul
	// is away, with no start time-out.
	tasksCtx, stopTasks := context.WithCancel(context.Background())
	defer stopTasks()
	g, gctx := errgroup.WithContext(tasksCtx)
	a.tasks, a.tasksCtx = g, gctx
	stopEarly := func(err error) error { // a stop or failure before the election runs
		stopTasks()
		if werr := g.Wait(); err == nil && werr != nil && !errors.Is(werr, context.Canceled) {
			err = werr
		}
		return err
	}
	g.Go(func() error { return a.relay.Run(gctx) })
	if a.recv != nil {
		g.Go(func() error { return a.recv.Run(gctx) })
	}
	g.Go(func() error { return a.hooks.Run(gctx) })
	if a.egress != nil {
		g.Go(func() error { return a.egress.Run(gctx) })
	}
	if a.recv != nil && a.cfg.Receive.ConfirmEpochs {
		// The receiver takes an epoch only once Consul shows it as a term
		// of the leader key.
		g.Go(func() error {
			return consul.WatchEpochs(gctx, a.client, a.cfg.Consul.LeaderKey(), a.cfg.Election.Timing.RequestTimeout, a.log, a.recv.StaleEpochs(), a.recv.ConfirmEpoch)
		})
	}
	a.healthy.Store(true) // alive (the watchdog), even while Consul is away
	a.notify.Notify("READY=1")
	a.notify.Notify("STATUS=standby: registering with Consul at " + a.cfg.Consul.Address)
	rctx, cancelReg := context.WithCancel(ctx)
	stopWatch := context.AfterFunc(gctx, cancelReg) // a task failed: stop waiting
	err = a.register(rctx)
	stopWatch()
	cancelReg()
	if err != nil {
		if rctx.Err() != nil {
			err = nil // stopped while waiting for Consul (nothing was held), or a task failed: g.Wait says
		}
		return stopEarly(err)
	}
	// The link check says what the carrier is now: it changes only on
	// events, and there may be none for a long time.
	up := true
	for _, w := range watchers {
		up = up && w.CarrierUp()
	}
	a.regs.set(func(w *regWant) { w.linkUp, w.linkNote = up, "at start" })
	timing := a.cfg.Election.Timing
	if a.el, err = consul.NewElection(a.client, consul.Config{Key: a.cfg.Consul.LeaderKey(), Node: a.cfg.Node, Timing: timing,
		ServiceChecks: a.reg.CheckIDs(), Priority: a.cfg.Election.Priority,
		// One more heartbeat interval after a failure: the local agent
		// syncs the passing status to the servers first.
		Ready:        func() bool { return a.reg.HeartbeatHealthy(2 * timing.HeartbeatInterval) },
		CheckRefused: a.checkRefused}, a.log); err != nil {
		return stopEarly(err)
	}

	// The election runs under its own context so that on shutdown it can
	// drop and release before the rest stops.
	elCtx, stopElection := context.WithCancel(context.Background())
	defer stopElection()
	elDone := make(chan struct{})
	g.Go(func() error {
		defer close(elDone)
		return a.el.Run(elCtx, a.onElection)
	})
	g.Go(func() error { return a.reg.RunHeartbeat(gctx, timing.HeartbeatInterval) })
	for _, w := range watchers {
		g.Go(func() error { return w.Run(gctx, a.onLink) })
	}
	g.Go(func() error { return a.stepDownLoop(gctx) })
	g.Go(func() error {
		select {
		case err := <-a.fatal:
			return err
		case <-gctx.Done():
			return nil
		}
	})
	// The registrar stops before deregistration, so nothing re-registers.
	regCtx, stopRegistrar := context.WithCancel(gctx)
	defer stopRegistrar()
	regDone := make(chan struct{})
	g.Go(func() error {
		defer close(regDone)
		return a.regs.Run(regCtx)
	})
	if a.cfg.Relay.DynamicUnicast || !a.cfg.Relay.Repair.Off || a.recv != nil {
		// The service's instances: the unicast receivers to fan out to,
		// the nodes frames and repair requests may come from, and the
		// other receivers, asked after a takeover and answered.
		g.Go(func() error {
			return consul.WatchReceivers(gctx, a.client, a.cfg.Service.Name, timing.RequestTimeout, a.log,
				func(in consul.Instances) error {
					a.relay.SetRepairPeers(in.Sources)
					if a.recv != nil {
						a.recv.SetSources(in.Sources)
						var peers []netip.AddrPort
						for node, ap := range in.Repair {
							if node != a.cfg.Node {
								peers = append(peers, ap)
							}
						}
						slices.SortFunc(peers, func(x, y netip.AddrPort) int { return x.Compare(y) })
						a.recv.SetPeers(peers)
					}
					if a.cfg.Relay.DynamicUnicast {
						return a.relay.SetUnicast(a.remoteReceivers(in.Receivers))
					}
					return nil
				})
		})
	}
	a.notify.Notify("STATUS=standby")

	// Shutdown, on ctx or on a task's failure.
	var cause error
	select {
	case <-ctx.Done():
	case <-gctx.Done():
		cause = context.Cause(gctx)
	}
	a.healthy.Store(false)
	a.notify.Notify("STOPPING=1")
	stopElection() // a primary drops (MustDrop) and releases cleanly
	<-elDone
	a.transition(RoleStopping, "shutdown", 0)
	stopRegistrar()
	<-regDone
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := a.reg.Deregister(dctx); err != nil {
		a.log.Warn("deregistering", "err", err)
	}
	cancel()
	stopTasks()
	err = g.Wait()
	if cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// register registers the node, retrying with the shared backoff: the local
// Consul agent may start after driftgate. A registration Consul refuses
// (consul.ErrRefused: an ACL or a bad request) is not retried.
func (a *Agent) register(ctx context.Context) error {
	port := 0
	if len(a.cfg.Relay.Listen) > 0 {
		port = int(a.cfg.Relay.Listen[0].Port())
	}
	sc := consul.ServiceConfig{Name: a.cfg.Service.Name, ID: a.cfg.Service.Name + "-" + a.cfg.Node, Node: a.cfg.Node, Port: port,
		Tags: a.cfg.Service.Tags, Checks: a.cfg.Checks, HeartbeatTTL: a.cfg.Election.Timing.HeartbeatTTL, LinkCheck: true}
	for _, v := range a.cfg.VIPs {
		sc.VIPs = append(sc.VIPs, v.Prefix)
	}
	if a.cfg.Receive.Enabled && a.cfg.Receive.Listen.IsValid() {
		// Where this node receives unicast frames, for relays that fan
		// out to the service's instances (relay.unicast_from_consul).
		sc.Receive = a.cfg.Receive.Listen
	}
	if a.recv != nil {
		sc.RepairPort = a.recv.RepairPort() // bound by now
	}
	sc.Sources = sourceAddrs(a.cfg.Relay.Iface)
	for n := 1; ; n++ {
		reg, err := consul.Register(ctx, a.client, sc, a.log)
		if err == nil {
			if a.recv != nil {
				reg.SetHeartbeatNote(func() string {
					st := a.recv.Stats()
					return fmt.Sprintf("delivered=%d repaired=%d unrecovered=%d", st.Delivered, st.Repaired, st.Unrecovered)
				})
			}
			a.reg = reg
			a.regs = newRegistrar(reg, a.log)
			return nil
		}
		if errors.Is(err, consul.ErrRefused) {
			return fmt.Errorf("registering with Consul at %s: %w", a.cfg.Consul.Address, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Consul away: wait for it as long as it takes (the receiver
		// runs meanwhile), saying so in the unit's status.
		wait := retry.Backoff(n)
		a.log.Warn("registering with Consul failed; retrying", "err", err, "attempt", n, "retry_in", wait)
		a.notify.Notify(fmt.Sprintf("STATUS=standby: waiting for Consul at %s (attempt %d): %v", a.cfg.Consul.Address, n, err))
		if !retry.Sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// fail ends Run with err; it never blocks.
func (a *Agent) fail(err error) {
	select {
	case a.fatal <- err:
	default:
	}
}

// onElection is the election's callback; it runs on the election's
// goroutine, and for MustDrop the VIP is gone when it returns nil.
func (a *Agent) onElection(e consul.Event) error {
	switch e.Kind {
	case consul.Acquired:
		a.mu.Lock()
		a.acquiredAt = a.clock.Now()
		a.mu.Unlock()
		a.fwd.SetEpoch(e.Epoch)
		if a.recv != nil {
			// Consul's answer to this node's own acquisition shows the
			// term: its own frames are taken at once.
			a.recv.ConfirmEpoch(e.Epoch)
		}
		a.transition(RoleCandidate, "acquired the lock", e.Epoch)
	case consul.Bind:
		a.bind(e.Epoch, e.Deadline)
	case consul.Renewed:
		if t := a.holding(); t != nil && t.epoch == e.Epoch {
			t.renew(e.Deadline)
			a.fwd.SetDeadline(e.Deadline)
		}
	case consul.MustDrop:
		err := a.drop()
		a.regs.set(func(w *regWant) { w.role, w.primary = RoleStandby.String(), false })
		a.transition(RoleFenced, e.Reason, e.Epoch)
		if err != nil {
			// Fenced it stays: the VIP may still be here.
			return err
		}
		a.transition(RoleStandby, "dropped the VIP", e.Epoch)
	case consul.Lost:
		a.transition(RoleStandby, e.Reason, e.Epoch)
	}
	return nil
}

// holding returns the holding term, or nil.
func (a *Agent) holding() *term {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.term
}

// isPermission tells a missing capability, which no retry mends.
func isPermission(err error) bool { return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) }

// bind takes the VIPs until the lease deadline, starts forwarding and
// announcing. If a VIP cannot be bound the node steps down, or, lacking
// the capability, stops: it would fail again in every term.
func (a *Agent) bind(epoch uint64, deadline time.Time) {
	t, err := bindTerm(a.tasksCtx, epoch, deadline, a.vips, a.vipNames, a.fence, a.hold, a.clock, a.log)
	if err != nil {
		if isPermission(err) {
			a.log.Error("cannot bind the VIP; stopping", "err", err)
			a.fail(err)
			return
		}
		a.log.Error("cannot bind the VIP; stepping down", "err", err)
		a.requestStepDown(epoch, "binding the VIP failed: "+err.Error())
		return
	}
	a.tasks.Go(t.wait)
	a.fwd.SetEpoch(epoch) // the same as on Acquired; set again in case of a missed event
	a.fwd.SetDeadline(deadline)
	a.fwd.SetForwarding(true)
	a.mu.Lock()
	a.term = t
	if !a.acquiredAt.IsZero() {
		a.takeover.Observe(a.clock.Now().Sub(a.acquiredAt).Seconds())
	}
	a.mu.Unlock()
	a.transition(RolePrimary, "won the election", epoch)
	a.regs.set(func(w *regWant) { w.role, w.primary = RolePrimary.String(), true })
}

// closeFence removes the kernel fence as the agent exits, unless a VIP may
// still be on the host: then it stays, fenced, for driftgate cleanup.
func (a *Agent) closeFence(f *netvip.Fence) {
	for i, v := range a.vips {
		if there, err := v.Present(); err != nil || there {
			a.log.Error("leaving the VIPs fenced: one may still be on the host", "vip", a.vipNames[i], "err", err)
			return
		}
	}
	if err := f.Close(); err != nil {
		a.log.Warn("removing the kernel fence", "err", err)
	}
}

// drop stops forwarding and ends the holding term, which removes the VIPs
// first and fast. An error says a VIP may still be there.
func (a *Agent) drop() error {
	a.fwd.SetForwarding(false)
	a.mu.Lock()
	t := a.term
	a.term = nil
	a.mu.Unlock()
	if t == nil {
		// The bind failed: it removed what it had added, but a removal
		// may have failed too. Removing an absent VIP succeeds, so make
		// sure before the election calls this term's end clean.
		return removeVIPs(a.vips, a.vipNames, a.log)
	}
	err := t.drop()
	a.mu.Lock()
	a.annBefore += t.announcements()
	a.mu.Unlock()
	return err
}

// holdTasks starts VIP i's announcer, conflict guard and probe in g.
func (a *Agent) holdTasks(ctx context.Context, g *errgroup.Group, i int, allowed func() bool) func() uint64 {
	v := a.cfg.VIPs[i]
	a.mu.Lock()
	if a.live != nil {
		v = a.live.VIPs[i] // a reload's announce settings, from this term on
	}
	a.mu.Unlock()
	ann, err := netvip.NewAnnouncer(v.VIP, v.Announce, allowed)
	if err != nil {
		a.log.Error("cannot announce the VIP", "vip", v.String(), "err", err)
		return nil
	}
	g.Go(func() error {
		defer ann.Close()
		if err := ann.Run(ctx); err != nil {
			a.log.Warn("announcing the VIP", "vip", v.String(), "err", err)
		}
		<-ctx.Done()
		return nil
	})
	if gd, err := netvip.NewGuard(v.VIP); err != nil {
		a.log.Warn("cannot watch for conflicting claims", "vip", v.String(), "err", err)
	} else {
		g.Go(func() error {
			if err := gd.Run(ctx, ann, func(c netvip.Claim) {
				a.conflicts.Add(1)
				a.log.Warn("another host claims the VIP; re-announcing", "claim", c.String())
			}); err != nil {
				a.log.Warn("watching for conflicting claims", "vip", v.String(), "err", err)
			}
			return nil
		})
	}
	if v.Probe {
		g.Go(func() error {
			// After binding, only a foreign host can answer.
			if c, err := netvip.Probe(ctx, v.VIP, 1, 200*time.Millisecond); err == nil && c != nil {
				a.conflicts.Add(1)
				a.log.Warn("probe: another host answers for the VIP", "claim", c.String())
			}
			return nil
		})
	}
	return ann.Sent
}

// onLink reacts to the VIP interface's events (watcher goroutine).
func (a *Agent) onLink(e netvip.Event) {
	t := a.holding()
	switch e.Kind {
	case netvip.CarrierLost, netvip.LinkRemoved:
		a.regs.set(func(w *regWant) { w.linkUp, w.linkNote = false, e.Kind.String() })
		if t != nil {
			a.requestStepDown(t.epoch, e.Iface+": "+e.Kind.String())
		}
	case netvip.CarrierGained:
		a.regs.set(func(w *regWant) { w.linkUp, w.linkNote = true, e.Kind.String() })
	case netvip.VIPRemoved:
		// Our own drop ends holding before removing, so this is someone
		// else — or the kernel, when the lifetime set for the lease has
		// run out: the lease doing its job, and the election's deadline
		// (at most ExpirySlack + 50 ms later) ends the term. A step-down
		// then would only cost the hold-off.
		switch {
		case t == nil || !t.holding.Load():
		case t.leaseRanOut():
			a.log.Warn("the VIP's kernel lifetime ran out: no lease renewal in time; the term ends at its deadline", "vip", e.VIP.String(), "epoch", t.epoch)
		default:
			a.requestStepDown(t.epoch, "the VIP "+e.VIP.String()+" was removed from "+e.Iface+" by someone else")
		}
	}
}

// stepDownReq is a reason to give up the term with epoch.
type stepDownReq struct {
	reason string
	epoch  uint64
}

// requestStepDown asks stepDownLoop to end the term with epoch; it never
// blocks.
func (a *Agent) requestStepDown(epoch uint64, reason string) {
	select {
	case a.stepDownCh <- stepDownReq{reason, epoch}:
	default:
	}
}

// stepDownLoop ends terms on request; the election refuses a request whose
// term ended while it waited.
func (a *Agent) stepDownLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case req := <-a.stepDownCh:
			a.log.Warn("stepping down", "reason", req.reason, "epoch", req.epoch)
			err := a.el.StepDown(ctx, req.epoch, a.cfg.Election.StepDownHoldOff)
			switch {
			case errors.Is(err, consul.ErrNotHolding):
				a.log.Info("not stepping down: the term the reason was about has ended", "reason", req.reason, "epoch", req.epoch)
			case err != nil && ctx.Err() == nil:
				a.log.Warn("step-down", "err", err)
			}
		}
	}
}

// StepDown makes a primary give up: it drops the VIP, releases the lock
// cleanly so a standby takes over at once, and stays standby for the
// configured hold-off. It fails with ErrNotPrimary on other nodes.
func (a *Agent) StepDown(ctx context.Context) error {
	r, epoch, _ := a.Role()
	if r != RolePrimary && r != RoleCandidate {
		return ErrNotPrimary
	}
	return a.el.StepDown(ctx, epoch, a.cfg.Election.StepDownHoldOff)
}

// ErrNotPrimary is returned by StepDown on a node that is not the primary.
var ErrNotPrimary = errors.New("this node is not the primary")

// Healthy reports whether the daemon's loop runs (for /healthz and the
// systemd watchdog).
func (a *Agent) Healthy() bool { return a.healthy.Load() }

// State is this node's view, for /status and `driftgate status`.
type State struct {
	Node        string                 `json:"node"`
	Role        string                 `json:"role"`
	Epoch       uint64                 `json:"epoch"`
	Since       time.Time              `json:"since"`
	Phase       string                 `json:"election_phase"`
	LastConfirm time.Time              `json:"last_confirm,omitzero"`
	Deadline    time.Time              `json:"lease_deadline,omitzero"`
	Eligible    bool                   `json:"eligible"`
	Ineligible  string                 `json:"ineligible_reason,omitempty"`
	VIPs        map[string]bool        `json:"vips"` // present on this host
	Forwarding  bool                   `json:"forwarding"`
	Relay       []gateway.RelayStats   `json:"relay"`
	Receiver    *gateway.ReceiverStats `json:"receiver,omitempty"`
	Repair      *gateway.RepairStats   `json:"repair,omitempty"` // the relay's answers to repair requests
	Egress      []gateway.EgressStats  `json:"egress,omitempty"`
	Transitions map[string]uint64      `json:"transitions"`
	Reasons     map[string]uint64      `json:"reasons"`
	Illegal     uint64                 `json:"illegal_transitions"`
	Conflicts   uint64                 `json:"conflicts"`
	Hooks       map[string]uint64      `json:"hooks"`
}

// State returns a snapshot of this node.
func (a *Agent) State() State {
	role, epoch, since := a.roles.get()
	tr, reasons, illegal := a.roles.counts()
	st := State{Node: a.cfg.Node, Role: role.String(), Epoch: epoch, Since: since,
		Transitions: tr, Reasons: reasons, Illegal: illegal, Conflicts: a.conflicts.Load(), VIPs: map[string]bool{}}
	if a.el != nil {
		s := a.el.Snapshot()
		st.Phase, st.LastConfirm, st.Deadline = s.Phase.String(), s.LastConfirm, s.Deadline
		st.Eligible, st.Ineligible = s.Eligible, s.Ineligible
	}
	for i, v := range a.vips {
		ok, _ := v.Present()
		st.VIPs[a.cfg.VIPs[i].Prefix.String()] = ok
	}
	if a.relay != nil {
		st.Forwarding = a.relay.Forwarding()
		st.Relay = a.relay.Stats()
		if rp, ok := a.relay.RepairStats(); ok {
			st.Repair = &rp
		}
	}
	if a.recv != nil {
		rs := a.recv.Stats()
		st.Receiver = &rs
	}
	if a.egress != nil {
		st.Egress = a.egress.Stats()
	}
	st.Hooks = map[string]uint64{"ran": a.hooks.ran.Load(), "failed": a.hooks.failed.Load(), "dropped": a.hooks.dropped.Load()}
	return st
}

// remoteReceivers are the unicast receivers the relay sends to: all of
// these but this node's own, which takes the frames in process
// (Relay.SetLocal): a copy by the network would cost a send and a read.
func (a *Agent) remoteReceivers(all []netip.AddrPort) []netip.AddrPort {
	if !a.cfg.Receive.Enabled || !a.cfg.Receive.Listen.IsValid() {
		return all
	}
	return slices.DeleteFunc(slices.Clone(all), func(ap netip.AddrPort) bool { return ap == a.cfg.Receive.Listen })
}

// sourceAddrs are the addresses this node's relay may send frames from:
// those of its multicast interface, or of every interface that is up but
// the loopback. Other receivers take frames only from registered sources.
func sourceAddrs(iface string) []netip.Addr {
	var ifs []net.Interface
	if iface != "" {
		if ifi, err := net.InterfaceByName(iface); err == nil {
			ifs = append(ifs, *ifi)
		}
	} else if all, err := net.Interfaces(); err == nil {
		for _, ifi := range all {
			if ifi.Flags&net.FlagUp != 0 && ifi.Flags&net.FlagLoopback == 0 {
				ifs = append(ifs, ifi)
			}
		}
	}
	var out []netip.Addr
	for _, ifi := range ifs {
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLinkLocalUnicast() {
				out = append(out, p.Addr())
			}
		}
	}
	return out
}

// checkRefused: the servers refused a session because of a check. Missing
// there (a Consul cluster rebuilt under running agents: then the whole
// registration is), or the heartbeat
// held critical there while it reaches the local agent: the servers' view
// is stale, and registering the service and check again makes the local
// agent sync it (at most every 5 s). Any other critical check is the
// servers' correct view.
func (a *Agent) checkRefused(ctx context.Context, id string, missing bool) {
	if !missing && (id != a.reg.HeartbeatID() || !a.reg.HeartbeatHealthy(2*a.cfg.Election.Timing.HeartbeatInterval)) {
		return
	}
	if last := a.lastResync.Load(); last != 0 && time.Since(time.Unix(0, last)) < 5*time.Second {
		return
	}
	a.lastResync.Store(time.Now().UnixNano())
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ids := []string{id}
	if missing { // the servers lost the registration: all of it
		ids = a.reg.CheckIDs()
	}
	if err := a.reg.Resync(rctx, ids...); err != nil {
		a.log.Warn("registering checks again, to sync them to the servers", "checks", ids, "err", err)
		return
	}
	if missing {
		a.log.Warn("the servers do not have this node's check (was Consul rebuilt?); registered the service and its checks again to sync them", "check", id)
		return
	}
	a.log.Warn("the servers hold the heartbeat check critical while it passes locally; registered it again to sync it")
}

// announcementsSent counts every announcement since start: a Prometheus
// counter must never go down between terms.
func (a *Agent) announcementsSent() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.annBefore
	if a.term != nil {
		n += a.term.announcements()
	}
	return n
}
