package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// The service meta keys: this package writes and reads all of them.
const (
	metaNode    = "node"
	metaRole    = "role"
	metaVIP     = "vip" // vip0, vip1, …
	metaReceive = "receive"
	// metaRepairPort: the receiver's repair port; with the node's address,
	// where the other receivers ask for frames they missed.
	metaRepairPort = "repair_port"
	// metaSources: the addresses the node's relay sends frames from.
	metaSources = "sources"
)

// ErrRefused marks a request that Consul answered with a client error (an
// ACL that denies it, a request it rejects): retrying cannot mend it. Too
// many requests (429) is not one of them.
var ErrRefused = errors.New("refused by Consul")

// refused wraps err with ErrRefused when Consul's answer says a retry
// cannot help.
func refused(err error) error {
	var se api.StatusError
	if errors.As(err, &se) && se.Code >= 400 && se.Code < 500 && se.Code != 429 {
		return fmt.Errorf("%w (%w)", err, ErrRefused)
	}
	return err
}

// PrimaryTag is the tag only the holder carries, so that
// primary.<service>.service.consul resolves to the primary.
const PrimaryTag = "primary"

// CheckSpec is a user health check run by the local Consul agent. Exactly
// one of HTTP, TCP and Args is set.
type CheckSpec struct {
	Name string
	HTTP string // URL; passing on 2xx
	TCP  string // host:port; passing when it connects
	// Args is a script and its arguments: exit 0 passes, exit 1 is a
	// warning (which does not fence), anything else is critical. The
	// agent must have enable_script_checks (use ACLs then).
	Args     []string
	Interval time.Duration
	Timeout  time.Duration
}

// Validate checks the spec; errors name the field.
func (c CheckSpec) Validate() error {
	n := 0
	for _, set := range []bool{c.HTTP != "", c.TCP != "", len(c.Args) > 0} {
		if set {
			n++
		}
	}
	switch {
	case c.Name == "":
		return errors.New("name: required")
	case n != 1:
		return fmt.Errorf("http: set exactly one of http, tcp and args (check %q)", c.Name)
	case c.Interval < 100*time.Millisecond:
		return fmt.Errorf("interval: %s is below 100ms (check %q)", c.Interval, c.Name)
	case c.Timeout <= 0 || c.Timeout > c.Interval:
		return fmt.Errorf("timeout: %s must be positive and at most the interval %s (check %q)", c.Timeout, c.Interval, c.Name)
	}
	return nil
}

// ServiceConfig describes this node's registration.
type ServiceConfig struct {
	Name string // service name, e.g. "driftgate"
	ID   string // unique per agent; "" = Name
	Node string // this node's name, put in meta
	Port int    // the relay port
	Tags []string
	// VIPs are put in the service meta (vip0, vip1, …) for people and
	// tools reading the catalog.
	VIPs []netip.Prefix
	// Receive, if valid, is where this node receives unicast frames; relays
	// that fan out to the service's instances read it (WatchReceivers).
	Receive netip.AddrPort
	// Sources are the addresses this node's relay sends frames from (its
	// multicast interface's): receivers on the other nodes take frames
	// only from registered sources (Instances.Sources).
	Sources []netip.Addr
	// RepairPort, if set, is the UDP port of this node's receiver for repair
	// requests from the other receivers (WatchReceivers: Instances.Repair).
	RepairPort uint16
	// Checks are the user's checks; each becomes a check of the service,
	// bound to the election session.
	Checks       []CheckSpec
	HeartbeatTTL time.Duration
	// LinkCheck adds a TTL check the caller sets from the interface's
	// carrier state (SetLink), so a holder whose link is down is fenced.
	LinkCheck bool
}

// Registration is this node's service in the local Consul agent.
type Registration struct {
	c   *api.Client
	cfg ServiceConfig
	log *slog.Logger

	heartbeatID, linkID string
	checkIDs            []string
	mu                  sync.Mutex // guards checkRegs and cfg.Checks (UpdateChecks)
	checkRegs           []*api.AgentCheckRegistration
	primary             bool
	role                string
	reconnected         chan struct{}
	// heartbeatOKSince is when the heartbeat last started succeeding
	// (unix nanoseconds; 0 while it fails).
	heartbeatOKSince atomic.Int64
	// note, if set, adds to the heartbeat check's output (the feed's
	// counters, for `driftgate status` on any node).
	note atomic.Pointer[func() string]
}

