package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"driftgate/consul"
	"driftgate/gateway"
	"driftgate/netvip"
)

// Config is the agent's validated configuration.
type Config struct {
	Node     string
	Consul   Consul
	Service  Service
	Election Election
	VIPs     []VIP
	Relay    Relay
	Receive  Receive
	Egress   Egress
	Checks   []consul.CheckSpec
	Hooks    []Hook
	Metrics  Metrics
	Control  Control
	Log      Log
}

// Consul is how to reach the local agent and where the election's keys are.
type Consul struct {
	consul.ClientConfig
	KeyPrefix string
}

// LeaderKey is the election's KV key.
func (c Consul) LeaderKey() string { return c.KeyPrefix + "/leader" }

// Service is the Consul registration.
type Service struct {
	Name string
	Tags []string
}

// Election is the election's timing and preferences.
type Election struct {
	// Profile names the timing the keys set start from (consul.Profile).
	Profile         string
	Timing          consul.Timing
	Priority        int
	StepDownHoldOff time.Duration
	// KernelFence is how the kernel enforces the lease on a holder that
	// cannot (frozen, killed): FenceNFTables or FenceLifetime.
	KernelFence string
}

// The kernel fences (election.kernel_fence).
const (
	// FenceNFTables: netvip.Fence, to the millisecond, and the address
	// lifetime as a clean-up.
	FenceNFTables = "nftables"
	// FenceLifetime: the VIP's address lifetime alone, whole seconds: a
	// lease needs t_fence ≥ request_timeout + 1.3 s.
	FenceLifetime = "lifetime"
)

// VIP is one floating address and how to announce it.
type VIP struct {
	netvip.VIP
	Probe    bool
	Announce netvip.AnnounceConfig
}

// Relay is the tee relay the primary runs, as the relay takes it; the
// agent loads the key from KeyFile.
type Relay struct {
	gateway.RelayConfig
	KeyFile string
}

// Receive is this node's receiver, as the receiver takes it; the agent
// opens Deliver and loads the key from KeyFile.
type Receive struct {
	Enabled bool
	gateway.ReceiverConfig
	DeliverURL gateway.DeliverURL
	Queue      gateway.QueueConfig
	KeyFile    string
}

// Egress is the egress ports (off with none), as the egress takes them.
type Egress struct {
	Enabled bool
	gateway.EgressConfig
}

// Hook is a command run on every role change, with the transition in its
// environment (DRIFTGATE_ROLE, …).
type Hook struct {
	Name    string
	Command []string
	Timeout time.Duration
}

// Metrics is the HTTP listener for /metrics, /healthz and /status.
type Metrics struct{ Address string }

// Control is the agent's control socket: step-down and reload, and status
// for the CLI, for the members of the driftgate group (never the network).
type Control struct{ Socket string }

// Log is the logger's settings.
type Log struct{ Level, Format string }

// parse turns the raw values into a Config, or the first error, named by
// its key path. Each section has its own parse function; ranges that a
// library also enforces are checked by the library's Validate, once.
func parse(r *raw) (*Config, error) {
	c := &Config{Node: strings.TrimSpace(r.Node)}
	if c.Node == "" {
		return nil, fmt.Errorf("node: a node name is required")
	}
	var err error
	if c.Consul, err = parseConsul(r); err != nil {
		return nil, err
	}
	if c.Service, err = parseService(r); err != nil {
		return nil, err
	}
	if c.Election, err = parseElection(r); err != nil {
		return nil, err
	}
	if c.VIPs, err = parseVIPs(r); err != nil {
		return nil, err
	}
	if c.Relay, err = parseRelay(r, c.VIPs); err != nil {
		return nil, err
	}
	if c.Receive, err = parseReceive(r); err != nil {
		return nil, err
	}
	if c.Relay.DynamicUnicast && c.Receive.Enabled && c.Receive.Listen.IsValid() && c.Receive.Listen.Addr().IsUnspecified() {
		return nil, fmt.Errorf("receive.listen: %s: with relay.unicast_from_consul give this node's own address, which other nodes' relays send to", c.Receive.Listen)
	}
	if c.Egress, err = parseEgress(r, c.VIPs, c.Receive); err != nil {
		return nil, err
	}
	if c.Checks, err = parseChecks(r); err != nil {
		return nil, err
	}
	if c.Hooks, err = parseHooks(r); err != nil {
		return nil, err
	}
	if c.Metrics, err = parseMetrics(r); err != nil {
		return nil, err
	}
	if c.Control, err = parseControl(r); err != nil {
		return nil, err
	}
	if c.Log, err = parseLog(r); err != nil {
		return nil, err
	}
	return c, nil
}

