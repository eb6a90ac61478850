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
// of the service's healthy instances, sorted, each time that set changes,
// until ctx ends; then it returns nil. It is how a relay fans out where
// multicast is forbidden. fn runs on WatchReceivers' goroutine; when it
// fails, the next answer offers the set again.
func WatchReceivers(ctx context.Context, c *api.Client, service string, reqTimeout time.Duration, log *slog.Logger,
	fn func([]netip.AddrPort) error) error {
	var current []netip.AddrPort
	first := true
	watch(ctx, reqTimeout, func(q *api.QueryOptions) (*api.QueryMeta, bool, error) {
		entries, meta, err := c.Health().Service(service, "", true, q)
		if err != nil {
			return nil, false, fmt.Errorf("reading the healthy instances of %s: %w", service, err)
		}
		var dests []netip.AddrPort
		for _, e := range entries {
			if ap, err := netip.ParseAddrPort(e.Service.Meta[metaReceive]); err == nil {
				dests = append(dests, ap)
			}
		}
		slices.SortFunc(dests, func(x, y netip.AddrPort) int { return x.Compare(y) })
		if first || !slices.Equal(dests, current) {
			if err := fn(dests); err != nil {
				log.Error("updating the relay's receivers", "err", err)
			} else {
				first, current = false, dests
				log.Info("relay receivers from Consul", "receivers", fmt.Sprint(dests))
			}
		}
		return meta, false, nil
	}, func(err error, attempt int, retryIn time.Duration) {
		log.Warn("watching the service's receivers", "err", err, "attempt", attempt, "retry_in", retryIn)
	})
	return nil
}
