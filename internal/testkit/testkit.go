package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// WaitFor polls cond until it holds and returns how long that took; after
// d it fails the test, naming what it waited for. Tests wait for
// conditions, never for a fixed time.
func WaitFor(tb testing.TB, what string, d time.Duration, cond func() bool) time.Duration {
	tb.Helper()
	took, ok := Poll(d, cond)
	if !ok {
		tb.Fatalf("timed out after %s waiting for %s", d, what)
	}
	return took
}

// Poll checks cond every 5 ms for up to d; it reports how long it waited
// and whether cond came to hold (for callers that say more on failure).
func Poll(d time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start), true
}

// Role is a helper the test binary runs instead of its tests when Command
// re-executes it; args are the command's arguments.
type Role func(args []string) error

// roleEnv names the role a re-executed test binary runs.
const roleEnv = "DRIFTGATE_TEST_ROLE"

// RunRole is called first in a TestMain: when the binary was started by
// Command, it runs the named role and exits (status 1, the error on
// stderr, if it fails; 2 for a role it does not know). Otherwise it
// returns and the tests run.
func RunRole(roles map[string]Role) {
	name := os.Getenv(roleEnv)
	if name == "" {
		return
	}
	role, ok := roles[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "testkit: unknown role %q\n", name)
		os.Exit(2)
	}
	if err := role(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Command returns a command that runs this test binary as role with args;
// wrapper, if given, comes first (e.g. ip netns exec NS, or setpriv …
// --), and the role's environment passes through it.
func Command(wrapper []string, role string, args ...string) *exec.Cmd {
	argv := append(append([]string(nil), wrapper...), Argv(role, args...)...)
	return exec.Command(argv[0], argv[1:]...)
}

// Argv is the command line that runs this test binary as role with args,
// for callers that start processes from an argument list (env sets the
// role, so it survives any wrapper put in front).
func Argv(role string, args ...string) []string {
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	return append([]string{"env", roleEnv + "=" + role, self}, args...)
}
