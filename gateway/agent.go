package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"driftgate/consul"
	"driftgate/internal/config"
	"driftgate/netvip"
)

// Notifier tells the service manager about the daemon (sd_notify); nil-safe
// implementations ignore calls when not under systemd.
type Notifier interface {
	Notify(state string)
}

type nopNotifier struct{}

func (nopNotifier) Notify(string) {}

// Agent is the driftgate daemon on one server: it takes part in the
// election, holds the VIP and relays while primary, and receives the feed
// always. Its role changes in one place, transition.
type Agent struct {
	cfg    *config.Config
	log    *slog.Logger
	notify Notifier
	client *api.Client

	relay *Relay
	recv  *Receiver
	vips  []*netvip.Manager
	reg   *consul.Registration
	el    *consul.Election
	hooks *hookRunner

	unlock func() // releases the instance lock

	// primary is read by announcers before every send.
	primary atomic.Bool
	// holding cancels the announcers and guards of the current term.
	holding    context.CancelFunc
	holdingWG  sync.WaitGroup
	stepDownCh chan stepDownReq // from watchers and a failed bind

	// leaseMu orders the kernel-lifetime renewals, including the one
	// leaseTimer makes, against drop.
	leaseMu    sync.Mutex
	leaseTimer *time.Timer

	// regKick wakes the registrar, which applies want (under mu) to the
	// Consul registration: latest state wins, in order, on one goroutine.
	regKick chan struct{}
	want    regWant

	mu          sync.Mutex
	role        Role
	epoch       uint64
	since       time.Time
	transitions map[string]uint64 // "from>to" → count
	reasons     map[string]uint64 // reason → count
	conflicts   uint64
	announcers  []*netvip.Announcer // of the current term
	annBefore   uint64              // announcements of earlier terms
	acquiredAt  time.Time
	healthy     atomic.Bool
	// takeover observes how long a new holder waited from acquiring the
	// lock to binding the VIP (T_wait, or ~0 after a clean release).
	takeover prometheus.Histogram
}

// NewAgent checks what can be checked without touching the system and
// returns an agent; Run does the work.
func NewAgent(cfg *config.Config, log *slog.Logger, n Notifier) (*Agent, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if n == nil {
		n = nopNotifier{}
	}
	client, err := ConsulClient(cfg)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: log.With("component", "agent"), notify: n, client: client,
		role: RoleStandby, since: time.Now(), transitions: map[string]uint64{}, reasons: map[string]uint64{},
		stepDownCh: make(chan stepDownReq, 8), regKick: make(chan struct{}, 1),
		want: regWant{role: "standby", linkUp: true},
		takeover: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "driftgate_takeover_seconds",
			Help:    "Time from acquiring the lock to binding the VIP.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 20}})}
	var relayKey, recvKey []byte
	if cfg.Relay.KeyFile != "" {
		if relayKey, err = LoadKey(cfg.Relay.KeyFile); err != nil {
			return nil, fmt.Errorf("relay.key_file: %w", err)
		}
	}
	rc := RelayConfig{Listen: cfg.Relay.Listen, Group: cfg.Relay.Group, Iface: cfg.Relay.Interface, TTL: cfg.Relay.TTL,
		Unicast: cfg.Relay.Unicast, Allow: cfg.Relay.Allow, Key: relayKey, RcvBuf: cfg.Relay.RcvBuf, Batch: cfg.Relay.Batch, NoGSO: !cfg.Relay.GSO,
		DynamicUnicast: cfg.Relay.UnicastFromConsul}
	if a.relay, err = NewRelay(rc, log); err != nil {
		return nil, err
	}
	a.relay.SetForwarding(false)
	if cfg.Receive.Enabled {
		if cfg.Receive.KeyFile != "" {
			if recvKey, err = LoadKey(cfg.Receive.KeyFile); err != nil {
				return nil, fmt.Errorf("receive.key_file: %w", err)
			}
		}
		d, err := ParseDeliver(cfg.Receive.Deliver, nil)
		if err != nil {
			return nil, fmt.Errorf("receive.deliver: %w", err)
		}
		a.recv, err = NewReceiver(ReceiverConfig{Group: cfg.Receive.Group, Iface: cfg.Receive.Interface, Listen: cfg.Receive.Listen, Key: recvKey, Deliver: d}, log)
		if err != nil {
			d.Close()
			return nil, err
		}
	}
	hooks := make([]Hook, len(cfg.Hooks))
	for i, h := range cfg.Hooks {
		hooks[i] = Hook(h)
	}
	a.hooks = newHookRunner(hooks, log)
	return a, nil
}

