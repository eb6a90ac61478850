package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// driftgate is the path of the binary under test, built once by TestMain.
var driftgate string

// TestMain builds the driftgate binary, or runs a helper role when the test
// binary is re-executed inside a namespace (DRIFTGATE_E2E_ROLE).
func TestMain(m *testing.M) {
	if role := os.Getenv("DRIFTGATE_E2E_ROLE"); role != "" {
		if err := runRole(role, os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "driftgate-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// World-readable: the agent tests run it as nobody.
	os.Chmod(dir, 0o755)
	driftgate = filepath.Join(dir, "driftgate")
	build := exec.Command("go", "build", "-o", driftgate, "../cmd/driftgate")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building driftgate:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runRole runs a helper inside a namespace.
//
//	feed ADDR:PORT RATE MAX  sends "1", "2", … at RATE per second.
func runRole(role string, args []string) error {
	switch role {
	case "feed":
		// feed ADDR:PORT RATE MAX: sends "1", "2", … at RATE per second
		// until MAX datagrams or a minute has passed.
		if len(args) != 3 {
			return fmt.Errorf("feed: want ADDR:PORT RATE MAX")
		}
		rate, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		maxN, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		c, err := net.Dial("udp", args[0])
		if err != nil {
			return err
		}
		defer c.Close()
		start := time.Now()
		for i := 1; i <= maxN && time.Since(start) < time.Minute; i++ {
			if due := start.Add(time.Duration(i) * time.Second / time.Duration(rate)); time.Until(due) > 0 {
				time.Sleep(time.Until(due))
			}
			c.Write([]byte(strconv.Itoa(i))) // errors (no route during failover) are expected
		}
		return nil
	}
	return fmt.Errorf("unknown role %q", role)
}

// selfCommand runs this test binary in role inside the namespace ns.
func selfCommand(ns, role string, args ...string) *exec.Cmd {
	self, _ := os.Executable()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, self}, args...)...)
	cmd.Env = append(os.Environ(), "DRIFTGATE_E2E_ROLE="+role)
	return cmd
}
