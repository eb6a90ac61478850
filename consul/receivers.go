package consul

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
)

// WatchReceivers calls fn with the unicast receivers (ServiceConfig.Receive)
// of the service's healthy instances, sorted, and with the addresses of
// all its instances' nodes (healthy or not: a node with a critical check
// still receives the feed and may ask for repairs), each time either set
// changes, until ctx ends; then it returns nil. It is how a relay fans out
// where multicast is forbidden and whom it answers repair requests from.
// fn runs on WatchReceivers' goroutine; when it fails, the next answer
// offers the sets again.
func WatchReceivers(ctx context.Context, c *api.Client, service string, reqTimeout time.Duration, log *slog.Logger,
	fn func(receivers []netip.AddrPort, nodes []netip.Addr) error) error {
	var current []netip.AddrPort
	var currentNodes []netip.Addr
	first := true
	watch(ctx, reqTimeout, func(q *api.QueryOptions) (*api.QueryMeta, bool, error) {
		entries, meta, err := c.Health().Service(service, "", false, q)
		if err != nil {
			return nil, false, fmt.Errorf("reading the instances of %s: %w", service, err)
		}
		var dests []netip.AddrPort
		var nodes []netip.Addr
		for _, e := range entries {
			addr := e.Service.Address
			if addr == "" {
				addr = e.Node.Address
			}
			if a, err := netip.ParseAddr(addr); err == nil {
				nodes = append(nodes, a)
			}
			if e.Checks.AggregatedStatus() != api.HealthPassing {
				continue
			}
			if ap, err := netip.ParseAddrPort(e.Service.Meta[metaReceive]); err == nil {
				dests = append(dests, ap)
			}
		}
		slices.SortFunc(dests, func(x, y netip.AddrPort) int { return x.Compare(y) })
		slices.SortFunc(nodes, func(x, y netip.Addr) int { return x.Compare(y) })
		nodes = slices.Compact(nodes)
		if first || !slices.Equal(dests, current) || !slices.Equal(nodes, currentNodes) {
			if err := fn(dests, nodes); err != nil {
				log.Error("updating the relay's receivers", "err", err)
			} else {
				first, current, currentNodes = false, dests, nodes
				log.Info("relay receivers from Consul", "receivers", fmt.Sprint(dests), "nodes", fmt.Sprint(nodes))
			}
		}
		return meta, false, nil
	}, func(err error, attempt int, retryIn time.Duration) {
		log.Warn("watching the service's instances", "err", err, "attempt", attempt, "retry_in", retryIn)
	})
	return nil
}
