package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"driftgate/gateway"
	"driftgate/internal/netlab"
	"driftgate/internal/testkit"
)

// TestRepairNamespaces: a relay tees a feed by multicast over a real
// bridge to receivers on three hosts while the bridge drops datagrams on
// their way to one or two of them; every receiver must deliver the whole
// feed, exactly once, by asking the relay for what it missed.
func TestRepairNamespaces(t *testing.T) {
	const group = "239.255.0.7:5001"
	tests := []struct {
		name    string
		rate, n int
		loss    map[string]float64 // percent, per receiving host
		cut     time.Duration      // one receiver cut off entirely for this long, mid-feed
		off     bool               // the anchor: repair off, so the loss shows
		rcvbuf  map[string]int     // a receiver's socket buffer forced small
	}{
		{name: "anchor: 5% and 1% loss at 20k/s, repair off", rate: 20000, n: 40000, loss: map[string]float64{"a": 5, "b": 1}, off: true},
		{name: "5% loss at 200/s", rate: 200, n: 1000, loss: map[string]float64{"a": 5}},
		{name: "5% and 1% loss at 20k/s", rate: 20000, n: 40000, loss: map[string]float64{"a": 5, "b": 1}},
		{name: "cut off 8s at 1000/s", rate: 1000, n: 11000, cut: 8 * time.Second},
		// The kernel drops what a full socket buffer cannot take; the
		// receiver asks for it like for anything else.
		{name: "4 KiB receive buffer at 20k/s", rate: 20000, n: 40000, rcvbuf: map[string]int{"a": 4096}},
	}
	var table strings.Builder
	fmt.Fprintf(&table, "| case | receiver | delivered | repaired | unrecovered | repair latency p50 | p99 | resent / repaired |\n|---|---|---|---|---|---|---|---|\n")
	defer func() {
		t.Logf("repair on the namespace LAN (go test ./e2e -run TestRepairNamespaces -v):\n%s", table.String())
	}()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var noRepair []string
			if tt.off {
				noRepair = []string{"--no-repair"}
			}
			lab := netlab.New(t, "src", "gw", "a", "b")
			gw := lab.Host("gw")
			gw.IP("addr", "add", "198.18.0.100/24", "dev", "eth0")
			rcv := map[string]*netlab.SyncBuffer{}
			procs := map[string]*netlab.Proc{}
			for _, name := range []string{"gw", "a", "b"} {
				args := append([]string{"receive", "--group", group, "--iface", "eth0", "--deliver", "stdout"}, noRepair...)
				if b := tt.rcvbuf[name]; b > 0 {
					args = append(args, "--rcvbuf", strconv.Itoa(b))
				}
				p, out := lab.Host(name).Start(driftgate, args...)
				rcv[name], procs[name] = out, p
			}
			relay, relayOut := gw.Start(driftgate, append([]string{"relay", "--listen", "198.18.0.100:5000", "--group", group, "--iface", "eth0",
				"--epoch", "9", "--repair-allow", "198.18.0.0/24"}, noRepair...)...)
			waitOutput(t, "relay", relayOut, "msg=listening")
			for name, out := range rcv {
				waitOutput(t, "receiver "+name, out, "msg=receiving")
			}
			for name, p := range tt.loss {
				lab.Drop(lab.Host(name), p, 5001)
			}
			src := lab.Host("src")
			feed := src.Self("feed", "198.18.0.100:5000", strconv.Itoa(tt.rate), strconv.Itoa(tt.n))
			if err := feed.Start(); err != nil {
				t.Fatal(err)
			}
			if tt.cut > 0 {
				time.Sleep(time.Second)
				lab.Drop(lab.Host("b"), 100, 5001)
				time.Sleep(tt.cut)
				lab.Undrop(lab.Host("b"))
				// Within 2 s of the heal, b has caught up with what a had
				// at the heal: the whole cut-off stretch, repaired.
				had := frameCount(rcv["a"])
				if took, ok := testkit.Poll(2*time.Second, func() bool { return frameCount(rcv["b"]) >= had }); ok {
					t.Logf("receiver b caught up %v after the heal", took)
				} else {
					t.Errorf("receiver b: %d frames 2 s after the heal, a had %d at the heal", frameCount(rcv["b"]), had)
				}
			}
			if err := feed.Wait(); err != nil {
				t.Fatalf("sender: %v", err)
			}
			for name, out := range rcv {
				if tt.off {
					// Nothing will come: wait for the feed to drain.
					testkit.Poll(10*time.Second, func() bool { n := frameCount(out); time.Sleep(200 * time.Millisecond); return frameCount(out) == n })
					continue
				}
				if _, ok := testkit.Poll(10*time.Second, func() bool { return frameCount(out) >= tt.n }); !ok {
					t.Errorf("receiver %s: %d of %d frames after 10 s", name, frameCount(out), tt.n)
				}
			}
			repaired := 0
			var rows []string
			for _, name := range []string{"gw", "a", "b"} {
				p := procs[name]
				p.Signal(syscall.SIGTERM)
				if err := p.Wait(10 * time.Second); err != nil {
					t.Fatalf("receiver %s exit: %v", name, err)
				}
				frames := parseFrames(t, rcv[name].String())
				seen := map[uint64]int{}
				for _, f := range frames {
					seen[f.Seq]++
				}
				sum := summary(t, rcv[name].String(), "receive")
				lat := regexp.MustCompile(`repair latency p50<=(\S+) p99<=(\S+)`).FindStringSubmatch(rcv[name].String())
				if lat == nil {
					lat = []string{"", "–", "–"}
				} else {
					lat[1], lat[2] = "≤ "+lat[1], "≤ "+lat[2]
				}
				rows = append(rows, fmt.Sprintf("| %s | %s | %d of %d | %d | %d | %s | %s |", tt.name, name, len(seen), tt.n, sum["repaired"], tt.n-len(seen), lat[1], lat[2]))
				if tt.off {
					if tt.loss[name] > 0 && len(seen) == tt.n {
						t.Errorf("anchor: receiver %s lost nothing on a lossy link: the loss injection does not work", name)
					}
					continue
				}
				for s := uint64(1); s <= uint64(tt.n); s++ {
					if seen[s] != 1 {
						t.Fatalf("receiver %s delivered seq %d %d times (of %d frames)", name, s, seen[s], len(frames))
					}
				}
				repaired += sum["repaired"]
				if sum["unrecovered"] != 0 || sum["delivered"] != tt.n {
					t.Errorf("receiver %s summary %v", name, sum)
				}
				if (tt.loss[name] > 0 || (tt.cut > 0 && name == "b")) && sum["repaired"] == 0 {
					t.Errorf("receiver %s repaired nothing on a lossy link: the test did not test repair", name)
				}
			}
			relay.Signal(syscall.SIGTERM)
			if err := relay.Wait(10 * time.Second); err != nil {
				t.Fatalf("relay exit: %v\n%s", err, relayOut)
			}
			if tt.off {
				for _, r := range rows {
					table.WriteString(r + " – |\n")
				}
				return
			}
			rs := summary(t, relayOut.String(), "repair")
			ratio := float64(rs["frames"]) / float64(max(repaired, 1))
			t.Logf("relay: %d repair requests, %d frames resent (%d by multicast) for %d repaired: %.2f×", rs["requests"], rs["frames"], rs["multicast"], repaired, ratio)
			// The target (≤ 1.2×) is for random loss on a link; a socket
			// buffer of 4 KiB loses four frames in five, answers included;
			// and after a cut-off one gap of thousands of frames takes a
			// loaded machine longer to answer than the retry waits, so it
			// may be answered twice (1.28× seen in CI): what the cut-off
			// must show is the catch-up, checked above.
			if ratio > 1.2 && tt.rcvbuf == nil && tt.cut == 0 {
				t.Errorf("repair traffic %.2f× the frames lost, want ≤ 1.2×", ratio)
			}
			for _, r := range rows {
				fmt.Fprintf(&table, "%s %.2f× |\n", r, ratio)
			}
		})
	}
}