// HeartbeatHealthy reports whether the heartbeat has reached the local
// agent without a failure for at least d.
func (r *Registration) HeartbeatHealthy(d time.Duration) bool {
	since := r.heartbeatOKSince.Load()
	return since != 0 && time.Since(time.Unix(0, since)) >= d
}

// Register registers the service and its checks with the local agent. The
// heartbeat check starts passing; user checks start critical and pass once
// the agent has run them, so a node cannot win before its checks pass.
func Register(ctx context.Context, c *api.Client, cfg ServiceConfig, log *slog.Logger) (*Registration, error) {
	if cfg.Name == "" {
		return nil, errors.New("service name: required")
	}
	if cfg.ID == "" {
		cfg.ID = cfg.Name
	}
	if cfg.HeartbeatTTL <= 0 {
		return nil, errors.New("heartbeat ttl: must be positive")
	}
	for i, ch := range cfg.Checks {
		if err := ch.Validate(); err != nil {
			return nil, fmt.Errorf("checks[%d]: %w", i, err)
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Registration{c: c, cfg: cfg, log: log.With("component", "registration"), role: "standby", reconnected: make(chan struct{}, 1),
		heartbeatID: heartbeatCheckID(cfg.ID), linkID: cfg.ID + ":link"}
	if err := r.registerService(ctx); err != nil {
		return nil, err
	}
	checks := []*api.AgentCheckRegistration{{
		ID: r.heartbeatID, Name: "driftgate heartbeat", ServiceID: cfg.ID,
		AgentServiceCheck: api.AgentServiceCheck{TTL: cfg.HeartbeatTTL.String(), Status: api.HealthPassing,
			Notes: "passed by the driftgate daemon; critical when it is dead or hung"},
	}}
	if cfg.LinkCheck {
		checks = append(checks, &api.AgentCheckRegistration{
			ID: r.linkID, Name: "driftgate link", ServiceID: cfg.ID,
			// The TTL is long: the daemon sets this check on carrier
			// changes; the heartbeat covers a dead daemon.
			AgentServiceCheck: api.AgentServiceCheck{TTL: "8760h", Status: api.HealthPassing, Notes: "carrier of the VIP's interface"},
		})
	}
	for _, ch := range cfg.Checks {
		checks = append(checks, userCheck(cfg.ID, ch, api.HealthCritical))
	}
	for _, reg := range checks {
		if err := r.registerCheck(ctx, reg); err != nil {
			return nil, err
		}
		r.checkIDs = append(r.checkIDs, reg.ID)
	}
	r.checkRegs = checks
	// Registered passing: healthy from the start, not only after the
	// first heartbeat interval.
	r.heartbeatOKSince.Store(1)
	return r, nil
}

// userCheck is the registration of one of the user's checks, starting in
// status.
func userCheck(serviceID string, ch CheckSpec, status string) *api.AgentCheckRegistration {
	return &api.AgentCheckRegistration{ID: serviceID + ":check:" + ch.Name, Name: ch.Name, ServiceID: serviceID,
		AgentServiceCheck: api.AgentServiceCheck{HTTP: ch.HTTP, TCP: ch.TCP, Args: ch.Args,
			Interval: ch.Interval.String(), Timeout: ch.Timeout.String(), Status: status}}
}

// ErrChecksChanged: UpdateChecks was given checks of other names. The
// election's session is bound to the check IDs it was created with:
// adding or removing one needs a restart.
var ErrChecksChanged = errors.New("checks added or removed: the election's session is bound to the checks it was created with; restart to apply")

// UpdateChecks registers the user's checks again with new definitions
// (URL, command, interval, timeout), each starting in the status it has now
// — registering a check resets its status, and a primary's session would
// end with a check gone critical for no reason. The names must be the
// ones registered (ErrChecksChanged).
func (r *Registration) UpdateChecks(ctx context.Context, checks []CheckSpec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var names, now []string
	for _, ch := range checks {
		names = append(names, r.cfg.ID+":check:"+ch.Name)
	}
	for _, c := range r.cfg.Checks {
		now = append(now, r.cfg.ID+":check:"+c.Name)
	}
	slices.Sort(names)
	slices.Sort(now)
	if !slices.Equal(names, now) {
		return ErrChecksChanged
	}
	have, err := r.agentChecks(ctx)
	if err != nil {
		return err
	}
	for _, ch := range checks {
		status := api.HealthCritical
		if h, ok := have[r.cfg.ID+":check:"+ch.Name]; ok {
			status = h.Status
		}
		reg := userCheck(r.cfg.ID, ch, status)
		if err := r.registerCheck(ctx, reg); err != nil {
			return err
		}
		if i := slices.IndexFunc(r.checkRegs, func(x *api.AgentCheckRegistration) bool { return x.ID == reg.ID }); i >= 0 {
			r.checkRegs[i] = reg
		}
	}
	r.cfg.Checks = slices.Clone(checks)
	return nil
}

// agentChecks lists the local agent's checks, by ID.
func (r *Registration) agentChecks(ctx context.Context) (map[string]*api.AgentCheck, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	have, err := r.c.Agent().ChecksWithFilterOpts("", (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		return nil, fmt.Errorf("listing the local agent's checks: %w", err)
	}
	return have, nil
}

func (r *Registration) registerCheck(ctx context.Context, reg *api.AgentCheckRegistration) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.c.Agent().CheckRegisterOpts(reg, (&api.QueryOptions{}).WithContext(rctx)); err != nil {
		return fmt.Errorf("registering check %s: %w", reg.ID, refused(err))
	}
	return nil
}

// Restore re-registers the service, and any of its checks the local agent
// no longer has (an agent restarted without its data directory). Checks it
// still has are left alone: registering one again would reset its status.
func (r *Registration) Restore(ctx context.Context) error {
	if err := r.registerService(ctx); err != nil {
		return err
	}
	have, err := r.agentChecks(ctx)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, reg := range r.checkRegs {
		if _, ok := have[reg.ID]; !ok {
			r.log.Warn("the local Consul agent lost a check; registering it again", "check", reg.ID)
			if err := r.registerCheck(ctx, reg); err != nil {
				return err
			}
		}
	}
	return nil
}

// heartbeatCheckID is the heartbeat check of the service instance id.
func heartbeatCheckID(serviceID string) string { return serviceID + ":heartbeat" }

// heartbeatAlive starts every heartbeat's output; a note follows after "; ".
const heartbeatAlive = "alive"

// SetHeartbeatNote makes every heartbeat carry fn's text in the check's
// output, which ReadStatus returns as NodeStatus.Feed. The local agent
// syncs an output change to the servers at most every
// check_update_interval (5 min by default): it is a slow, cheap view.
func (r *Registration) SetHeartbeatNote(fn func() string) { r.note.Store(&fn) }

// Resync makes the local agent sync the checks ids (and with them the
// service) to the servers at once, for checks the servers hold critical
// while they pass locally, or do not have at all; the agent itself would
// only at its anti-entropy interval, a minute or more, or after a server
// joins. A check registered again with what the agent has changes nothing
// it syncs (a TTL check even keeps its persisted status), but it syncs a
// status change at once: a TTL check is set to warning, which fences no
// session, and straight back; any other is registered again. The owners of
// the TTL checks hear Reconnected, to set them again should they have
// changed meanwhile.
func (r *Registration) Resync(ctx context.Context, ids ...string) error {
	have, err := r.agentChecks(ctx)
	if err != nil {
		return fmt.Errorf("resyncing checks: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(rctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		i := slices.IndexFunc(r.checkRegs, func(reg *api.AgentCheckRegistration) bool { return reg.ID == id })
		if i < 0 {
			return fmt.Errorf("resyncing check %s: not one of this registration's", id)
		}
		c, ok := have[id]
		if r.checkRegs[i].TTL == "" || !ok {
			if err := r.registerCheck(ctx, r.checkRegs[i]); err != nil {
				return err
			}
			continue
		}
		if err := r.c.Agent().UpdateTTLOpts(id, "syncing to the Consul servers", api.HealthWarning, q); err != nil {
			return fmt.Errorf("resyncing check %s: %w", id, err)
		}
		if err := r.c.Agent().UpdateTTLOpts(id, c.Output, c.Status, q); err != nil {
			return fmt.Errorf("resyncing check %s: %w", id, err)
		}
	}
	select {
	case r.reconnected <- struct{}{}:
	default:
	}
	return nil
}

// Reconnected receives after the heartbeat reached the local agent again
// after failing, and after Resync: whoever owns the registration's state
// (role, link) should set it again.
func (r *Registration) Reconnected() <-chan struct{} { return r.reconnected }

// CheckIDs are the service's checks, to bind to the election session.
func (r *Registration) CheckIDs() []string { return slices.Clone(r.checkIDs) }

// HeartbeatID is the heartbeat check's ID.
func (r *Registration) HeartbeatID() string { return r.heartbeatID }

func (r *Registration) registerService(ctx context.Context) error {
	tags := slices.Clone(r.cfg.Tags)
	if r.primary {
		tags = append(tags, PrimaryTag)
	}
	meta := map[string]string{metaNode: r.cfg.Node, metaRole: r.role}
	for i, p := range r.cfg.VIPs {
		meta[fmt.Sprintf("%s%d", metaVIP, i)] = p.String()
	}
	if r.cfg.Receive.IsValid() {
		meta[metaReceive] = r.cfg.Receive.String()
	}
	if len(r.cfg.Sources) > 0 {
		var ss []string
		for _, a := range r.cfg.Sources {
			ss = append(ss, a.String())
		}
		meta[metaSources] = strings.Join(ss, ",")
	}
	if r.cfg.RepairPort != 0 {
		meta[metaRepairPort] = strconv.Itoa(int(r.cfg.RepairPort))
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Registered without checks: re-registering to change the tags then
	// leaves the separately registered checks, and so the session, alone.
	err := r.c.Agent().ServiceRegisterOpts(&api.AgentServiceRegistration{
		ID: r.cfg.ID, Name: r.cfg.Name, Port: r.cfg.Port, Tags: tags, Meta: meta,
	}, api.ServiceRegisterOpts{}.WithContext(rctx))
	if err != nil {
		return fmt.Errorf("registering service %s (port %s): %w", r.cfg.ID, strconv.Itoa(r.cfg.Port), refused(err))
	}
	return nil
}

// SetRole records the node's role in the service meta and keeps the
// primary tag on the holder only. Not safe for concurrent use: the agent
// calls it from one goroutine.
func (r *Registration) SetRole(ctx context.Context, role string, primary bool) error {
	prevRole, prevPrimary := r.role, r.primary
	r.role, r.primary = role, primary
	if err := r.registerService(ctx); err != nil {
		r.role, r.primary = prevRole, prevPrimary
		return err
	}
	return nil
}

// SetLink passes or fails the link check.
func (r *Registration) SetLink(ctx context.Context, up bool, note string) error {
	if !r.cfg.LinkCheck {
		return nil
	}
	status := api.HealthPassing
	if !up {
		status = api.HealthCritical
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return r.c.Agent().UpdateTTLOpts(r.linkID, note, status, (&api.QueryOptions{}).WithContext(rctx))
}

// RunHeartbeat passes the heartbeat check every interval until ctx is
// cancelled, then returns nil. If this loop stops — the daemon died or hung
// — the check turns critical after HeartbeatTTL and the session is
// invalidated: Consul fences this node.
func (r *Registration) RunHeartbeat(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	fails := 0
	for {
		rctx, cancel := context.WithTimeout(ctx, interval)
		out := heartbeatAlive
		if fn := r.note.Load(); fn != nil {
			out += "; " + (*fn)()
		}
		err := r.c.Agent().UpdateTTLOpts(r.heartbeatID, out, api.HealthPassing, (&api.QueryOptions{}).WithContext(rctx))
		cancel()
		if err != nil && ctx.Err() == nil {
			r.heartbeatOKSince.Store(0)
			fails++
			if fails == 1 || fails%20 == 0 {
				r.log.Warn("heartbeat to the local Consul agent failed", "err", err, "failures", fails)
			}
		} else {
			if fails > 0 {
				r.log.Info("the local Consul agent answers again", "failures", fails)
				// It may have restarted and restored this node's
				// checks from its data directory, the daemon-set ones
				// in their registration state: re-assert them.
				select {
				case r.reconnected <- struct{}{}:
				default:
				}
			}
			fails = 0
			if err == nil && r.heartbeatOKSince.Load() == 0 {
				r.heartbeatOKSince.Store(time.Now().UnixNano())
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Deregister removes the service and its checks (on clean stop).
func (r *Registration) Deregister(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.c.Agent().ServiceDeregisterOpts(r.cfg.ID, (&api.QueryOptions{}).WithContext(rctx)); err != nil {
		return fmt.Errorf("deregistering service %s: %w", r.cfg.ID, err)
	}
	return nil
}
