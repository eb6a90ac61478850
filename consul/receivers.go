package consul

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Instances is what WatchReceivers reads of the service's instances.
type Instances struct {
	// Receivers: the unicast receivers (ServiceConfig.Receive) of the
	// healthy instances, sorted.
	Receivers []netip.AddrPort
	// Repair: each node's receiver repair address (its address and
	// ServiceConfig.RepairPort), by node name.
	Repair map[string]netip.AddrPort
	// Sources: every instance's node address and registered sources
	// (ServiceConfig.Sources), healthy or not (a node with a critical check
	// still receives the feed and may ask for repairs), sorted: where
	// frames and repair requests may come from.
	Sources []netip.Addr
}

func (in Instances) equal(o Instances) bool {
	return slices.Equal(in.Receivers, o.Receivers) && maps.Equal(in.Repair, o.Repair) && slices.Equal(in.Sources, o.Sources)
}

// WatchReceivers calls fn with the service's instances each time they
// change, until ctx ends; then it returns nil. It is how a relay fans out
// where multicast is forbidden, whom it answers repair requests from, and
// whom a receiver asks after a takeover. fn runs on WatchReceivers'
// goroutine; when it fails, the next answer offers the instances again.
func WatchReceivers(ctx context.Context, c *api.Client, service string, reqTimeout time.Duration, log *slog.Logger,
	fn func(Instances) error) error {
	var current Instances
	first := true
	watch(ctx, reqTimeout, nil, func(q *api.QueryOptions) (*api.QueryMeta, bool, error) {
		entries, meta, err := c.Health().Service(service, "", false, q)
		if err != nil {
			return nil, false, fmt.Errorf("reading the instances of %s: %w", service, err)
		}
		in := Instances{Repair: map[string]netip.AddrPort{}}
		for _, e := range entries {
			addr := e.Service.Address
			if addr == "" {
				addr = e.Node.Address
			}
			for _, src := range strings.Split(e.Service.Meta[metaSources], ",") {
				if a, err := netip.ParseAddr(strings.TrimSpace(src)); err == nil {
					in.Sources = append(in.Sources, a)
				}
			}
			a, aerr := netip.ParseAddr(addr)
			if aerr == nil {
				in.Sources = append(in.Sources, a)
				if port, err := strconv.ParseUint(e.Service.Meta[metaRepairPort], 10, 16); err == nil && port != 0 {
					in.Repair[e.Service.Meta[metaNode]] = netip.AddrPortFrom(a, uint16(port))
				}
			}
			if e.Checks.AggregatedStatus() != api.HealthPassing {
				continue
			}
			if ap, err := netip.ParseAddrPort(e.Service.Meta[metaReceive]); err == nil {
				in.Receivers = append(in.Receivers, ap)
			}
		}
		slices.SortFunc(in.Receivers, func(x, y netip.AddrPort) int { return x.Compare(y) })
		slices.SortFunc(in.Sources, func(x, y netip.Addr) int { return x.Compare(y) })
		in.Sources = slices.Compact(in.Sources)
		if first || !in.equal(current) {
			if err := fn(in); err != nil {
				log.Error("updating the relay's receivers", "err", err)
			} else {
				first, current = false, in
				log.Info("the service's instances from Consul", "receivers", fmt.Sprint(in.Receivers), "sources", fmt.Sprint(in.Sources), "repair", fmt.Sprint(in.Repair))
			}
		}
		return meta, false, nil
	}, func(err error, attempt int, retryIn time.Duration) {
		log.Warn("watching the service's instances", "err", err, "attempt", attempt, "retry_in", retryIn)
	})
	return nil
}