// frameCount counts the JSON frame lines in a receiver's output, cheaply.
func frameCount(out *netlab.SyncBuffer) int { return strings.Count(out.String(), `{"epoch":`) }

var summaryField = regexp.MustCompile(`\b(\w+)=(\d+)\b`)

// summary parses a command's closing line ("receive: …", "repair: …")
// into its counters.
func summary(t *testing.T, out, prefix string) map[string]int {
	t.Helper()
	m := map[string]int{}
	line := regexp.MustCompile(`(?m)^` + prefix + `: .*=.*$`).FindString(out)
	if line == "" {
		t.Fatalf("no summary line in:\n%s", out[max(0, len(out)-2000):])
	}
	for _, f := range summaryField.FindAllStringSubmatch(line, -1) {
		n, _ := strconv.Atoi(f[2])
		m[f[1]] = n
	}
	return m
}

// TestDeliveryStallNamespaces: the application behind a receiver stops
// reading for 200 ms of a 10k datagrams/s feed; the delivery queue holds
// what its socket cannot, and it gets every datagram, in order, once.
func TestDeliveryStallNamespaces(t *testing.T) {
	const group = "239.255.0.8:5001"
	lab := netlab.New(t, "src", "gw", "a")
	gw := lab.Host("gw")
	gw.IP("addr", "add", "198.18.0.100/24", "dev", "eth0")
	path := filepath.Join(t.TempDir(), "app.sock")
	app, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	var stall atomic.Bool
	var mu sync.Mutex
	var got []uint64
	go func() {
		codec := gateway.NewCodec(nil)
		buf := make([]byte, 2048)
		for {
			for stall.Load() {
				time.Sleep(time.Millisecond)
			}
			n, err := app.Read(buf)
			if err != nil {
				return
			}
			if f, err := codec.Decode(buf[:n]); err == nil {
				mu.Lock()
				got = append(got, f.Seq)
				mu.Unlock()
			}
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
	recv, rout := lab.Host("a").Start(driftgate, "receive", "--group", group, "--iface", "eth0", "--deliver", "unix://"+path)
	relay, relayOut := gw.Start(driftgate, "relay", "--listen", "198.18.0.100:5000", "--group", group, "--iface", "eth0", "--epoch", "3")
	waitOutput(t, "relay", relayOut, "msg=listening")
	waitOutput(t, "receiver", rout, "msg=receiving")
	const n = 20000
	feed := lab.Host("src").Self("feed", "198.18.0.100:5000", "10000", strconv.Itoa(n))
	if err := feed.Start(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the feed to flow", 5*time.Second, func() bool { return count() > 2000 })
	stall.Store(true)
	at := count()
	time.Sleep(200 * time.Millisecond)
	stall.Store(false)
	if err := feed.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, ok := testkit.Poll(10*time.Second, func() bool { return count() >= n }); !ok {
		t.Fatalf("%d of %d datagrams delivered (the application stalled after %d)", count(), n, at)
	}
	recv.Signal(syscall.SIGTERM)
	if err := recv.Wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, s := range got {
		if s != uint64(i+1) {
			t.Fatalf("delivery %d was seq %d: out of order, lost or twice", i+1, s)
		}
	}
	sum := summary(t, rout.String(), "receive")
	t.Logf("the application stalled 200 ms after %d datagrams; all %d delivered in order; receiver: %v", at, len(got), sum)
	if sum["deliver_errors"] != 0 {
		t.Fatalf("receiver summary %v", sum)
	}
	relay.Signal(syscall.SIGTERM)
	relay.Wait(10 * time.Second)
}

// TestAgentRepairCutOff: on the agent cluster, a standby's link drops every
// frame of the feed for 8 s (both nodes still reach Consul and the
// senders) at 1000 datagrams/s. Within 2 s of the heal its application has
// every datagram the primary's had at the heal, exactly once.
func TestAgentRepairCutOff(t *testing.T) {
	c := startAgentCluster(t, false)
	c.waitUntil("a primary", 30*time.Second, func() bool { return c.primary() != "" })
	p := c.primary()
	standby := "n1"
	if p == "n1" {
		standby = "n2"
	}
	c.waitUntil("the standby eligible", 30*time.Second, func() bool {
		s, err := c.nodes[standby].state(t)
		return err == nil && s.Eligible
	})
	c.startFeed(1000)
	c.waitUntil("the feed at both nodes", 10*time.Second, func() bool { return c.nodes[standby].sink.high() > 500 })
	c.lab.Drop(c.lab.Host(standby), 100, 5001)
	time.Sleep(8 * time.Second)
	hi := c.nodes[p].sink.high()
	c.lab.Undrop(c.lab.Host(standby))
	took := c.waitUntil("the standby to catch up", 2*time.Second, func() bool {
		miss, _ := c.nodes[standby].sink.window(20, hi)
		return miss == 0
	})
	if miss, dup := c.nodes[standby].sink.window(20, hi); miss != 0 || dup != 0 {
		t.Fatalf("standby %s: %d missing, %d twice of 20..%d", standby, miss, dup, hi)
	}
	s, err := c.nodes[standby].state(t)
	if err != nil {
		t.Fatal(err)
	}
	if s.Role != "standby" || s.Receiver == nil || s.Receiver.Repaired < 7000 || s.Receiver.Unrecovered != 0 {
		t.Fatalf("standby %s after the heal: role %s, receiver %+v", standby, s.Role, s.Receiver)
	}
	if c.primary() != p {
		t.Fatalf("the primary changed from %s to %s: the cut was meant to touch only the feed", p, c.primary())
	}
	t.Logf("standby %s cut off from the feed for 8 s at 1000/s: all of 20..%d delivered %v after the heal, %d repaired, %d unrecovered",
		standby, hi, took, s.Receiver.Repaired, s.Receiver.Unrecovered)
}
