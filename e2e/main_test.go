package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/mdlayher/arp"

	"driftgate/internal/testkit"
)

// driftgate is the path of the binary under test, built once by TestMain.
var driftgate string

// TestMain builds the driftgate binary, or runs a helper role when the test
// binary is re-executed inside a namespace (Host.Self).
func TestMain(m *testing.M) {
	testkit.RunRole(map[string]testkit.Role{"feed": feedRole, "garp": garpRole})
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

// feedRole: feed ADDR:PORT RATE MAX sends "1", "2", … at RATE per second until MAX
// datagrams have gone or MAX/RATE + 10 s have passed.
func feedRole(args []string) error {
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
	limit := time.Duration(maxN/rate+10) * time.Second
	for i := 1; i <= maxN && time.Since(start) < limit; i++ {
		if due := start.Add(time.Duration(i) * time.Second / time.Duration(rate)); time.Until(due) > 0 {
			time.Sleep(time.Until(due))
		}
		c.Write([]byte(strconv.Itoa(i))) // errors (no route during failover) are expected
	}
	return nil
}

// garpRole: garp IFACE IP COUNT claims IP for this host's MAC with COUNT gratuitous
// ARP replies, 100 ms apart (a rogue host).
func garpRole(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("garp: want IFACE IP COUNT")
	}
	ifi, err := net.InterfaceByName(args[0])
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(args[1])
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	c, err := arp.Dial(ifi)
	if err != nil {
		return err
	}
	defer c.Close()
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	p, err := arp.NewPacket(arp.OperationReply, ifi.HardwareAddr, ip, bcast, ip)
	if err != nil {
		return err
	}
	for i := range n {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		if err := c.WriteTo(p, bcast); err != nil {
			return err
		}
	}
	return nil
}
