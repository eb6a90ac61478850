package consul

import (
	"fmt"
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

// DefaultTiming satisfies every inequality of Validate. A daemon that dies
// is replaced after about HeartbeatTTL + TWait (≈ 5.5 s); a holder cut off
// from Consul drops within TFence (the agent's kernel lifetime for the VIP
// ends 0.35 s earlier still).
func DefaultTiming() Timing {
	return Timing{
		TFence:            3 * time.Second,
		TWait:             3500 * time.Millisecond,
		ConfirmInterval:   250 * time.Millisecond,
		RequestTimeout:    time.Second,
		DropBudget:        250 * time.Millisecond,
		HeartbeatTTL:      2 * time.Second,
		HeartbeatInterval: 500 * time.Millisecond,
		LockDelay:         time.Second,
		SessionTTL:        10 * time.Second,
	}
}

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
