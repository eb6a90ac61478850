package e2e

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"
)

// TestDemo is `make demo`: the agent cluster of the e2e tests with a live
// one-screen view. It kills the primary's daemon partway (running the
// clean-up systemd would), later asks the new primary to step down, and
// reports the measured failover times and losses. Ctrl-C ends it early;
// everything is cleaned up either way.
func TestDemo(t *testing.T) {
	if os.Getenv("DRIFTGATE_DEMO") != "1" {
		t.Skip("the demo runs with make demo (DRIFTGATE_DEMO=1)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Println("driftgate demo: starting 3 Consul servers and 2 servers (n1, n2), each with a Consul client agent and a driftgate agent, in network namespaces …")
	c := startAgentCluster(t, false)
	c.waitUntil("a primary", 60*time.Second, func() bool { return c.primary() != "" })
	const rate = 200
	c.startFeed(rate)
	var events []string
	event := func(format string, a ...any) {
		events = append(events, time.Now().Format("15:04:05.000")+"  "+fmt.Sprintf(format, a...))
	}
	event("%s is primary; the feed sends %d datagrams/s to %s:5000", c.primary(), rate, agentVIP)
	start := time.Now()
	failovers := 0
	lastPrimary := c.primary()
	view := func() {
		p := c.primary()
		if p != "" && p != lastPrimary {
			failovers++
			lastPrimary = p
		}
		var b strings.Builder
		b.WriteString("\033[H\033[2J")
		fmt.Fprintf(&b, "driftgate demo  (%s)  feed %d/s → %s:5000   Ctrl-C to stop\n\n", time.Since(start).Round(time.Second), rate, agentVIP)
		fmt.Fprintf(&b, "primary: %-4s  failovers: %d\n\n", or(p, "none"), failovers)
		tw := tabwriter.NewWriter(&b, 2, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "node\trole\tepoch\tVIP here\trelayed\tdelivered\trepaired\tunrecovered")
		for _, name := range []string{"n1", "n2"} {
			n := c.nodes[name]
			s, err := n.state(t)
			if err != nil {
				fmt.Fprintf(tw, "%s\t(down)\t\t%v\t\t%d\t\t\n", name, hasVIP(n.host), n.sink.count())
				continue
			}
			var relayed uint64
			for _, r := range s.Relay {
				relayed += r.Forwarded
			}
			var repaired, unrecovered uint64
			if s.Receiver != nil {
				repaired, unrecovered = s.Receiver.Repaired, s.Receiver.Unrecovered
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%d\t%d\t%d\t%d\n", name, s.Role, s.Epoch, hasVIP(n.host), relayed, n.sink.count(), repaired, unrecovered)
		}
		tw.Flush()
		b.WriteString("\nevents:\n")
		for _, e := range events {
			b.WriteString("  " + e + "\n")
		}
		fmt.Print(b.String())
	}
	show := func(d time.Duration) bool {
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			view()
			select {
			case <-ctx.Done():
				return false
			case <-time.After(500 * time.Millisecond):
			}
		}
		return true
	}
	if !show(6 * time.Second) {
		return
	}
	old := c.primary()
	other := map[string]string{"n1": "n2", "n2": "n1"}[old]
	crash := time.Now()
	if err := c.nodes[old].proc.Kill(); err != nil {
		t.Fatal(err)
	}
	event("kill -9 of %s's driftgate agent; once it is gone, systemd's ExecStopPost (driftgate cleanup) runs", old)
	if out, err := c.nodes[old].host.Command(ctx, driftgate, "cleanup", "--config", c.nodes[old].cfg).CombinedOutput(); err != nil {
		t.Fatalf("cleanup: %v: %s", err, out)
	}
	took := c.waitUntil("the takeover", 30*time.Second, func() bool { return c.primary() == other })
	event("%s is primary %v after the kill", other, took.Round(time.Millisecond))
	if !show(3 * time.Second) {
		return
	}
	crashGap, _ := c.nodes[other].sink.gapAfter(crash)
	crashLost, _ := c.nodes[other].sink.window(20, c.nodes[other].sink.high()-rate/10)
	c.nodes[old].start(t)
	event("%s's agent restarted (standby)", old)
	if !show(5 * time.Second) {
		return
	}
	step := time.Now()
	hiBefore := c.nodes[old].sink.high()
	c.nodes[other].host.Command(ctx, driftgate, "step-down", "--config", c.nodes[other].cfg).Run()
	event("driftgate step-down on %s", other)
	took2 := c.waitUntil("the takeover", 30*time.Second, func() bool { return c.primary() == old })
	event("%s is primary %v after the step-down", old, took2.Round(time.Millisecond))
	if !show(4 * time.Second) {
		return
	}
	stepGap, _ := c.nodes[old].sink.gapAfter(step)
	stepLost, _ := c.nodes[old].sink.window(hiBefore+1, c.nodes[old].sink.high()-rate/10)
	view()
	fmt.Printf("\nmeasured:\n")
	fmt.Printf("  kill -9 of the primary → new primary after %v; feed gap at the new primary %v; datagrams lost there: %d\n",
		took.Round(time.Millisecond), crashGap.Round(time.Millisecond), crashLost)
	fmt.Printf("  step-down → new primary after %v; feed gap %v; datagrams lost: %d\n",
		took2.Round(time.Millisecond), stepGap.Round(time.Millisecond), stepLost)
	fmt.Printf("cleaning up …\n")
}

func or(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}
