package consul

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ClockRate is the clock-rate error ρ the timing inequalities allow for
// between two nodes' monotonic clocks (1%, far above real quartz drift).
const ClockRate = 0.01

// Timing holds the election's time parameters. Durations are written as
// strings in configuration ("800ms").
type Timing struct {
	// TFence: a holder that has not had a confirmation it sent within
	// TFence drops the VIP.
	TFence time.Duration
	// TWait: a contender binds the VIP no earlier than TWait after a
	// consistent read showed the key free (unless the last holder released
	// it cleanly).
	TWait time.Duration
	// ConfirmInterval between a holder's consistent reads of the key.
	ConfirmInterval time.Duration
	// RequestTimeout bounds every single Consul request.
	RequestTimeout time.Duration
	// DropBudget is the time allowed to remove the VIP and for scheduling
	// delays once the deadline passes (T_drop + T_sched).
	DropBudget time.Duration
	// HeartbeatTTL of the TTL check the daemon keeps passing; a dead or
	// hung daemon's session is invalidated this long after its last pass.
	HeartbeatTTL time.Duration
	// HeartbeatInterval between passes of the heartbeat check.
	HeartbeatInterval time.Duration
	// LockDelay is Consul's session lock-delay. It is not a fence (racing
	// acquires skip it); it only adds margin and must not exceed TWait.
	LockDelay time.Duration
	// SessionTTL is the session's TTL (0: none), 10s..24h, renewed every
	// TTL/2. Its checks cannot fence a holder that is cut off from the
	// Consul servers while its agent still gossips with the other agents:
	// the agent cannot report them critical and serfHealth stays passing.
	// The holder drops the VIP after TFence, but without a TTL its session
	// keeps the lock, and nobody takes over, until the cut heals. Consul
	// ends a session that was not renewed after up to 2·TTL.
	SessionTTL time.Duration
}

// Profiles are the named timings (election.profile). Each satisfies
// Validate; default and tolerant also the rule of the address-lifetime
// fence (t_fence ≥ request_timeout + 1.3 s: the VIP's address lifetime has
// whole seconds), fast only with the nftables fence (election.kernel_fence),
// which ends a lease to the millisecond. What each rides out and what a
// host failure costs is in docs/election.md; in short:
//
//	default   host failure ≈ t_wait (2.35 s); rides out ≈ 1.6 s of Consul outage
//	fast      host failure ≈ 0.8 s;          rides out ≈ 0.6 s (Consul servers close)
//	tolerant  host failure ≈ 8.5 s;          rides out ≈ 7.5 s (a Consul leader election at raft_multiplier 5)
//
// A host failure costs t_wait because a standby breaks the lock t_wait after
// the last lease renewal it saw (the lease proof); the outage a holder
// rides out is t_fence less a renewal interval, and less the address
// lifetime's expiry slack (0.3 s) where the lifetime, rounded down to whole
// seconds, ends first (default, tolerant; not fast, whose lease is below a
// second and fenced by nftables alone).
// Lock-delay is short: it is not a fence here (the lease proof, t_wait and
// the dropped marker are), and it delays every takeover after Consul ends a
// session (a check critical, a dead daemon's heartbeat).
var profiles = map[string]Timing{
	"default": {
		TFence:          2100 * time.Millisecond,
		TWait:           2350 * time.Millisecond,
		ConfirmInterval: 200 * time.Millisecond,
		RequestTimeout:  800 * time.Millisecond,
		// Removing the VIP takes about a millisecond, and the kernel
		// removes it before the deadline anyway (its lifetime ends
		// ExpirySlack early); this is slack for a slow scheduler.
		DropBudget:        200 * time.Millisecond,
		HeartbeatTTL:      2 * time.Second,
		HeartbeatInterval: 500 * time.Millisecond,
		LockDelay:         250 * time.Millisecond,
		SessionTTL:        10 * time.Second,
	},
	"fast": {
		TFence:            700 * time.Millisecond,
		TWait:             820 * time.Millisecond,
		ConfirmInterval:   100 * time.Millisecond,
		RequestTimeout:    200 * time.Millisecond,
		DropBudget:        100 * time.Millisecond,
		HeartbeatTTL:      time.Second,
		HeartbeatInterval: 300 * time.Millisecond,
		LockDelay:         100 * time.Millisecond,
		SessionTTL:        10 * time.Second,
	},
	"tolerant": {
		TFence:            8 * time.Second,
		TWait:             8500 * time.Millisecond,
		ConfirmInterval:   500 * time.Millisecond,
		RequestTimeout:    2 * time.Second,
		DropBudget:        250 * time.Millisecond,
		HeartbeatTTL:      3 * time.Second,
		HeartbeatInterval: time.Second,
		LockDelay:         time.Second,
		SessionTTL:        15 * time.Second,
	},
}

