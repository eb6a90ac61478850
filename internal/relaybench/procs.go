package relaybench

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// forceRcvBuf sets a receive buffer beyond net.core.rmem_max (needs
// CAP_NET_ADMIN): with the default 208 KiB the sink, not the relay, would
// drop bursts.
func forceRcvBuf(c *net.UDPConn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_RCVBUFFORCE %d on sink: %w", n, serr)
	}
	return nil
}

// CPUTime returns the CPU time, in nanoseconds, that every thread of the
// process has used so far (schedstat is exact, unlike the 10 ms ticks of
// /proc/PID/stat).
func CPUTime(pid int) (uint64, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("reading schedstat of pid %d: no tasks (%v)", pid, err)
	}
	var total uint64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // thread exited meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing %s: %w", t, err)
		}
		total += ns
	}
	return total, nil
}
