package relaybench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"driftgate/internal/netlab"
)

// The end-to-end tee: what a user runs. Two hosts on a bridge; the primary
// holds the VIP, where the load arrives, and its relay tees each datagram
// by multicast; a receiver on each host delivers to the application on
// that host (a counting socket). The anchor is samplicator on the primary
// sending each datagram straight to the same two applications: it has no
// receivers, so it is the upper bound a tee could reach.
const (
	teeVIP    = "198.18.0.100"
	teeGroup  = "239.255.0.1:7002"
	teeApp    = 7001
	teeMaxRte = 1_200_000.0
)

// teeKind is one way of serving the two applications; primary returns the
// commands run on the primary host (all pinned to relayCPU, their CPU
// summed), standby the one on the other host (nil: none, the primary
// sends to the application there itself).
type teeKind struct {
	name    string
	primary func(bin string) [][]string
	standby func(bin string) []string
}

func teeKinds(bin, baseline, samplicate string) map[string]teeKind {
	listen := fmt.Sprintf("%s:%d", teeVIP, inPort)
	app := fmt.Sprintf("udp://127.0.0.1:%d", teeApp)
	receive := func(bin string) []string {
		return []string{bin, "receive", "--group", teeGroup, "--iface", "eth0", "--deliver", app, "--log-level", "warn"}
	}
	relay := func(bin string, extra ...string) []string {
		return append([]string{bin, "relay", "--listen", listen, "--group", teeGroup, "--iface", "eth0", "--log-level", "warn"}, extra...)
	}
	kinds := map[string]teeKind{
		// The primary's receiver in the relay's process (as the agent
		// runs it).
		"tee": {"driftgate tee", func(bin string) [][]string {
			return [][]string{relay(bin, "--deliver", app)}
		}, receive},
		// The same binary with the primary's receiver a process of its
		// own, reading the looped-back multicast copy.
		"tee-2proc": {"driftgate tee, receiver a 2nd process", func(bin string) [][]string {
			return [][]string{relay(bin), receive(bin)}
		}, receive},
	}
	if baseline != "" {
		// An older build (DRIFTGATE_BASELINE_BIN), as it could run: its
		// relay and the primary's receiver as two processes.
		kinds["baseline"] = teeKind{"baseline build, 2 processes", func(string) [][]string {
			return [][]string{relay(baseline), receive(baseline)}
		}, func(string) []string { return receive(baseline) }}
	}
	if samplicate != "" {
		kinds["samplicator"] = teeKind{"samplicator → both apps", func(string) [][]string {
			return [][]string{{samplicate, "-p", fmt.Sprint(inPort), "-s", teeVIP, "-b", "4194304",
				fmt.Sprintf("127.0.0.1/%d", teeApp), fmt.Sprintf("198.18.0.12/%d", teeApp)}}
		}, nil}
	}
	return kinds
}

type teeResult struct {
	kind, workload string
	found          // rate: both applications got everything; cpuUS: the primary's processes' CPU µs per datagram
}

// TestTeeEndToEnd measures the whole tee (make bench-tee).
func TestTeeEndToEnd(t *testing.T) {
	if os.Getenv("DRIFTGATE_BENCH") != "1" {
		t.Skip("benchmark: run with make bench (DRIFTGATE_BENCH=1)")
	}
	bin := os.Getenv("DRIFTGATE_BIN")
	if bin == "" {
		t.Fatal("DRIFTGATE_BIN: path of the driftgate binary (make bench sets it)")
	}
	samplicate := os.Getenv("SAMPLICATE")
	if samplicate == "" {
		samplicate, _ = exec.LookPath("samplicate")
	}
	if samplicate == "" {
		t.Log("no samplicate on PATH (nor SAMPLICATE): the samplicator anchor is not run")
	}
	kinds := teeKinds(bin, os.Getenv("DRIFTGATE_BASELINE_BIN"), samplicate)
	order := []string{"tee", "tee-2proc", "baseline", "samplicator"}
	var results []teeResult
	for _, sizes := range []Sizes{{64, 64}, {512, 512}, {64, 1400}} {
		for _, name := range order {
			k, ok := kinds[name]
			if !ok {
				continue
			}
			if only := os.Getenv("RELAYBENCH_ONLY"); only != "" && !slices.ContainsFunc(strings.Split(only, ","), func(o string) bool {
				return strings.Contains(name+"/"+sizes.String(), o)
			}) {
				continue
			}
			r := measureTee(t, k, bin, sizes)
			r.kind, r.workload = k.name, sizes.String()
			t.Logf("%-36s %-9s %9.0f dgram/s  %.2f µs/dgram%s", r.kind, r.workload, r.rate, r.cpuUS, map[bool]string{true: " (generator-limited)"}[r.genLimited])
			results = append(results, r)
		}
	}
	printTeeTable(results)
}

