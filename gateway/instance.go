package gateway

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrAlreadyRunning means another agent for the node holds the instance lock.
var ErrAlreadyRunning = errors.New("another driftgate agent for this node is running")

// runtimeDir is where instance locks live: $RUNTIME_DIRECTORY (systemd's
// RuntimeDirectory=), else /run/driftgate.
func runtimeDir() string {
	if d := os.Getenv("RUNTIME_DIRECTORY"); d != "" {
		return d
	}
	return "/run/driftgate"
}

// LockInstance takes the node's instance lock (flock), so that a second
// agent — which would remove the running one's VIP at start-up — or a
// clean-up while the agent runs fails instead. The lock goes with the
// process, so a crash never leaves it behind.
func LockInstance(node string) (release func(), err error) {
	dir := runtimeDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("instance lock: %w", err)
	}
	path := filepath.Join(dir, "agent-"+node+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("instance lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (lock %s held)", ErrAlreadyRunning, path)
		}
		return nil, fmt.Errorf("instance lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
