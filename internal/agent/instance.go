package agent

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// ErrAlreadyRunning means another agent for the node holds the instance lock.
var ErrAlreadyRunning = errors.New("another driftgate agent for this node is running")

// LockInstance takes the node's instance lock, so that a second agent —
// which would remove the running one's VIP at start-up — or a clean-up
// while the agent runs fails instead. The lock is an abstract unix socket
// (@driftgate-agent-NODE): it needs no writable directory, whoever starts
// the second agent (systemd or an operator by hand), and it goes with the
// process, so a crash never leaves it behind. It is per network namespace,
// like the VIP it protects.
func LockInstance(node string) (release func(), err error) {
	name := "@driftgate-agent-" + node
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("%w (%s is bound)", ErrAlreadyRunning, name)
		}
		return nil, fmt.Errorf("instance lock %s: %w", name, err)
	}
	return func() { l.Close() }, nil
}
