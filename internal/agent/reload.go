package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"driftgate/consul"
	"driftgate/gateway"
	"driftgate/internal/config"
)

// ReloadReport says what a reload changed: what took effect, and what only
// a restart applies.
type ReloadReport struct {
	Applied []string `json:"applied"`
	Restart []string `json:"restart"`
}

// String is the report as one line.
func (r ReloadReport) String() string {
	var parts []string
	if len(r.Applied) > 0 {
		parts = append(parts, "applied: "+strings.Join(r.Applied, ", "))
	}
	if len(r.Restart) > 0 {
		parts = append(parts, "needs a restart (systemctl restart driftgate): "+strings.Join(r.Restart, ", "))
	}
	if len(parts) == 0 {
		return "nothing changed"
	}
	return strings.Join(parts, "; ")
}

// handledByCaller are the parts of the configuration the process around
// the agent applies itself (the logger, the metrics listener).
var handledByCaller = []string{"Log.Level", "Metrics.Address"}

// Apply takes what a valid new configuration changes and can change
// without a step-down — hooks, the user's checks (definitions, not names:
// the session is bound to them), the relay's allowlist and unicast
// receivers, the receiver's source prefixes, the VIPs' announce settings
// (from the next term) — and reports the rest as needing a restart. The
// one step that can fail, registering the checks again with Consul, goes
// first: a failure leaves everything as it was. Log.Level and
// Metrics.Address are left to the caller (handledByCaller), reported
// neither way.
func (a *Agent) Apply(ctx context.Context, nc *config.Config) (ReloadReport, error) {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	a.mu.Lock()
	cur := a.live
	a.mu.Unlock()
	if cur == nil {
		cur = a.cfg
	}
	next := *cur // what runs after this reload
	var rep ReloadReport
	var apply []func()
	for _, k := range config.Changed(cur, nc) {
		switch {
		case slices.Contains(handledByCaller, k):
			continue
		case k == "Hooks":
			apply = append(apply, func() { a.hooks.set(nc.Hooks) })
			next.Hooks = nc.Hooks
		case k == "Checks":
			if a.reg == nil {
				rep.Restart = append(rep.Restart, "checks (not registered with Consul yet)")
				continue
			}
			err := a.reg.UpdateChecks(ctx, nc.Checks)
			if errors.Is(err, consul.ErrChecksChanged) {
				rep.Restart = append(rep.Restart, "checks (added or removed: the election's session is bound to the ones it was created with)")
				continue
			}
			if err != nil {
				return ReloadReport{}, fmt.Errorf("registering the checks again: %w", err)
			}
			next.Checks = nc.Checks
		case k == "Relay.Allow":
			apply = append(apply, func() { a.relay.SetAllow(nc.Relay.Allow) })
			next.Relay.Allow = nc.Relay.Allow
		case k == "Relay.Unicast":
			if err := a.relay.SetStaticUnicast(a.remoteReceivers(nc.Relay.Unicast)); err != nil {
				return ReloadReport{}, fmt.Errorf("relay.unicast: %w", err)
			}
			next.Relay.Unicast = nc.Relay.Unicast
		case k == "Receive.Sources" && a.recv != nil:
			src := nc.Receive.Sources
			apply = append(apply, func() { a.recv.SetConfigSources(a.sources(src)) })
			next.Receive.Sources = src
		case k == "Egress.Allow" && a.egress != nil:
			// Valid with the ports' destinations: the whole section was
			// validated, and a change of ports needs a restart.
			allow := nc.Egress.Allow
			apply = append(apply, func() { a.egress.SetAllow(allow) })
			next.Egress.Allow = allow
		case (k == "Egress.Rate" || k == "Egress.Burst") && a.egress != nil:
			rate, burst := nc.Egress.Rate, nc.Egress.Burst
			apply = append(apply, func() { a.egress.SetRate(rate, burst) })
			next.Egress.Rate, next.Egress.Burst = rate, burst
		case k == "VIPs" && sameVIPsButAnnounce(cur.VIPs, nc.VIPs):
			next.VIPs = nc.VIPs
			k = "VIPs (announce settings, from the next term)"
		default:
			rep.Restart = append(rep.Restart, k)
			continue
		}
		rep.Applied = append(rep.Applied, k)
	}
	for _, f := range apply {
		f()
	}
	a.mu.Lock()
	a.live = &next
	a.mu.Unlock()
	return rep, nil
}

// sources are the receiver's source prefixes: the configured ones and the
// VIPs (a relay may send from a VIP).
func (a *Agent) sources(cfg gateway.Allowlist) gateway.Allowlist {
	out := slices.Clone(cfg)
	for _, v := range a.cfg.VIPs {
		out = append(out, netip.PrefixFrom(v.Prefix.Addr(), v.Prefix.Addr().BitLen()))
	}
	return out
}

// sameVIPsButAnnounce: the VIPs differ in their announce settings only.
func sameVIPsButAnnounce(a, b []config.VIP) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		x.Announce = y.Announce
		if !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}
