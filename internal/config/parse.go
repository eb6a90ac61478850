package config

import (
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"driftgate/consul"
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
	Checks   []consul.CheckSpec
	Hooks    []Hook
	Metrics  Metrics
	Log      Log
}

// Consul is how to reach the local agent.
type Consul struct {
	Address    string
	Token      string // from token or token_file
	Datacenter string
	KeyPrefix  string
	CAFile     string
	CertFile   string
	KeyFile    string
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
	Timing          consul.Timing
	Priority        int
	StepDownHoldOff time.Duration
}

// VIP is one floating address and how to announce it.
type VIP struct {
	netvip.VIP
	Probe    bool
	Announce netvip.AnnounceConfig
}

// Relay is the tee relay the primary runs.
type Relay struct {
	Listen            []netip.AddrPort
	Group             netip.AddrPort // zero: none
	Interface         string
	TTL               int
	Unicast           []netip.AddrPort
	UnicastFromConsul bool
	Allow             []netip.Prefix
	KeyFile           string
	RcvBuf            int
	Batch             int
	GSO               bool
}

// Receive is this node's receiver.
type Receive struct {
	Enabled   bool
	Group     netip.AddrPort
	Interface string
	Listen    netip.AddrPort
	Deliver   string
	KeyFile   string
}

// Hook is a command run on every role change.
type Hook struct {
	Name    string
	Command []string
	Timeout time.Duration
}

// Metrics is the HTTP listener for /metrics, /healthz and /status.
type Metrics struct{ Address string }

// Log is the logger's settings.
type Log struct{ Level, Format string }