// measureTee builds the two hosts, starts k and searches for the highest
// rate at which both applications get every datagram.
func measureTee(t *testing.T, k teeKind, bin string, sizes Sizes) teeResult {
	lab := netlab.New(t, "primary", "standby")
	p, s := lab.Host("primary"), lab.Host("standby")
	p.IP("addr", "add", teeVIP+"/24", "dev", "eth0")
	var gconn, app1, app2 *net.UDPConn
	err := p.Do(func() (err error) {
		if gconn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
			return err
		}
		app1, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: teeApp})
		return err
	})
	if err == nil {
		err = s.Do(func() (err error) {
			app2, err = net.ListenUDP("udp4", &net.UDPAddr{Port: teeApp})
			return err
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*net.UDPConn{app1, app2} {
		if err := forceRcvBuf(c, 64<<20); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sink1, sink2 := NewSink(app1), NewSink(app2)
	done := make(chan error, 2)
	go func() { done <- sink1.Run(ctx) }()
	go func() { done <- sink2.Run(ctx) }()
	defer func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("sink: %v", err)
			}
		}
		gconn.Close()
	}()
	gen, err := NewGenerator(gconn, sizes)
	if err != nil {
		t.Fatal(err)
	}
	if k.standby != nil {
		// The other host's receiver shares CPU 0 with the load and the
		// applications.
		s.Start("taskset", append([]string{"-c", "0"}, k.standby(bin)...)...)
	}
	var pids []int
	var outs []fmt.Stringer
	for _, argv := range k.primary(bin) {
		cmd, out := p.Start("taskset", append([]string{"-c", relayCPU}, argv...)...)
		pids, outs = append(pids, cmd.Pid), append(outs, out)
	}
	cpu := func() uint64 {
		var total uint64
		for _, pid := range pids {
			n, err := CPUTime(pid)
			if err != nil {
				t.Fatal(err)
			}
			total += n
		}
		return total
	}
	target := netip.MustParseAddrPort(fmt.Sprintf("%s:%d", teeVIP, inPort))
	// Warm up until both applications get datagrams (everything bound,
	// the group joined).
	deadline := time.Now().Add(10 * time.Second)
	for sink1.Count() == 0 || sink2.Count() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: app 1 got %d, app 2 got %d after 10s:\n%s", k.name, sink1.Count(), sink2.Count(), outs)
		}
		gen.Send(ctx, target, 10000, 100, time.Second)
		time.Sleep(50 * time.Millisecond)
	}
	settle(sink1)
	settle(sink2)
	trial := func(rate float64) (ok bool, achieved, cpuUS float64) {
		b1, b2, c0 := sink1.Count(), sink2.Count(), cpu()
		sent, el, err := gen.Send(ctx, target, rate, int(rate*trialDur.Seconds()), 2*trialDur)
		if err != nil {
			t.Fatal(err)
		}
		g1, g2 := settle(sink1)-b1, settle(sink2)-b2
		c1 := cpu()
		if os.Getenv("RELAYBENCH_DEBUG") != "" {
			t.Logf("rate %.0f sent %d app1 %d app2 %d cpu %.2fus", rate, sent, g1, g2, float64(c1-c0)/1e3/float64(sent))
		}
		return g1 == uint64(sent) && g2 == uint64(sent), float64(sent) / el.Seconds(), float64(c1-c0) / 1e3 / float64(sent)
	}
	return teeResult{found: search(t, k.name, teeMaxRte, trial)}
}

func printTeeTable(rs []teeResult) {
	anchor := map[string]teeResult{}
	for _, r := range rs {
		if strings.HasPrefix(r.kind, "samplicator") {
			anchor[r.workload] = r
		}
	}
	w := tabwriter.NewWriter(os.Stdout, 2, 0, 2, ' ', 0)
	fmt.Fprintln(w, "end-to-end tee\tworkload\tloss-free dgram/s\tprimary CPU µs/dgram\tvs samplicator\t")
	for _, r := range rs {
		ratio := "-"
		if a, ok := anchor[r.workload]; ok && a.rate > 0 {
			ratio = fmt.Sprintf("%.2fx", r.rate/a.rate)
		}
		ge := ""
		if r.genLimited {
			ge = "≥ "
		}
		fmt.Fprintf(w, "%s\t%s\t%s%.0f\t%.2f\t%s\t\n", r.kind, r.workload, ge, r.rate, r.cpuUS, ratio)
	}
	w.Flush()
	fmt.Printf("Loss-free: both applications (one on each host) got every datagram of a 1 s trial. The primary's processes\n")
	fmt.Printf("run on CPU %s; the load, the applications and the other host's receiver share CPU 0. CPU is the primary's\n", relayCPU)
	fmt.Println("processes' own time (all threads, from schedstat) per datagram; kernel work done in softirq is not in it.")
}