func parseConsul(r *raw) (Consul, error) {
	rc := r.Consul
	c := Consul{ClientConfig: consul.ClientConfig{Address: rc.Address, Token: rc.Token, Datacenter: rc.Datacenter,
		CAFile: rc.TLS.CAFile, CertFile: rc.TLS.CertFile, KeyFile: rc.TLS.KeyFile}, KeyPrefix: strings.Trim(rc.KeyPrefix, "/")}
	if c.Address == "" {
		return c, fmt.Errorf("consul.address: required, e.g. 127.0.0.1:8500")
	}
	if c.KeyPrefix == "" {
		return c, fmt.Errorf("consul.key_prefix: required, e.g. driftgate")
	}
	if rc.Token != "" && rc.TokenFile != "" {
		return c, fmt.Errorf("consul.token_file: set either consul.token or consul.token_file, not both")
	}
	if rc.TokenFile != "" {
		b, err := os.ReadFile(rc.TokenFile)
		if err != nil {
			return c, fmt.Errorf("consul.token_file: %w", err)
		}
		c.Token = strings.TrimSpace(string(b))
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return c, fmt.Errorf("consul.tls: set both cert_file and key_file, or neither")
	}
	return c, nil
}

func parseService(r *raw) (Service, error) {
	s := Service{Name: r.Service.Name, Tags: r.Service.Tags}
	if s.Name == "" {
		return s, fmt.Errorf("service.name: required")
	}
	for i, tag := range s.Tags {
		if tag == consul.PrimaryTag {
			return s, fmt.Errorf("service.tags[%d]: %q is reserved for the primary", i, tag)
		}
	}
	return s, nil
}

func parseElection(r *raw) (Election, error) {
	e := r.Election
	var el Election
	var err error
	if el.Timing, err = consul.Profile(strings.TrimSpace(e.Profile)); err != nil {
		return el, fmt.Errorf("election.profile: %w", err)
	}
	el.Profile = strings.TrimSpace(e.Profile)
	t := &el.Timing
	for _, d := range []struct {
		key string
		raw string
		dst *time.Duration
	}{
		{"t_fence", e.TFence, &t.TFence}, {"t_wait", e.TWait, &t.TWait},
		{"confirm_interval", e.ConfirmInterval, &t.ConfirmInterval}, {"request_timeout", e.RequestTimeout, &t.RequestTimeout},
		{"drop_budget", e.DropBudget, &t.DropBudget}, {"heartbeat_ttl", e.HeartbeatTTL, &t.HeartbeatTTL},
		{"heartbeat_interval", e.HeartbeatInterval, &t.HeartbeatInterval}, {"lock_delay", e.LockDelay, &t.LockDelay},
		{"session_ttl", e.SessionTTL, &t.SessionTTL}, {"step_down_hold_off", e.StepDownHoldOff, &el.StepDownHoldOff},
	} {
		if d.raw == "" {
			continue // the profile's
		}
		v, err := duration("election."+d.key, d.raw)
		if err != nil {
			return el, err
		}
		*d.dst = v
	}
	if err := t.Validate(); err != nil {
		return el, pathErr("election", err)
	}
	switch el.KernelFence = strings.TrimSpace(e.KernelFence); el.KernelFence {
	case FenceNFTables:
	case FenceLifetime:
		// The kernel holds a bound VIP for a lifetime of whole seconds,
		// set after each renewal, which may take request_timeout, and
		// cut by the kernel's expiry slack (netvip.Manager.Add).
		if least := t.RequestTimeout + time.Second + netvip.ExpirySlack; t.TFence < least {
			return el, fmt.Errorf("election.t_fence: %s is below request_timeout + 1s + %s = %s: with kernel_fence %s the VIP's address lifetime, whole seconds set after each renewal, could not end within the lease (kernel_fence %s can)",
				t.TFence, netvip.ExpirySlack, least, FenceLifetime, FenceNFTables)
		}
	default:
		return el, fmt.Errorf("election.kernel_fence: %q: want %s or %s", el.KernelFence, FenceNFTables, FenceLifetime)
	}
	if e.Priority < 0 || e.Priority > 100 {
		return el, fmt.Errorf("election.priority: %d is out of range 0..100", e.Priority)
	}
	el.Priority = e.Priority
	return el, nil
}