// parse turns the raw values into a Config, or the first error, named by
// its key path.
func parse(r *raw) (*Config, error) {
	c := &Config{Node: strings.TrimSpace(r.Node)}
	if c.Node == "" {
		return nil, fmt.Errorf("node: a node name is required")
	}

	// consul
	c.Consul = Consul{Address: r.Consul.Address, Token: r.Consul.Token, Datacenter: r.Consul.Datacenter,
		KeyPrefix: strings.Trim(r.Consul.KeyPrefix, "/"), CAFile: r.Consul.TLS.CAFile, CertFile: r.Consul.TLS.CertFile, KeyFile: r.Consul.TLS.KeyFile}
	if c.Consul.Address == "" {
		return nil, fmt.Errorf("consul.address: required, e.g. 127.0.0.1:8500")
	}
	if c.Consul.KeyPrefix == "" {
		return nil, fmt.Errorf("consul.key_prefix: required, e.g. driftgate")
	}
	if r.Consul.Token != "" && r.Consul.TokenFile != "" {
		return nil, fmt.Errorf("consul.token_file: set either consul.token or consul.token_file, not both")
	}
	if r.Consul.TokenFile != "" {
		b, err := os.ReadFile(r.Consul.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("consul.token_file: %w", err)
		}
		c.Consul.Token = strings.TrimSpace(string(b))
	}
	if (c.Consul.CertFile == "") != (c.Consul.KeyFile == "") {
		return nil, fmt.Errorf("consul.tls: set both cert_file and key_file, or neither")
	}

	// service
	c.Service = Service{Name: r.Service.Name, Tags: r.Service.Tags}
	if c.Service.Name == "" {
		return nil, fmt.Errorf("service.name: required")
	}
	for i, tag := range c.Service.Tags {
		if tag == consul.PrimaryTag {
			return nil, fmt.Errorf("service.tags[%d]: %q is reserved for the primary", i, tag)
		}
	}

	// election
	e := r.Election
	t := &c.Election.Timing
	for _, d := range []struct {
		key string
		raw string
		dst *time.Duration
	}{
		{"t_fence", e.TFence, &t.TFence}, {"t_wait", e.TWait, &t.TWait},
		{"confirm_interval", e.ConfirmInterval, &t.ConfirmInterval}, {"request_timeout", e.RequestTimeout, &t.RequestTimeout},
		{"drop_budget", e.DropBudget, &t.DropBudget}, {"heartbeat_ttl", e.HeartbeatTTL, &t.HeartbeatTTL},
		{"heartbeat_interval", e.HeartbeatInterval, &t.HeartbeatInterval}, {"lock_delay", e.LockDelay, &t.LockDelay},
		{"session_ttl", e.SessionTTL, &t.SessionTTL}, {"step_down_hold_off", e.StepDownHoldOff, &c.Election.StepDownHoldOff},
	} {
		v, err := duration("election."+d.key, d.raw)
		if err != nil {
			return nil, err
		}
		*d.dst = v
	}
	if err := t.Validate(); err != nil {
		return nil, pathErr("election", err)
	}
	// The kernel holds a bound VIP for a lifetime of whole seconds, set
	// after each confirmation, which may take request_timeout, and cut by
	// the kernel's expiry slack (netvip.Manager.Add).
	if least := t.RequestTimeout + time.Second + netvip.ExpirySlack; t.TFence < least {
		return nil, fmt.Errorf("election.t_fence: %s is below request_timeout + 1s + %s = %s: the VIP's kernel lifetime, whole seconds set after each confirmation, could not end within the lease",
			t.TFence, netvip.ExpirySlack, least)
	}
	if e.Priority < 0 || e.Priority > 100 {
		return nil, fmt.Errorf("election.priority: %d is out of range 0..100", e.Priority)
	}
	c.Election.Priority = e.Priority

	// vips
	if len(r.VIPs) == 0 {
		return nil, errNoVIP
	}
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
			if c.VIPs[j].Prefix.Addr() == p.Addr() {
				return nil, fmt.Errorf("%s.address: %s is already vips[%d]", path, p.Addr(), j)
			}
		}
		c.VIPs = append(c.VIPs, v)
	}

	// relay
	rr := r.Relay
	rel := Relay{Interface: rr.Interface, TTL: rr.TTL, UnicastFromConsul: rr.UnicastFromConsul, KeyFile: rr.KeyFile, RcvBuf: rr.RcvBuf, Batch: rr.Batch, GSO: rr.GSO}
	if len(rr.Listen) == 0 {
		return nil, fmt.Errorf("relay.listen: at least one address is required, e.g. the VIP with a port: %s:5000", c.VIPs[0].Prefix.Addr())
	}
	for i, s := range rr.Listen {
		ap, err := addrPort(fmt.Sprintf("relay.listen[%d]", i), s)
		if err != nil {
			return nil, err
		}
		rel.Listen = append(rel.Listen, ap)
	}
	if rr.Group != "" {
		g, err := addrPort("relay.group", rr.Group)
		if err != nil {
			return nil, err
		}
		if !g.Addr().IsMulticast() {
			return nil, fmt.Errorf("relay.group: %s is not a multicast address (239.255.0.0/16 is for local use)", g.Addr())
		}
		rel.Group = g
	}
	for i, s := range rr.Unicast {
		ap, err := addrPort(fmt.Sprintf("relay.unicast[%d]", i), s)
		if err != nil {
			return nil, err
		}
		rel.Unicast = append(rel.Unicast, ap)
	}
	if !rel.Group.IsValid() && len(rel.Unicast) == 0 && !rel.UnicastFromConsul {
		return nil, fmt.Errorf("relay: no destination: set relay.group, relay.unicast or relay.unicast_from_consul")
	}
	for i, s := range rr.Allow {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("relay.allow[%d]: %q: want a CIDR such as 198.18.0.0/15", i, s)
		}
		rel.Allow = append(rel.Allow, p.Masked())
	}
	if rel.TTL < 1 || rel.TTL > 255 {
		return nil, fmt.Errorf("relay.ttl: %d is out of range 1..255", rel.TTL)
	}
	if rel.Batch < 1 || rel.Batch > 1024 {
		return nil, fmt.Errorf("relay.batch: %d is out of range 1..1024", rel.Batch)
	}
	if rel.RcvBuf < 0 {
		return nil, fmt.Errorf("relay.rcvbuf: %d must not be negative", rel.RcvBuf)
	}
	c.Relay = rel

	// receive
	rc := r.Receive
	c.Receive = Receive{Enabled: rc.Enabled, Interface: rc.Interface, Deliver: rc.Deliver, KeyFile: rc.KeyFile}
	if rc.Enabled {
		if (rc.Group == "") == (rc.Listen == "") {
			return nil, fmt.Errorf("receive: set exactly one of receive.group and receive.listen (or receive.enabled: false)")
		}
		var err error
		if rc.Group != "" {
			if c.Receive.Group, err = addrPort("receive.group", rc.Group); err != nil {
				return nil, err
			}
			if !c.Receive.Group.Addr().IsMulticast() {
				return nil, fmt.Errorf("receive.group: %s is not a multicast address", c.Receive.Group.Addr())
			}
		} else if c.Receive.Listen, err = addrPort("receive.listen", rc.Listen); err != nil {
			return nil, err
		}
		if err := checkDeliver(rc.Deliver); err != nil {
			return nil, err
		}
	}

	if c.Relay.UnicastFromConsul && c.Receive.Enabled && c.Receive.Listen.IsValid() && c.Receive.Listen.Addr().IsUnspecified() {
		return nil, fmt.Errorf("receive.listen: %s: with relay.unicast_from_consul give this node's own address, which other nodes' relays send to", c.Receive.Listen)
	}

	// checks
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
		c.Checks = append(c.Checks, cs)
	}

	// hooks
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
		c.Hooks = append(c.Hooks, h)
	}

	// metrics, log
	c.Metrics.Address = r.Metrics.Address
	if c.Metrics.Address != "" {
		if _, err := netip.ParseAddrPort(c.Metrics.Address); err != nil {
			return nil, fmt.Errorf("metrics.address: %q: want IP:PORT, e.g. 127.0.0.1:9469 (empty: off)", c.Metrics.Address)
		}
	}
	c.Log = Log{Level: strings.ToLower(r.Log.Level), Format: strings.ToLower(r.Log.Format)}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return nil, fmt.Errorf("log.level: %q: want debug, info, warn or error", r.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return nil, fmt.Errorf("log.format: %q: want text or json", r.Log.Format)
	}
	return c, nil
}

// checkDeliver checks a delivery URL's form without opening it.
func checkDeliver(s string) error {
	if s == "stdout" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("receive.deliver: %q: %v", s, err)
	}
	switch u.Scheme {
	case "udp":
		if ap, err := netip.ParseAddrPort(u.Host); err != nil || ap.Port() == 0 {
			return fmt.Errorf("receive.deliver: %q: want udp://IP:PORT", s)
		}
		return nil
	case "unix", "unixgram":
		if u.Path == "" {
			return fmt.Errorf("receive.deliver: %q: want unix:///path/to/socket", s)
		}
		return nil
	}
	return fmt.Errorf("receive.deliver: %q: want udp://IP:PORT, unix:///PATH or stdout", s)
}
