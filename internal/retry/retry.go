package retry

import (
	"context"
	"time"
)

// Base and Cap bound the backoff schedule: Base doubling per attempt, at
// most Cap. Cap is small because every caller is on a failover path: a
// Consul agent that comes back must be noticed within seconds.
const (
	Base = 100 * time.Millisecond
	Cap  = 5 * time.Second
)

// Backoff is the wait before retry n (1 for the first retry): 100ms, 200ms,
// 400ms, … capped at 5s. n below 1 counts as 1.
func Backoff(n int) time.Duration {
	n = max(n, 1)
	return min(Base<<min(n-1, 6), Cap)
}

// Sleep waits d or until ctx ends; it reports whether the whole d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
