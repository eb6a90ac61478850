package consul

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"driftgate/internal/retry"
)

// blockWait is how long a blocking query waits for a change. Shorter than
// Consul's 5-minute default so that a wedged connection costs at most this.
const blockWait = 30 * time.Second

// blocking is the state of one series of blocking queries: the one copy of
// their rules. An answer's index is the next query's wait index, except
// that an index that went backwards (a snapshot restore, a new leader)
// starts over, and an index of 0 is never waited on as if it were a real
// one; after an error the next query does not block and waits follow
// retry.Backoff.
type blocking struct {
	idx   uint64
	fails int
}

// options returns the next query's options and its context, which ends
// blockWait plus reqTimeout from now: a blocking query needs a deadline of
// its own like every other request (the leader may hang).
func (b *blocking) options(ctx context.Context, reqTimeout time.Duration) (*api.QueryOptions, context.CancelFunc) {
	qctx, cancel := context.WithTimeout(ctx, blockWait+reqTimeout)
	return (&api.QueryOptions{WaitIndex: b.idx, WaitTime: blockWait}).WithContext(qctx), cancel
}

// answered records a successful answer.
func (b *blocking) answered(meta *api.QueryMeta) {
	b.fails = 0
	switch {
	case meta == nil || meta.LastIndex < b.idx:
		b.idx = 0
	case meta.LastIndex == 0:
		b.idx = 1
	default:
		b.idx = meta.LastIndex
	}
}

// failed records an error; it returns how many failures in a row there
// have been and how long to wait before the next query.
func (b *blocking) failed() (attempt int, wait time.Duration) {
	b.fails++
	b.idx = 0
	return b.fails, retry.Backoff(b.fails)
}

// reset makes the next query return at once (the caller expects a change
// that no index will announce, such as the end of a lock-delay).
func (b *blocking) reset() { b.idx = 0 }

// watch runs query as a series of blocking queries until ctx ends (it then
// returns nil) or query reports done. onErr, if set, hears each failure
// before the backoff. A receive on recheck (nil: none) ends the query in
// flight and asks again without a wait index: after a Consul cluster is
// rebuilt its indexes start low, and a query waiting on an old, higher
// index would otherwise see nothing until its wait time ends.
func watch(ctx context.Context, reqTimeout time.Duration, recheck <-chan struct{}, query func(*api.QueryOptions) (*api.QueryMeta, bool, error),
	onErr func(err error, attempt int, retryIn time.Duration)) {
	var b blocking
	for ctx.Err() == nil {
		q, cancel := b.options(ctx, reqTimeout)
		var rechecked atomic.Bool
		answered := make(chan struct{})
		if recheck != nil {
			go func() {
				select {
				case <-recheck:
					rechecked.Store(true)
					cancel()
				case <-answered:
				}
			}()
		}
		meta, done, err := query(q)
		close(answered)
		cancel()
		if rechecked.Load() {
			b.reset()
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n, wait := b.failed()
			if onErr != nil {
				onErr(err, n, wait)
			}
			retry.Sleep(ctx, wait)
			continue
		}
		if done {
			return
		}
		b.answered(meta)
	}
}
