package agent

import (
	"log/slog"
	"maps"
	"sync"
	"time"
)

// Role is this node's part in the cluster. The zero value is invalid, so a
// role that was never set is caught.
type Role uint8

// Roles.
const (
	RoleInvalid   Role = iota
	RoleStandby        // not holding the lock; receiving the feed
	RoleCandidate      // holding the lock, waiting out T_wait before binding
	RolePrimary        // holding the lock and the VIP; relaying
	RoleFenced         // lost it: removing the VIP, or a removal failed
	RoleStopping       // shutting down
)

var roleNames = [...]string{"invalid", "standby", "candidate", "primary", "fenced", "stopping"}

// String returns the role as used in logs, metrics and hooks.
func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return "invalid"
}

// Roles lists the valid roles, for metrics.
func Roles() []Role { return []Role{RoleStandby, RoleCandidate, RolePrimary, RoleFenced, RoleStopping} }

// legal is every role change the agent may make. Anything else is a bug in
// the role loop: it is logged as an error and counted, never hidden.
var legal = map[Role][]Role{
	// Acquired the lock.
	RoleStandby: {RoleCandidate, RoleStopping},
	// Bound the VIP; lost the lock before binding (Lost); or must drop
	// although the bind failed (the election counts the term as bound).
	RoleCandidate: {RolePrimary, RoleStandby, RoleFenced, RoleStopping},
	// Must drop.
	RolePrimary: {RoleFenced, RoleStopping},
	// Dropped the VIP; or a removal failed and a new term begins (its bind
	// replaces the address).
	RoleFenced:   {RoleStandby, RoleCandidate, RoleStopping},
	RoleStopping: nil,
}

// Legal reports whether the role loop may change from one role to another.
func Legal(from, to Role) bool {
	for _, r := range legal[from] {
		if r == to {
			return true
		}
	}
	return false
}

// roleState is the node's role and its history: changed only by set, the
// one place a role changes.
type roleState struct {
	mu          sync.Mutex
	role        Role
	epoch       uint64
	since       time.Time
	transitions map[string]uint64 // "from>to" → count
	reasons     map[string]uint64 // reason → count
	illegal     uint64
}

func newRoleState(now time.Time) *roleState {
	return &roleState{role: RoleStandby, since: now, transitions: map[string]uint64{}, reasons: map[string]uint64{}}
}

// set changes the role and returns the one before. An illegal change is
// made anyway — the role must say what the node does — but logged as a bug
// and counted.
func (s *roleState) set(to Role, reason string, epoch uint64, now time.Time, log *slog.Logger) Role {
	s.mu.Lock()
	from := s.role
	ok := Legal(from, to)
	s.role, s.epoch, s.since = to, epoch, now
	s.transitions[from.String()+">"+to.String()]++
	s.reasons[reason]++
	if !ok {
		s.illegal++
	}
	s.mu.Unlock()
	if !ok {
		log.Error("BUG: illegal role change", "from", from.String(), "to", to.String(), "reason", reason, "epoch", epoch)
	}
	return from
}

// get returns the role, its epoch and since when.
func (s *roleState) get() (Role, uint64, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.role, s.epoch, s.since
}

// counts returns copies of the transition and reason counts and the number
// of illegal changes.
func (s *roleState) counts() (transitions, reasons map[string]uint64, illegal uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.transitions), maps.Clone(s.reasons), s.illegal
}
