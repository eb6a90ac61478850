package consul

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/consul/api"
)

// WatchEpochs calls fn with the epoch of each term of the leader key that
// Consul shows (the key's ModifyIndex while a session holds it: renewals
// write the lease record, not the key), in the order seen, until ctx ends;
// then it returns nil. Receivers accept only the epochs it confirms, so a
// stray frame with a made-up epoch cannot fence the real primary (see
// gateway.Receiver.ConfirmEpoch). A term too short for a blocking query to
// see is not reported: its frames are then not accepted, and the next
// term's repair does not ask for them either. A receive on recheck (nil:
// none) reads the key again at once: the receiver asks when frames of an
// epoch below the one it follows keep coming, which a rebuilt Consul
// cluster (its indexes start low) causes and a blocking query on the old
// index would not see until its wait time ends.
func WatchEpochs(ctx context.Context, c *api.Client, key string, reqTimeout time.Duration, log *slog.Logger, recheck <-chan struct{}, fn func(epoch uint64)) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var last uint64
	watch(ctx, reqTimeout, recheck, func(q *api.QueryOptions) (*api.QueryMeta, bool, error) {
		pair, meta, err := c.KV().Get(key, q)
		if err != nil {
			return nil, false, fmt.Errorf("watching %s for the primary's epoch: %w", key, err)
		}
		if pair != nil && pair.Session != "" && pair.ModifyIndex != last {
			last = pair.ModifyIndex
			fn(last)
		}
		return meta, false, nil
	}, func(err error, attempt int, retryIn time.Duration) {
		log.Warn("watching the leader key for epochs", "err", err, "attempt", attempt, "retry_in", retryIn)
	})
	return nil
}