func parseVIPs(r *raw) ([]VIP, error) {
	if len(r.VIPs) == 0 {
		return nil, errNoVIP
	}
	var vips []VIP
	for i, rv := range r.VIPs {
		path := fmt.Sprintf("vips[%d]", i)
		p, err := netip.ParsePrefix(strings.TrimSpace(rv.Address))
		if err != nil {
			return nil, fmt.Errorf("%s.address: %q: want ADDRESS/PREFIXLEN, e.g. 198.18.0.100/24", path, rv.Address)
		}
		v := VIP{VIP: netvip.VIP{Prefix: p, Iface: rv.Interface, Label: rv.Label}, Probe: rv.Probe}
		if err := v.VIP.Validate(); err != nil {
			return nil, pathErr(path, err)
		}
		a := netvip.DefaultAnnounceConfig()
		if rv.Announce.Count != 0 {
			a.Count = rv.Announce.Count
		}
		for _, d := range []struct {
			key, raw string
			dst      *time.Duration
		}{{"interval", rv.Announce.Interval, &a.Interval}, {"delay", rv.Announce.Delay, &a.Delay}, {"refresh", rv.Announce.Refresh, &a.Refresh}} {
			if d.raw == "" {
				continue
			}
			if *d.dst, err = duration(path+".announce."+d.key, d.raw); err != nil {
				return nil, err
			}
		}
		if err := a.Validate(); err != nil {
			return nil, pathErr(path+".announce", err)
		}
		v.Announce = a
		for j := range i {
			if vips[j].Prefix.Addr() == p.Addr() {
				return nil, fmt.Errorf("%s.address: %s is already vips[%d]", path, p.Addr(), j)
			}
		}
		vips = append(vips, v)
	}
	return vips, nil
}

func parseRelay(r *raw, vips []VIP) (Relay, error) {
	rr := r.Relay
	rel := Relay{RelayConfig: gateway.RelayConfig{Iface: rr.Interface, TTL: rr.TTL, DynamicUnicast: rr.UnicastFromConsul,
		RcvBuf: rr.RcvBuf, Batch: rr.Batch, NoGSO: !rr.GSO, MulticastLoop: rr.MulticastLoop}, KeyFile: rr.KeyFile}
	if len(rr.Listen) == 0 {
		return rel, fmt.Errorf("relay.listen: at least one address is required, e.g. the VIP with a port: %s:5000", vips[0].Prefix.Addr())
	}
	for i, s := range rr.Listen {
		ap, err := addrPort(fmt.Sprintf("relay.listen[%d]", i), s)
		if err != nil {
			return rel, err
		}
		rel.Listen = append(rel.Listen, ap)
	}
	if rr.Group != "" {
		g, err := addrPort("relay.group", rr.Group)
		if err != nil {
			return rel, err
		}
		rel.Group = g
	}
	for i, s := range rr.Unicast {
		ap, err := addrPort(fmt.Sprintf("relay.unicast[%d]", i), s)
		if err != nil {
			return rel, err
		}
		rel.Unicast = append(rel.Unicast, ap)
	}
	var err error
	if rel.Allow, err = prefixes("relay.allow", rr.Allow); err != nil {
		return rel, err
	}
	rp := rr.Repair
	rel.Repair = gateway.RepairConfig{Off: !rp.Enabled, Frames: rp.Frames, Bytes: rp.Bytes, Rate: rp.Rate}
	if rel.Repair.Allow, err = prefixes("relay.repair.allow", rp.Allow); err != nil {
		return rel, err
	}
	if err := rel.Validate(); errors.Is(err, gateway.ErrNoDestination) {
		return rel, fmt.Errorf("relay: no destination: set relay.group, relay.unicast or relay.unicast_from_consul")
	} else if err != nil {
		return rel, pathErr("relay", err)
	}
	return rel, nil
}

