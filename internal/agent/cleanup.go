package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"

	"driftgate/consul"
	"driftgate/internal/config"
	"driftgate/netvip"
)

// CleanupResult is what Cleanup did.
type CleanupResult struct {
	Removed  []string // VIPs that were on this host and are gone now
	Released bool     // the dead run's lock was released
	Clean    bool     // … as a clean release (it had bound, and the VIP is gone)
	// ReleaseErr is why the lock could not be checked or released. It is
	// not an error of the clean-up: without the release the dead run's
	// heartbeat check fences it; removing the VIP is what matters.
	ReleaseErr error
}

// Cleanup is what follows a run of the agent on this node that is gone:
// it removes the VIPs that run left, and — only if every removal
// succeeded — releases the leader lock its session still holds, cleanly if
// it had bound the VIP, so a standby takes over now instead of after the
// heartbeat check. The agent calls it at start-up and `driftgate cleanup`
// (systemd's ExecStopPost) after a crash; both hold the instance lock, so
// the run it cleans up after is really gone. An error says a VIP may still
// be on the host (EPERM names the capability).
func Cleanup(ctx context.Context, cfg *config.Config, client *api.Client) (CleanupResult, error) {
	var res CleanupResult
	var errs []error
	for _, v := range cfg.VIPs {
		m, err := netvip.New(v.VIP)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		removed, err := m.Cleanup()
		m.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if removed {
			res.Removed = append(res.Removed, v.String())
		}
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("removing the VIPs of an earlier run: %w", errors.Join(errs...))
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res.Clean = len(res.Removed) > 0
	res.Released, res.ReleaseErr = consul.ReleaseAbandoned(rctx, client, cfg.Consul.LeaderKey(), cfg.Node, res.Clean)
	if !res.Released {
		res.Clean = false
	}
	if cfg.Election.KernelFence == config.FenceNFTables {
		// Its kernel fence, now that no VIP is left to fence; after the
		// release, which a standby waits for: deleting a table waits for
		// the kernel's RCU grace period (about 10 ms).
		if err := netvip.RemoveFence(); err != nil {
			return res, fmt.Errorf("removing the kernel fence of an earlier run: %w", err)
		}
	}
	return res, nil
}