// ProfileNames lists the profiles, default first.
func ProfileNames() []string { return []string{"default", "fast", "tolerant"} }

// ErrUnknownProfile: Profile was given a name it does not know.
var ErrUnknownProfile = errors.New("unknown timing profile")

// Profile returns the named timing.
func Profile(name string) (Timing, error) {
	t, ok := profiles[name]
	if !ok {
		return Timing{}, fmt.Errorf("%w %q: want %s", ErrUnknownProfile, name, strings.Join(ProfileNames(), ", "))
	}
	return t, nil
}

// DefaultTiming is the default profile.
func DefaultTiming() Timing { return profiles["default"] }

// MinTWait is the smallest TWait that is safe for t's TFence and DropBudget:
// TWait·(1−ρ) ≥ TFence·(1+ρ) + DropBudget.
func (t Timing) MinTWait() time.Duration {
	return time.Duration((float64(t.TFence)*(1+ClockRate) + float64(t.DropBudget)) / (1 - ClockRate))
}

// Validate checks the inequalities the safety argument needs; each error
// names the parameter and explains the rule.
func (t Timing) Validate() error {
	pos := map[string]time.Duration{
		"t_fence": t.TFence, "t_wait": t.TWait, "confirm_interval": t.ConfirmInterval,
		"request_timeout": t.RequestTimeout, "heartbeat_ttl": t.HeartbeatTTL, "heartbeat_interval": t.HeartbeatInterval,
	}
	for _, name := range []string{"t_fence", "t_wait", "confirm_interval", "request_timeout", "heartbeat_ttl", "heartbeat_interval"} {
		if pos[name] <= 0 {
			return fmt.Errorf("%s: %s must be positive", name, pos[name])
		}
	}
	switch {
	case t.DropBudget < 10*time.Millisecond:
		return fmt.Errorf("drop_budget: %s is below 10ms; removing the VIP and being scheduled take time", t.DropBudget)
	case t.TWait < t.MinTWait():
		return fmt.Errorf("t_wait: %s is unsafe: a new holder must wait at least t_fence·(1+ρ)+drop_budget over (1−ρ) = %s (t_fence %s, drop_budget %s, ρ %.0f%%) so the old holder has dropped the VIP first",
			t.TWait, t.MinTWait().Round(time.Millisecond), t.TFence, t.DropBudget, ClockRate*100)
	case t.RequestTimeout >= t.TFence:
		return fmt.Errorf("request_timeout: %s must be shorter than t_fence %s, or one slow request drops the VIP", t.RequestTimeout, t.TFence)
	case t.TFence < 2*t.ConfirmInterval+t.RequestTimeout:
		return fmt.Errorf("t_fence: %s is below 2·confirm_interval + request_timeout = %s: one lost confirmation would drop the VIP", t.TFence, 2*t.ConfirmInterval+t.RequestTimeout)
	case t.HeartbeatInterval*3 > t.HeartbeatTTL:
		return fmt.Errorf("heartbeat_interval: %s is more than heartbeat_ttl/3 (%s): one late heartbeat would fence a healthy holder", t.HeartbeatInterval, t.HeartbeatTTL/3)
	case t.LockDelay < 0 || t.LockDelay > t.TWait:
		return fmt.Errorf("lock_delay: %s must be between 0 and t_wait %s (it is not a fence; more only slows failover)", t.LockDelay, t.TWait)
	case t.SessionTTL != 0 && (t.SessionTTL < 10*time.Second || t.SessionTTL > 24*time.Hour):
		return fmt.Errorf("session_ttl: %s is out of range 10s..24h (or 0 for none)", t.SessionTTL)
	}
	return nil
}