func parseReceive(r *raw) (Receive, error) {
	rc := r.Receive
	rec := Receive{Enabled: rc.Enabled, ReceiverConfig: gateway.ReceiverConfig{Iface: rc.Interface}, KeyFile: rc.KeyFile}
	if !rc.Enabled {
		return rec, nil
	}
	var err error
	if rc.Group != "" {
		if rec.Group, err = addrPort("receive.group", rc.Group); err != nil {
			return rec, err
		}
	}
	if rc.Listen != "" {
		if rec.Listen, err = addrPort("receive.listen", rc.Listen); err != nil {
			return rec, err
		}
	}
	rec.Repair.Off, rec.Repair.KeepFrames, rec.Repair.KeepBytes = !rc.Repair.Enabled, rc.Repair.KeepFrames, rc.Repair.KeepBytes
	if rec.Repair.Reorder, err = duration("receive.repair.reorder", rc.Repair.Reorder); err != nil {
		return rec, err
	}
	if rec.Repair.Deadline, err = duration("receive.repair.deadline", rc.Repair.Deadline); err != nil {
		return rec, err
	}
	rec.ConfirmEpochs, rec.HoldFrames, rec.SourceRate = rc.ConfirmEpochs, rc.HoldFrames, rc.SourceRate
	if rec.HoldTime, err = duration("receive.hold_time", rc.HoldTime); err != nil {
		return rec, err
	}
	if rec.Sources, err = prefixes("receive.sources", rc.Sources); err != nil {
		return rec, err
	}
	if rec.Order, err = gateway.ParseOrder(rc.Order); err != nil {
		return rec, fmt.Errorf("receive.order: %w", err)
	}
	if rec.OrderHold, err = duration("receive.order_hold", rc.OrderHold); err != nil {
		return rec, err
	}
	if err := rec.Validate(); errors.Is(err, gateway.ErrGroupOrListen) {
		return rec, fmt.Errorf("receive: set exactly one of receive.group and receive.listen (or receive.enabled: false)")
	} else if err != nil {
		return rec, pathErr("receive", err)
	}
	if rec.DeliverURL, err = gateway.ParseDeliverURL(rc.Deliver); err != nil {
		return rec, fmt.Errorf("receive.deliver: %w", err)
	}
	rec.Queue = gateway.QueueConfig{Frames: rc.Queue.Frames, Bytes: rc.Queue.Bytes}
	if err := rec.Queue.Validate(); err != nil {
		return rec, pathErr("receive", err)
	}
	return rec, nil
}

func parseEgress(r *raw, vips []VIP, rec Receive) (Egress, error) {
	re := r.Egress
	eg := Egress{Enabled: len(re.Listen) > 0, EgressConfig: gateway.EgressConfig{Rate: re.Rate, Burst: re.Burst,
		HoldFrames: re.HoldFrames, HoldBytes: re.HoldBytes}}
	if !eg.Enabled {
		return eg, nil
	}
	src, err := addrPort("egress.source", re.Source)
	if err != nil {
		return eg, fmt.Errorf("%w: the VIP and the port datagrams leave from", err)
	}
	eg.Source = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	isVIP := false
	for _, v := range vips {
		isVIP = isVIP || v.Prefix.Addr() == eg.Source.Addr()
	}
	if !isVIP {
		return eg, fmt.Errorf("egress.source: %s is not one of vips: the primary sends from the service's address", eg.Source.Addr())
	}
	if eg.Allow, err = prefixes("egress.allow", re.Allow); err != nil {
		return eg, err
	}
	if eg.Window, err = duration("egress.duplicate_window", re.DuplicateWindow); err != nil {
		return eg, err
	}
	if eg.Window > 0 && !rec.Enabled {
		return eg, fmt.Errorf("egress.duplicate_window: %s needs receive.enabled: the ids sent come through the feed", eg.Window)
	}
	for i, rl := range re.Listen {
		path := fmt.Sprintf("egress.listen[%d]", i)
		l := gateway.EgressListener{Header: rl.Header}
		if l.Listen, err = gateway.ParseEgressAddr(strings.TrimSpace(rl.Address)); err != nil {
			return eg, fmt.Errorf("%s.address: %w", path, err)
		}
		if rl.Destination != "" {
			d, err := addrPort(path+".destination", rl.Destination)
			if err != nil {
				return eg, err
			}
			l.Destination = netip.AddrPortFrom(d.Addr().Unmap(), d.Port())
		}
		eg.Listeners = append(eg.Listeners, l)
	}
	if err := eg.Validate(); err != nil {
		return eg, pathErr("egress", err)
	}
	return eg, nil
}