// ConsulClient builds a client for the configured Consul agent.
func ConsulClient(cfg *config.Config) (*api.Client, error) {
	ac := api.DefaultConfig()
	ac.Address = cfg.Consul.Address
	ac.Token = cfg.Consul.Token
	ac.Datacenter = cfg.Consul.Datacenter
	if cfg.Consul.CAFile != "" || cfg.Consul.CertFile != "" {
		ac.Scheme = "https"
		ac.TLSConfig = api.TLSConfig{CAFile: cfg.Consul.CAFile, CertFile: cfg.Consul.CertFile, KeyFile: cfg.Consul.KeyFile}
	}
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", cfg.Consul.Address, err)
	}
	return c, nil
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
func (a *Agent) Role() (Role, uint64, time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.role, a.epoch, a.since
}

// transition is the one place the role changes. It logs, counts, tells
// systemd and queues the hooks; none of that can block.
func (a *Agent) transition(to Role, reason string, epoch uint64) {
	a.mu.Lock()
	from := a.role
	a.role, a.epoch, a.since = to, epoch, time.Now()
	a.transitions[from.String()+">"+to.String()]++
	a.reasons[reason]++
	a.mu.Unlock()
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
// deregisters, and Run returns nil.
func (a *Agent) Run(ctx context.Context) error {
	if a.unlock == nil {
		if _, err := a.Lock(); err != nil {
			return err
		}
	}
	defer a.unlock()
	var err error
	// Start-up. A VIP left by a crashed run must go before anything else:
	// this node is not primary now.
	anyRemoved := false
	for _, v := range a.cfg.VIPs {
		m, err := netvip.New(v.VIP)
		if err != nil {
			return err
		}
		a.vips = append(a.vips, m)
		removed, err := m.Cleanup()
		if err != nil {
			return fmt.Errorf("start-up clean-up: %w", err)
		}
		if removed {
			anyRemoved = true
			a.log.Warn("removed a VIP left behind by an earlier run", "vip", v.String())
		}
	}
	// And a lock the dead run still holds goes too, so the standby need
	// not wait for the heartbeat check (clean if the dead run had bound).
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if ok, err := consul.ReleaseAbandoned(rctx, a.client, a.cfg.Consul.LeaderKey(), a.cfg.Node, anyRemoved); err != nil {
		a.log.Warn("checking for a lock left by an earlier run", "err", err)
	} else if ok {
		a.log.Warn("released the leader lock left by an earlier run", "clean", anyRemoved)
	}
	cancel()
	defer func() {
		for _, m := range a.vips {
			m.Close()
		}
	}()
	if err := a.relay.Bind(ctx); err != nil {
		return err
	}
	if a.recv != nil {
		if err := a.recv.Bind(ctx); err != nil {
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
	if err := a.register(ctx); err != nil {
		return err
	}
	a.el, err = consul.NewElection(a.client, consul.Config{Key: a.cfg.Consul.LeaderKey(), Node: a.cfg.Node, Timing: a.cfg.Election.Timing,
		ServiceChecks: a.reg.CheckIDs(), Priority: a.cfg.Election.Priority,
		// One more heartbeat interval after a failure: the local agent
		// syncs the passing status to the servers first.
		Ready: func() bool { return a.reg.HeartbeatHealthy(2 * a.cfg.Election.Timing.HeartbeatInterval) }}, a.log)
	if err != nil {
		return err
	}

	// The election runs under its own context so that on shutdown it can
	// drop and release before the rest stops.
	elCtx, stopElection := context.WithCancel(context.Background())
	defer stopElection()
	tasksCtx, stopTasks := context.WithCancel(context.Background())
	defer stopTasks()
	g, gctx := errgroup.WithContext(tasksCtx)
	elDone := make(chan struct{})
	g.Go(func() error {
		defer close(elDone)
		return a.el.Run(elCtx, a.onElection)
	})
	g.Go(func() error { return a.reg.RunHeartbeat(gctx, a.cfg.Election.Timing.HeartbeatInterval) })
	g.Go(func() error { return a.relay.Run(gctx) })
	if a.recv != nil {
		g.Go(func() error { return a.recv.Run(gctx) })
	}
	g.Go(func() error { return a.hooks.Run(gctx) })
	for _, w := range watchers {
		g.Go(func() error { return w.Run(gctx, a.onLink) })
	}
	g.Go(func() error { return a.stepDownLoop(gctx) })
	// The registrar stops before deregistration, so nothing re-registers.
	regCtx, stopRegistrar := context.WithCancel(gctx)
	defer stopRegistrar()
	regDone := make(chan struct{})
	g.Go(func() error {
		defer close(regDone)
		return a.registrar(regCtx)
	})
	if a.cfg.Relay.UnicastFromConsul {
		g.Go(func() error { return a.watchReceivers(gctx) })
	}
	a.healthy.Store(true)
	a.notify.Notify("READY=1")
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
	a.holdingWG.Wait()
	if cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// register registers the node, retrying with a capped backoff: the local
// Consul agent may start after driftgate.
func (a *Agent) register(ctx context.Context) error {
	const attempts = 30
	meta := map[string]string{}
	for i, v := range a.cfg.VIPs {
		meta[fmt.Sprintf("vip%d", i)] = v.Prefix.String()
	}
	if a.cfg.Receive.Enabled && a.cfg.Receive.Listen.IsValid() {
		// Where this node receives unicast frames, for relays that fan
		// out to the service's instances (relay.unicast_from_consul).
		meta[receiveMetaKey] = a.cfg.Receive.Listen.String()
	}
	port := 0
	if len(a.cfg.Relay.Listen) > 0 {
		port = int(a.cfg.Relay.Listen[0].Port())
	}
	sc := consul.ServiceConfig{Name: a.cfg.Service.Name, ID: a.cfg.Service.Name + "-" + a.cfg.Node, Node: a.cfg.Node, Port: port,
		Tags: a.cfg.Service.Tags, Meta: meta, Checks: a.cfg.Checks, HeartbeatTTL: a.cfg.Election.Timing.HeartbeatTTL, LinkCheck: true}
	for n := 1; ; n++ {
		reg, err := consul.Register(ctx, a.client, sc, a.log)
		if err == nil {
			a.reg = reg
			return nil
		}
		if n == attempts || ctx.Err() != nil {
			return fmt.Errorf("registering with Consul at %s (gave up after %d attempts): %w", a.cfg.Consul.Address, n, err)
		}
		wait := min(100*time.Millisecond<<min(n-1, 6), 5*time.Second)
		a.log.Warn("registering with Consul failed; retrying", "err", err, "attempts_left", attempts-n, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// onElection is the election's callback; it runs on the election's
// goroutine, and for MustDrop the VIP is gone when it returns nil.
func (a *Agent) onElection(e consul.Event) error {
	switch e.Kind {
	case consul.Acquired:
		a.mu.Lock()
		a.acquiredAt = time.Now()
		a.mu.Unlock()
		a.relay.SetEpoch(e.Epoch)
		a.transition(RoleCandidate, "acquired the lock", e.Epoch)
	case consul.Bind:
		a.bind(e.Epoch, e.Deadline)
	case consul.Renewed:
		a.renew(e.Deadline)
	case consul.MustDrop:
		err := a.drop()
		a.transition(RoleFenced, e.Reason, e.Epoch)
		a.transition(RoleStandby, "dropped the VIP", e.Epoch)
		a.wantRegistration(func(w *regWant) { w.role, w.primary = "standby", false })
		return err
	case consul.Lost:
		a.transition(RoleStandby, e.Reason, e.Epoch)
	}
	return nil
}

// bind takes the VIPs until the lease deadline, starts forwarding and
// announcing.
func (a *Agent) bind(epoch uint64, deadline time.Time) {
	for i, m := range a.vips {
		if err := m.Add(deadline); err != nil {
			a.log.Error("cannot bind the VIP; stepping down", "vip", a.cfg.VIPs[i].String(), "err", err)
			for _, m := range a.vips[:i] {
				m.Remove()
			}
			a.requestStepDown("binding the VIP failed: " + err.Error())
			return
		}
	}
	a.relay.SetEpoch(epoch) // the same as on Acquired; set again in case of a missed event
	a.relay.SetForwarding(true)
	a.primary.Store(true)
	a.mu.Lock()
	if !a.acquiredAt.IsZero() {
		a.takeover.Observe(time.Since(a.acquiredAt).Seconds())
	}
	for _, ann := range a.announcers {
		a.annBefore += ann.Sent()
	}
	a.announcers = nil
	a.mu.Unlock()
	a.transition(RolePrimary, "won the election", epoch)

	ctx, cancel := context.WithCancel(context.Background())
	a.holding = cancel
	for _, v := range a.cfg.VIPs {
		ann, err := netvip.NewAnnouncer(v.VIP, v.Announce, a.primary.Load)
		if err != nil {
			a.log.Error("cannot announce the VIP", "vip", v.String(), "err", err)
			continue
		}
		g, err := netvip.NewGuard(v.VIP)
		if err != nil {
			a.log.Warn("cannot watch for conflicting claims", "vip", v.String(), "err", err)
		}
		a.mu.Lock()
		a.announcers = append(a.announcers, ann)
		a.mu.Unlock()
		a.holdingWG.Add(1)
		go func() {
			defer a.holdingWG.Done()
			defer ann.Close()
			if err := ann.Run(ctx); err != nil {
				a.log.Warn("announcing the VIP", "vip", v.String(), "err", err)
			}
			<-ctx.Done()
		}()
		if g != nil {
			a.holdingWG.Add(1)
			go func() {
				defer a.holdingWG.Done()
				g.Run(ctx, ann, func(c netvip.Claim) {
					a.mu.Lock()
					a.conflicts++
					a.mu.Unlock()
					a.log.Warn("another host claims the VIP; re-announcing", "claim", c.String())
				})
			}()
		}
		if v.Probe {
			a.holdingWG.Add(1)
			go func() {
				defer a.holdingWG.Done()
				// After binding, only a foreign host can answer.
				if c, err := netvip.Probe(ctx, v.VIP, 1, 200*time.Millisecond); err == nil && c != nil {
					a.mu.Lock()
					a.conflicts++
					a.mu.Unlock()
					a.log.Warn("probe: another host answers for the VIP", "claim", c.String())
				}
			}()
		}
	}
	a.wantRegistration(func(w *regWant) { w.role, w.primary = "primary", true })
}

// renew extends the VIPs' kernel lifetimes to the new lease deadline. The
// kernel removes a VIP whose lifetime ends, so a daemon that is frozen
// (SIGSTOP, a hung disk, a VM pause) or killed without clean-up cannot keep
// it past its lease: the one case the daemon's own deadline cannot cover.
//
// Lifetimes are whole seconds, rounded down, so one set now may end up to a
// second before the deadline, and a Consul hiccup shorter than T_fence
// would cost the VIP. So renew also schedules one more renewal for the
// instant when the time left to the deadline is just over a whole second
// count; the next confirmation cancels it, and if none comes, it moves the
// kernel's expiry to within ExpirySlack + 50 ms of the deadline.
func (a *Agent) renew(deadline time.Time) {
	a.leaseMu.Lock()
	defer a.leaseMu.Unlock()
	if a.leaseTimer != nil {
		a.leaseTimer.Stop()
		a.leaseTimer = nil
	}
	if !a.primary.Load() {
		return
	}
	a.setLifetimes(deadline)
	left := time.Until(deadline) - netvip.ExpirySlack
	if at := left%time.Second - 50*time.Millisecond; left > time.Second && at > 0 {
		a.leaseTimer = time.AfterFunc(at, func() {
			a.leaseMu.Lock()
			defer a.leaseMu.Unlock()
			if a.primary.Load() {
				a.setLifetimes(deadline)
			}
		})
	}
}

// setLifetimes sets the VIPs' kernel lifetimes for a lease ending at
// deadline; called with leaseMu held.
func (a *Agent) setLifetimes(deadline time.Time) {
	for i, m := range a.vips {
		if err := m.Add(deadline); err != nil {
			if errors.Is(err, netvip.ErrLeaseTooShort) {
				// The lifetime set before ends earlier still.
				a.log.Debug("not extending the VIP's lifetime", "vip", a.cfg.VIPs[i].String(), "err", err)
				continue
			}
			// If renewals keep failing the kernel removes the VIP and
			// the watcher steps down.
			a.log.Warn("extending the VIP's lifetime", "vip", a.cfg.VIPs[i].String(), "err", err)
		}
	}
}

// drop stops forwarding and removes the VIPs, first and fast. An error
// says a VIP may still be there.
func (a *Agent) drop() error {
	a.primary.Store(false)
	a.relay.SetForwarding(false)
	// A renewal in progress finishes before the VIPs go; later ones see
	// primary false.
	a.leaseMu.Lock()
	if a.leaseTimer != nil {
		a.leaseTimer.Stop()
		a.leaseTimer = nil
	}
	a.leaseMu.Unlock()
	var errs []error
	for i, m := range a.vips {
		if err := m.Remove(); err != nil {
			a.log.Error("removing the VIP", "vip", a.cfg.VIPs[i].String(), "err", err)
			errs = append(errs, err)
		}
	}
	if a.holding != nil {
		a.holding()
		a.holding = nil
	}
	return errors.Join(errs...)
}

// regWant is the registration the agent wants Consul to have.
type regWant struct {
	role     string
	primary  bool
	linkUp   bool
	linkNote string
}

// wantRegistration records a wish and wakes the registrar; it never blocks.
func (a *Agent) wantRegistration(f func(*regWant)) {
	a.mu.Lock()
	f(&a.want)
	a.mu.Unlock()
	select {
	case a.regKick <- struct{}{}:
	default:
	}
}

// registrar applies the wanted registration; a failed update is retried a
// second later with whatever is wanted by then. After a failure the state
// in Consul is unknown (a request that timed out may have been applied),
// so it is written again even if it looks unchanged.
func (a *Agent) registrar(ctx context.Context) error {
	var applied regWant
	roleKnown, linkKnown, restore := true, true, false
	applied = regWant{role: "standby", linkUp: true}
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.regKick:
		case <-retry:
		case <-a.reg.Reconnected():
			// The local agent may have restarted: it restores the
			// checks it persisted, but the link check as registered,
			// not as last set. Set everything again.
			restore = true
		}
		retry = nil
		if restore {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := a.reg.Restore(rctx); err != nil {
				a.log.Warn("restoring the registration", "err", err)
				retry = time.After(time.Second)
			} else {
				restore, roleKnown, linkKnown = false, false, false
			}
			cancel()
		}
		a.mu.Lock()
		w := a.want
		a.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if !roleKnown || w.role != applied.role || w.primary != applied.primary {
			if err := a.reg.SetRole(rctx, w.role, w.primary); err != nil {
				a.log.Warn("updating the service registration", "role", w.role, "err", err)
				roleKnown, retry = false, time.After(time.Second)
			} else {
				roleKnown, applied.role, applied.primary = true, w.role, w.primary
			}
		}
		if !linkKnown || w.linkUp != applied.linkUp {
			if err := a.reg.SetLink(rctx, w.linkUp, w.linkNote); err != nil {
				a.log.Warn("updating the link check", "err", err)
				linkKnown, retry = false, time.After(time.Second)
			} else {
				linkKnown, applied.linkUp = true, w.linkUp
			}
		}
		cancel()
	}
}

// onLink reacts to the VIP interface's events (watcher goroutine).
func (a *Agent) onLink(e netvip.Event) {
	switch e.Kind {
	case netvip.CarrierLost, netvip.LinkRemoved:
		a.wantRegistration(func(w *regWant) { w.linkUp, w.linkNote = false, e.Kind.String() })
		if a.primary.Load() {
			a.requestStepDown(e.Iface + ": " + e.Kind.String())
		}
	case netvip.CarrierGained:
		a.wantRegistration(func(w *regWant) { w.linkUp, w.linkNote = true, e.Kind.String() })
	case netvip.VIPRemoved:
		// Our own drop clears primary before removing, so this is someone else.
		if a.primary.Load() {
			a.requestStepDown("the VIP " + e.VIP.String() + " was removed from " + e.Iface + " by someone else")
		}
	}
}

// stepDownReq is a reason to give up the term with epoch.
type stepDownReq struct {
	reason string
	epoch  uint64
}

// requestStepDown asks stepDownLoop to end the current term; it never
// blocks.
func (a *Agent) requestStepDown(reason string) {
	_, epoch, _ := a.Role()
	select {
	case a.stepDownCh <- stepDownReq{reason, epoch}:
	default:
	}
}

// stepDownLoop ends terms on request; the election drops a request whose
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
	Node        string            `json:"node"`
	Role        string            `json:"role"`
	Epoch       uint64            `json:"epoch"`
	Since       time.Time         `json:"since"`
	Phase       string            `json:"election_phase"`
	LastConfirm time.Time         `json:"last_confirm,omitzero"`
	Deadline    time.Time         `json:"lease_deadline,omitzero"`
	VIPs        map[string]bool   `json:"vips"` // present on this host
	Forwarding  bool              `json:"forwarding"`
	Relay       []RelayStats      `json:"relay"`
	Receiver    *ReceiverStats    `json:"receiver,omitempty"`
	Transitions map[string]uint64 `json:"transitions"`
	Reasons     map[string]uint64 `json:"reasons"`
	Conflicts   uint64            `json:"conflicts"`
	Hooks       map[string]uint64 `json:"hooks"`
}

// State returns a snapshot of this node.
func (a *Agent) State() State {
	a.mu.Lock()
	st := State{Node: a.cfg.Node, Role: a.role.String(), Epoch: a.epoch, Since: a.since,
		Transitions: clone(a.transitions), Reasons: clone(a.reasons), Conflicts: a.conflicts, VIPs: map[string]bool{}}
	a.mu.Unlock()
	if a.el != nil {
		s := a.el.Snapshot()
		st.Phase, st.LastConfirm, st.Deadline = s.Phase.String(), s.LastConfirm, s.Deadline
	}
	for i, m := range a.vips {
		ok, _ := m.Present()
		st.VIPs[a.cfg.VIPs[i].Prefix.String()] = ok
	}
	st.Forwarding = a.relay.Forwarding()
	st.Relay = a.relay.Stats()
	if a.recv != nil {
		rs := a.recv.Stats()
		st.Receiver = &rs
	}
	st.Hooks = map[string]uint64{"ran": a.hooks.ran.Load(), "failed": a.hooks.failed.Load(), "dropped": a.hooks.dropped.Load()}
	return st
}

// announcementsSent counts every announcement since start: a Prometheus
// counter must never go down between terms.
func (a *Agent) announcementsSent() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.annBefore
	for _, ann := range a.announcers {
		n += ann.Sent()
	}
	return n
}

func clone(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// receiveMetaKey is the service meta key with a node's unicast receiver.
const receiveMetaKey = "receive"

// watchReceivers keeps the relay's dynamic unicast destinations equal to
// the receivers of the service's healthy instances, with blocking queries:
// the fan-out for networks that forbid multicast.
func (a *Agent) watchReceivers(ctx context.Context) error {
	var idx uint64
	var current []netip.AddrPort
	failures := 0
	for {
		q := (&api.QueryOptions{WaitIndex: idx, WaitTime: 5 * time.Minute}).WithContext(ctx)
		entries, meta, err := a.client.Health().Service(a.cfg.Service.Name, "", true, q)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			wait := min(100*time.Millisecond<<min(failures-1, 6), 5*time.Second)
			a.log.Warn("watching the service's receivers", "err", err, "retry_in", wait)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			idx = 0
			continue
		}
		failures = 0
		if meta.LastIndex < idx {
			idx = 0
		} else {
			idx = meta.LastIndex
		}
		var dests []netip.AddrPort
		for _, e := range entries {
			if ap, err := netip.ParseAddrPort(e.Service.Meta[receiveMetaKey]); err == nil {
				dests = append(dests, ap)
			}
		}
		slices.SortFunc(dests, func(x, y netip.AddrPort) int { return x.Compare(y) })
		if slices.Equal(dests, current) {
			continue
		}
		if err := a.relay.SetUnicast(dests); err != nil {
			a.log.Error("updating the relay's receivers", "err", err)
			continue
		}
		current = dests
		a.log.Info("relay receivers from Consul", "receivers", fmt.Sprint(dests))
	}
}
