package gateway

import "net/netip"

// tokenBucket lets through rate units a second, up to burst at once; the
// clock is the caller's (ns), one clock per bucket.
type tokenBucket struct {
	tokens float64
	last   int64
}

// take reports whether n units may pass at now, and if so takes them.
func (b *tokenBucket) take(n, rate, burst float64, now int64) bool {
	b.tokens = min(burst, b.tokens+float64(now-b.last)/1e9*rate)
	b.last = now
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// maxBuckets bounds a per-address bucket map: those it limits are few (the
// allowlisted), and it must not grow without bound under a spray.
const maxBuckets = 4096

// buckets is a token bucket per address.
type buckets map[netip.Addr]*tokenBucket

// of returns a's bucket, new ones full.
func (bs buckets) of(a netip.Addr, burst float64, now int64) *tokenBucket {
	b := bs[a]
	if b == nil {
		if len(bs) >= maxBuckets {
			clear(bs)
		}
		b = &tokenBucket{tokens: burst, last: now}
		bs[a] = b
	}
	return b
}
