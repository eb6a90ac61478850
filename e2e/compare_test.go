package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"driftgate/internal/netlab"
)

// mergedGap is the longest pause in deliveries across sinks after t0.
func mergedGap(t0 time.Time, sinks ...*sink) time.Duration {
	var ts []time.Time
	for _, s := range sinks {
		s.mu.Lock()
		for _, a := range s.at {
			if !a.t.Before(t0) {
				ts = append(ts, a.t)
			}
		}
		s.mu.Unlock()
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	gap, last := time.Duration(0), t0
	for _, t := range ts {
		gap = max(gap, t.Sub(last))
		last = t
	}
	return gap
}

// firstAfter is how long after t0 the sink first received a datagram.
func firstAfter(s *sink, t0 time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.at {
		if a.t.After(t0) {
			return a.t.Sub(t0)
		}
	}
	return -1
}

// killAll SIGKILLs every process in h's namespace.
func killAll(h *netlab.Host) { signalAll(h, syscall.SIGKILL) }

// signalAll sends sig to every process in h's namespace.
func signalAll(h *netlab.Host, sig syscall.Signal) {
	out, _ := exec.Command("ip", "netns", "pids", h.NS).Output()
	for _, f := range strings.Fields(string(out)) {
		var pid int
		fmt.Sscan(f, &pid)
		syscall.Kill(pid, sig)
	}
}

// isolate cuts the hosts off from each other on the bridge (isolated ports
// talk only to non-isolated ones: the router, the Consul servers).
func isolate(t *testing.T, lab *netlab.Lab, on bool, hosts ...*netlab.Host) {
	v := map[bool]string{true: "on", false: "off"}[on]
	for _, h := range hosts {
		if out, err := exec.Command("bridge", "-n", lab.BridgeNS, "link", "set", "dev", h.Port, "isolated", v).CombinedOutput(); err != nil {
			t.Fatalf("bridge isolation: %v: %s", err, out)
		}
	}
}

type compareRow struct {
	system, fault, result string
}

// TestCompareKeepalived measures keepalived (VRRP, Debian's package) and
// driftgate the same way in the same namespace topology: a 200/s feed to
// the VIP, the longest pause in deliveries after a fault, and VIP overlap
// sampled every 50 ms. Run with `make compare-keepalived`; it reports,
// it does not assert (but driftgate must never have two holders).
func TestCompareKeepalived(t *testing.T) {
	if os.Getenv("DRIFTGATE_COMPARE") != "1" {
		t.Skip("comparison: run make compare-keepalived (DRIFTGATE_COMPARE=1)")
	}
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Fatal("keepalived not found: apt-get install keepalived")
	}
	var rows []compareRow
	const rate = 200

	// keepalived: two nodes, VRRP with the default 1 s advertisements.
	t.Run("keepalived", func(t *testing.T) {
		lab := netlab.New(t, "k1", "k2", "src")
		k1, k2 := lab.Host("k1"), lab.Host("k2")
		dir := t.TempDir()
		var outs []*netlab.SyncBuffer
		start := func(h *netlab.Host, prio int) *netlab.Proc {
			conf := filepath.Join(dir, h.Name+".conf")
			os.WriteFile(conf, []byte(fmt.Sprintf(`global_defs { router_id %s }
vrrp_instance VI_1 {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority %d
  advert_int 1
  virtual_ipaddress { %s/24 dev eth0 }
}
`, h.Name, prio, agentVIP)), 0o644)
			cmd, out := h.Start("keepalived", "-n", "-l", "--vrrp", "-f", conf,
				"-p", filepath.Join(dir, h.Name+".pid"), "-r", filepath.Join(dir, h.Name+".vrrp.pid"))
			outs = append(outs, out)
			return cmd
		}
		sinks := []*sink{newSinkAt(t, k1, &net.UDPAddr{Port: 5000}), newSinkAt(t, k2, &net.UDPAddr{Port: 5000})}
		c1 := start(k1, 150)
		start(k2, 100)
		waitVIP := func(h *netlab.Host, d time.Duration) time.Duration {
			start := time.Now()
			for !hasVIP(h) {
				if time.Since(start) > d {
					for _, o := range outs {
						t.Log(o)
					}
					t.Fatalf("%s never got the VIP", h.Name)
				}
				time.Sleep(10 * time.Millisecond)
			}
			return time.Since(start)
		}
		waitVIP(k1, 20*time.Second)
		feed := lab.Host("src").Self("feed", agentVIP+":5000", fmt.Sprint(rate), fmt.Sprint(rate*60))
		feed.Start()
		t.Cleanup(func() { feed.Process.Kill(); feed.Wait() })
		ov := sampleOverlap(t, k1, k2)
		time.Sleep(2 * time.Second)

		// kill -9 of the master: the backup takes over after 3 missed
		// advertisements (+ skew); the dead master's VIP stays on its
		// interface, as keepalived does not remove it.
		// Both keepalived processes (parent and VRRP child) die at once, as
		// in a crash; killing only the parent lets the child step down.
		crash := time.Now()
		killAll(k1)
		if err := c1.Kill(); err != nil {
			t.Fatal(err)
		}
		waitVIP(k2, 10*time.Second)
		time.Sleep(2 * time.Second)
		// The dead master keeps the VIP (and, its host being alive, the
		// feed) until the backup claims it; so the measure is when the
		// backup starts to receive.
		rows = append(rows, compareRow{"keepalived", "kill -9 of the master (keepalived processes)", fmt.Sprintf("backup receives the feed after %v", firstAfter(sinks[1], crash).Round(time.Millisecond))})
		// Clean up as a supervisor could, restart, let it become master
		// again (preemption), then stop it cleanly.
		restartMaster := func() {
			k1.IP("addr", "flush", "dev", "eth0", "label", "eth0")
			k1.IP("addr", "add", k1.Addr4.String(), "dev", "eth0")
			k1.IP("route", "replace", "224.0.0.0/4", "dev", "eth0")
			c1 = start(k1, 150)
			waitVIP(k1, 20*time.Second)
			time.Sleep(3 * time.Second)
		}
		restartMaster()
		samples, dual := ov.end()
		rows = append(rows, compareRow{"keepalived", "VIP on both nodes (kill -9 and restart)", fmt.Sprintf("%d of %d samples", dual, samples)})
		ov = sampleOverlap(t, k1, k2)
		stop := time.Now()
		c1.Signal(syscall.SIGTERM)
		waitVIP(k2, 10*time.Second)
		time.Sleep(2 * time.Second)
		rows = append(rows, compareRow{"keepalived", "clean stop of the master (SIGTERM)", fmt.Sprintf("pause in the feed %v", mergedGap(stop, sinks...).Round(time.Millisecond))})
		start(k1, 150) // back as master (preemption) for the partition
		waitVIP(k1, 20*time.Second)
		time.Sleep(2 * time.Second)
		ov.end()

		// LAN partition between the two nodes (both still reach the router).
		ov = sampleOverlap(t, k1, k2)
		isolate(t, lab, true, k1, k2)
		time.Sleep(8 * time.Second)
		isolate(t, lab, false, k1, k2)
		time.Sleep(3 * time.Second)
		samples, dual = ov.end()
		rows = append(rows, compareRow{"keepalived", "VIP on both nodes, 8 s partition between them", fmt.Sprintf("%d of %d samples", dual, samples)})

		// Host crash: every keepalived process of the master killed and
		// its link down at once.
		port := func(h *netlab.Host, state string) {
			if out, err := exec.Command("ip", "-n", lab.BridgeNS, "link", "set", "dev", h.Port, state).CombinedOutput(); err != nil {
				t.Fatalf("link %s: %v: %s", state, err, out)
			}
		}
		time.Sleep(2 * time.Second)
		crash = time.Now()
		killAll(k1)
		port(k1, "down")
		if err := c1.Kill(); err != nil {
			t.Fatal(err)
		}
		waitVIP(k2, 10*time.Second)
		time.Sleep(2 * time.Second)
		rows = append(rows, compareRow{"keepalived", "host crash of the master (keepalived killed, link down)", fmt.Sprintf("backup receives the feed after %v", firstAfter(sinks[1], crash).Round(time.Millisecond))})
		port(k1, "up")
		restartMaster()

		// Host freeze: every keepalived process of the master stopped 15 s.
		ov = sampleOverlap(t, k1, k2)
		freeze := time.Now()
		signalAll(k1, syscall.SIGSTOP)
		waitVIP(k2, 10*time.Second)
		time.Sleep(15*time.Second - time.Since(freeze))
		signalAll(k1, syscall.SIGCONT)
		time.Sleep(3 * time.Second)
		samples, dual = ov.end()
		rows = append(rows, compareRow{"keepalived", "host freeze of the master 15 s (keepalived stopped)", fmt.Sprintf("backup receives the feed after %v; VIP on both nodes in %d of %d samples", firstAfter(sinks[1], freeze).Round(time.Millisecond), dual, samples)})
	})

	// driftgate: the agent cluster of the e2e tests, in the default and
	// the fast profile.
	for _, profile := range []string{"default", "fast"} {
		system := "driftgate " + profile
		t.Run(system, func(t *testing.T) {
			c := startCluster(t, clusterSpec{profile: profile})
			c.waitUntil("a primary", 60*time.Second, func() bool { return c.primary() != "" })
			c.startFeed(rate)
			ov := sampleOverlap(t, c.nodes["n1"].host, c.nodes["n2"].host)
			time.Sleep(2 * time.Second)
			old := c.primary()
			other := map[string]string{"n1": "n2", "n2": "n1"}[old]
			crash := time.Now()
			if err := c.nodes[old].proc.Kill(); err != nil {
				t.Fatal(err)
			}
			if out, err := c.nodes[old].host.Command(context.Background(), driftgate, "cleanup", "--config", c.nodes[old].cfg).CombinedOutput(); err != nil {
				t.Fatalf("cleanup: %v: %s", err, out)
			}
			c.waitUntil("the takeover", 30*time.Second, func() bool { return c.primary() == other })
			time.Sleep(2 * time.Second)
			// Only the new primary's receiver counts: the killed node has none.
			// The standby always receives (the tee), so the measure is the
			// pause in its feed.
			rows = append(rows, compareRow{system, "kill -9 of the primary (+ ExecStopPost clean-up)", fmt.Sprintf("pause in the survivor's feed %v", mergedGap(crash, c.nodes[other].sink).Round(time.Millisecond))})
			c.nodes[old].start(t)
			c.waitUntil("the restarted node to be standby", 30*time.Second, func() bool {
				s, err := c.nodes[old].state(t)
				return err == nil && s.Role == "standby"
			})
			time.Sleep(2 * time.Second)
			stop := time.Now()
			c.nodes[other].proc.Signal(syscall.SIGTERM)
			c.waitUntil("the takeover", 30*time.Second, func() bool { return c.primary() == old })
			time.Sleep(2 * time.Second)
			rows = append(rows, compareRow{system, "clean stop of the primary (SIGTERM)", fmt.Sprintf("pause in the feed %v", mergedGap(stop, c.nodes[old].sink).Round(time.Millisecond))})
			c.nodes[other].start(t)
			time.Sleep(3 * time.Second)
			samples, dual := ov.end()
			rows = append(rows, compareRow{system, "VIP on both nodes (kill -9, restarts)", fmt.Sprintf("%d of %d samples", dual, samples)})
			if dual != 0 {
				t.Errorf("SAFETY: the VIP was on both nodes in %d samples", dual)
			}
			ov = sampleOverlap(t, c.nodes["n1"].host, c.nodes["n2"].host)
			isolate(t, c.lab, true, c.nodes["n1"].host, c.nodes["n2"].host)
			time.Sleep(8 * time.Second)
			isolate(t, c.lab, false, c.nodes["n1"].host, c.nodes["n2"].host)
			time.Sleep(3 * time.Second)
			samples, dual = ov.end()
			rows = append(rows, compareRow{system, "VIP on both nodes, 8 s partition between them", fmt.Sprintf("%d of %d samples", dual, samples)})
			if dual != 0 {
				t.Errorf("SAFETY: the VIP was on both nodes in %d samples during the partition", dual)
			}

			// Host crash of the primary: daemon and Consul agent killed, link
			// down, at once; then the host comes back.
			c.waitUntil("one primary", 60*time.Second, func() bool { return c.primary() != "" })
			time.Sleep(3 * time.Second)
			ov = sampleOverlap(t, c.nodes["n1"].host, c.nodes["n2"].host)
			old = c.primary()
			other = map[string]string{"n1": "n2", "n2": "n1"}[old]
			crash = time.Now()
			c.hostCrash(old)
			c.waitUntil("the takeover", 30*time.Second, func() bool { return c.primary() == other })
			time.Sleep(2 * time.Second)
			rows = append(rows, compareRow{system, "host crash of the primary (daemon and Consul agent killed, link down)", fmt.Sprintf("pause in the survivor's feed %v", mergedGap(crash, c.nodes[other].sink).Round(time.Millisecond))})
			c.bridgePort(old, "", "up", "up")
			c.consul[old].Restart()
			c.nodes[old].start(t)
			c.waitUntil("the rebooted node to be an eligible standby", 30*time.Second, func() bool {
				s, err := c.nodes[old].state(t)
				return err == nil && s.Role == "standby" && s.Eligible
			})
			time.Sleep(2 * time.Second)

			// Host freeze of the primary: daemon and Consul agent stopped 15 s.
			old, other = other, old
			freeze := time.Now()
			c.nodes[old].proc.Signal(syscall.SIGSTOP)
			c.consul[old].Pause()
			c.waitUntil("the takeover", 30*time.Second, func() bool { return c.primary() == other })
			time.Sleep(15*time.Second - time.Since(freeze))
			c.consul[old].Resume()
			c.nodes[old].proc.Signal(syscall.SIGCONT)
			c.waitUntil("the thawed node to be standby", 60*time.Second, func() bool {
				s, err := c.nodes[old].state(t)
				return err == nil && s.Role == "standby"
			})
			samples, dual = ov.end()
			rows = append(rows, compareRow{system, "host freeze of the primary 15 s (daemon and Consul agent stopped)", fmt.Sprintf("pause in the survivor's feed %v; VIP on both nodes in %d of %d samples", mergedGap(freeze, c.nodes[other].sink).Round(time.Millisecond), dual, samples)})
			if dual != 0 {
				t.Errorf("SAFETY: the VIP was on both nodes in %d samples (host crash and freeze)", dual)
			}
		})
	}

	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 2, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "| system\t| fault\t| measured\t|")
	fmt.Fprintln(tw, "|---\t|---\t|---\t|")
	for _, r := range rows {
		fmt.Fprintf(tw, "| %s\t| %s\t| %s\t|\n", r.system, r.fault, r.result)
	}
	tw.Flush()
	fmt.Print("\n" + b.String())
}