func parseChecks(r *raw) ([]consul.CheckSpec, error) {
	var checks []consul.CheckSpec
	for i, rch := range r.Checks {
		path := fmt.Sprintf("checks[%d]", i)
		cs := consul.CheckSpec{Name: rch.Name, HTTP: rch.HTTP, TCP: rch.TCP, Args: rch.Args}
		var err error
		if cs.Interval, err = duration(path+".interval", rch.Interval); err != nil {
			return nil, err
		}
		if cs.Timeout, err = duration(path+".timeout", rch.Timeout); err != nil {
			return nil, err
		}
		if err := cs.Validate(); err != nil {
			return nil, pathErr(path, err)
		}
		checks = append(checks, cs)
	}
	return checks, nil
}

func parseHooks(r *raw) ([]Hook, error) {
	var hooks []Hook
	for i, rh := range r.Hooks {
		path := fmt.Sprintf("hooks[%d]", i)
		h := Hook{Name: rh.Name, Command: rh.Command, Timeout: 10 * time.Second}
		if len(h.Command) == 0 || h.Command[0] == "" {
			return nil, fmt.Errorf("%s.command: want a command and its arguments, e.g. [\"/usr/local/bin/notify\", \"--verbose\"]", path)
		}
		if !strings.HasPrefix(h.Command[0], "/") {
			return nil, fmt.Errorf("%s.command: %q: give an absolute path (the daemon has no useful $PATH)", path, h.Command[0])
		}
		if rh.Timeout != "" {
			var err error
			if h.Timeout, err = duration(path+".timeout", rh.Timeout); err != nil {
				return nil, err
			}
		}
		if h.Timeout <= 0 || h.Timeout > 5*time.Minute {
			return nil, fmt.Errorf("%s.timeout: %s is out of range (0,5m]", path, h.Timeout)
		}
		if h.Name == "" {
			h.Name = h.Command[0]
		}
		hooks = append(hooks, h)
	}
	return hooks, nil
}

func parseMetrics(r *raw) (Metrics, error) {
	m := Metrics{Address: r.Metrics.Address}
	if m.Address != "" {
		if _, err := netip.ParseAddrPort(m.Address); err != nil {
			return m, fmt.Errorf("metrics.address: %q: want IP:PORT, e.g. 127.0.0.1:9469 (empty: off)", m.Address)
		}
	}
	return m, nil
}

func parseControl(r *raw) (Control, error) {
	c := Control{Socket: r.Control.Socket}
	switch {
	case c.Socket == "":
	case !filepath.IsAbs(c.Socket):
		return c, fmt.Errorf("control.socket: %q: want an absolute path, e.g. %s (empty: off)", c.Socket, DefaultControlSocket)
	case len(c.Socket) > 107:
		return c, fmt.Errorf("control.socket: %q: %d bytes, a unix socket's path has at most 107", c.Socket, len(c.Socket))
	}
	return c, nil
}

func parseLog(r *raw) (Log, error) {
	l := Log{Level: strings.ToLower(r.Log.Level), Format: strings.ToLower(r.Log.Format)}
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		return l, fmt.Errorf("log.level: %q: want debug, info, warn or error", r.Log.Level)
	}
	if l.Format != "text" && l.Format != "json" {
		return l, fmt.Errorf("log.format: %q: want text or json", r.Log.Format)
	}
	return l, nil
}
