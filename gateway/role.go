package gateway

// Role is this node's part in the cluster. The zero value is invalid, so a
// role that was never set is caught.
type Role uint8

// Roles.
const (
	RoleInvalid   Role = iota
	RoleStandby        // not holding the lock; receiving the feed
	RoleCandidate      // holding the lock, waiting out T_wait before binding
	RolePrimary        // holding the lock and the VIP; relaying
	RoleFenced         // lost it: the VIP is gone, cleaning up
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
