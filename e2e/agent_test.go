package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/hashicorp/consul/api"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"driftgate/consul"
	"driftgate/consul/consultest"
	"driftgate/internal/agent"
	"driftgate/internal/netlab"
	"driftgate/internal/testkit"
)

const agentVIP = "198.18.0.100"

// sink records the payloads (source sequence numbers) a node's receiver
// delivers, with arrival times.
type sink struct {
	mu   sync.Mutex
	seqs map[int]int // seq → deliveries
	at   []arrival
	conn *net.UDPConn
}

type arrival struct {
	seq int
	t   time.Time
}

func newSink(t *testing.T, h *netlab.Host) *sink {
	return newSinkAt(t, h, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 6000})
}

// newSinkAt records datagrams arriving at addr in h's namespace.
func newSinkAt(t *testing.T, h *netlab.Host, addr *net.UDPAddr) *sink {
	s := &sink{seqs: map[int]int{}}
	if err := h.Do(func() (err error) {
		s.conn, err = net.ListenUDP("udp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.conn.Close() })
	// The application's socket must take a burst of repaired datagrams:
	// udp:// delivery has no back-pressure (the kernel drops what a full
	// socket cannot take), so a test application gets a large buffer, as
	// docs/operations.md tells operators to give theirs.
	if rc, err := s.conn.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20) })
	}
	go func() {
		buf := make([]byte, 100)
		for {
			n, err := s.conn.Read(buf)
			if err != nil {
				return
			}
			seq, _ := strconv.Atoi(string(buf[:n]))
			s.mu.Lock()
			s.seqs[seq]++
			s.at = append(s.at, arrival{seq, time.Now()})
			s.mu.Unlock()
		}
	}()
	return s
}

// window reports, for seqs in [from, to], how many never arrived and how
// many arrived more than once.
func (s *sink) window(from, to int) (missing, dup int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for q := from; q <= to; q++ {
		switch c := s.seqs[q]; {
		case c == 0:
			missing++
		case c > 1:
			dup++
		}
	}
	return
}

// gapAfter is the longest pause between deliveries after t0, and the
// highest sequence delivered so far.
func (s *sink) gapAfter(t0 time.Time) (time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gap time.Duration
	last := t0
	high := 0
	for _, a := range s.at {
		high = max(high, a.seq)
		if a.t.Before(t0) {
			continue
		}
		gap = max(gap, a.t.Sub(last))
		last = a.t
	}
	return gap, high
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.at)
}

func (s *sink) high() int {
	_, h := s.gapAfter(time.Now())
	return h
}

type agentNode struct {
	host *netlab.Host
	cfg  string
	proc *netlab.Proc
	out  *netlab.SyncBuffer
	past string // what earlier runs logged
	sink *sink
	http *http.Client
}

// log is everything the node's agents logged, this run and earlier ones.
func (n *agentNode) log() string { return n.past + n.out.String() }

// start runs the agent as the packaged unit does: not root, with only
// CAP_NET_ADMIN and CAP_NET_RAW (ambient, and the bounding set).
func (n *agentNode) start(t *testing.T) {
	proc, out := n.host.Start("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all,+net_admin,+net_raw", "--ambient-caps=-all,+net_admin,+net_raw", "--bounding-set=-all,+net_admin,+net_raw",
		"--", driftgate, "agent", "--config", n.cfg)
	if n.out != nil {
		n.past += n.out.String() + "--- restarted ---\n"
	}
	n.proc, n.out = proc, out
}

func (n *agentNode) state(t *testing.T) (agent.State, error) {
	var st agent.State
	resp, err := n.http.Get("http://127.0.0.1:9469/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// clusterSpec shapes an agent cluster.
type clusterSpec struct {
	nodes   []string // driftgate nodes; default n1, n2
	extra   []string // more hosts without Consul or driftgate; "src" is always there
	unicast bool     // relay by unicast to receivers found in Consul, not multicast
	// deliver is the receivers' delivery URL; default udp://127.0.0.1:6000
	// (a sink records it).
	deliver func(node string) string
	// config is appended to every node's configuration.
	config string
	// profile is the agents' election.profile; "" is the default.
	profile string
	// beforeAgents, if set, runs once the namespaces exist, before any
	// agent starts.
	beforeAgents func(*netlab.Lab)
	// receive: more keys of the receive section, each "  key: value\n".
	receive string
	// keyFile, if set, is given to every relay and receiver (relay and
	// receive key_file).
	keyFile string
}

func writeAgentConfig(t *testing.T, name string, h *netlab.Host, spec clusterSpec) string {
	dir := t.TempDir()
	// The agent runs as nobody: it reads the config, runs the hook and
	// the hook writes its log here.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil { // the test's temp root
		t.Fatal(err)
	}
	hook := filepath.Join(dir, "hook.sh")
	script := "#!/bin/sh\n" + `echo "$DRIFTGATE_NODE $DRIFTGATE_PREVIOUS_ROLE>$DRIFTGATE_ROLE $DRIFTGATE_EPOCH $DRIFTGATE_VIPS" >> "$0.log"` + "\n"
	if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	deliver := "udp://127.0.0.1:6000"
	if spec.deliver != nil {
		deliver = spec.deliver(name)
	}
	cfg := fmt.Sprintf(`node: %s
consul:
  address: 127.0.0.1:8500
vips:
  - address: %s/24
    interface: eth0
    probe: true
    announce: {count: 2, interval: 50ms, delay: 500ms}
%s
  deliver: %s
%selection:
  step_down_hold_off: 1s
  profile: %s
metrics:
  address: 127.0.0.1:9469
control:
  socket: %s
hooks:
  - name: record
    command: ["%s"]
    timeout: 2s
log:
  level: info
%s`, name, agentVIP, relayReceive(h, spec.unicast, spec.keyFile), deliver, spec.receive, cmp.Or(spec.profile, "default"), filepath.Join(dir, name+".sock"), hook, spec.config)
	p := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// relayReceive is the relay and receive sections: multicast, or unicast
// fan-out to the receivers registered in Consul.
func relayReceive(h *netlab.Host, unicast bool, keyFile string) string {
	key := ""
	if keyFile != "" {
		key = "\n  key_file: " + keyFile
	}
	if unicast {
		return fmt.Sprintf(`relay:
  listen: ["%s:5000"]
  unicast_from_consul: true%s
receive:
  listen: %s:5002%s`, agentVIP, key, h.Addr4.Addr(), key)
	}
	return fmt.Sprintf(`relay:
  listen: ["%s:5000"]
  group: 239.255.0.1:5001
  interface: eth0%s
receive:
  group: 239.255.0.1:5001
  interface: eth0%s`, agentVIP, key, key)
}

// hasVIP: the VIP is on h's eth0, and h's kernel fence, if it has one,
// lets its traffic through (a frozen holder's address outlives its lease,
// fenced).
func hasVIP(h *netlab.Host) bool {
	if !strings.Contains(h.IP("-4", "addr", "show", "dev", "eth0"), agentVIP+"/") {
		return false
	}
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		return true
	}
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return true
	}
	fenced, _ := readFence(conn)
	return !fenced
}

// agentCluster is driftgate agents, each with its own Consul client agent,
// three Consul servers, and a feed source, all in namespaces.
type agentCluster struct {
	t       *testing.T
	lab     *netlab.Lab
	nodes   map[string]*agentNode
	servers []*consultest.Agent          // cs1..cs3
	consul  map[string]*consultest.Agent // each node's client agent
	client  *api.Client
}

func startAgentCluster(t *testing.T, unicast bool) *agentCluster {
	return startCluster(t, clusterSpec{unicast: unicast})
}

func startCluster(t *testing.T, spec clusterSpec) *agentCluster {
	if len(spec.nodes) == 0 {
		spec.nodes = []string{"n1", "n2"}
	}
	names := append([]string{"cs1", "cs2", "cs3"}, spec.nodes...)
	lab := netlab.New(t, append(append(names, "src"), spec.extra...)...)
	c := &agentCluster{t: t, lab: lab, nodes: map[string]*agentNode{}, consul: map[string]*consultest.Agent{}}
	if spec.beforeAgents != nil {
		spec.beforeAgents(lab)
	}
	var serverIPs []string
	for _, n := range names[:3] {
		serverIPs = append(serverIPs, lab.Host(n).Addr4.Addr().String())
	}
	for i, n := range names[:3] {
		h := lab.Host(n)
		c.servers = append(c.servers, consultest.InNamespace(t, h.NS, serverIPs[i], n, true, 3, serverIPs, h.DialContext))
	}
	for _, n := range spec.nodes {
		h := lab.Host(n)
		c.consul[n] = consultest.InNamespace(t, h.NS, h.Addr4.Addr().String(), n, false, 0, serverIPs, h.DialContext)
		node := &agentNode{host: h, cfg: writeAgentConfig(t, n, h, spec),
			http: &http.Client{Transport: &http.Transport{DialContext: h.DialContext}, Timeout: 2 * time.Second}}
		if spec.deliver == nil {
			node.sink = newSink(t, h)
		}
		c.nodes[n] = node
	}
	for _, a := range c.servers {
		a.WaitReady()
	}
	for _, a := range c.consul {
		a.WaitReady()
	}
	for _, n := range c.nodes {
		n.start(t)
	}
	// Status comes from a server: a node's own agent may be cut off.
	c.client = c.servers[0].Client()
	return c
}

// primary is the node that holds the lock and says it is primary, or "".
func (c *agentCluster) primary() string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := consul.ReadStatus(ctx, c.client, "driftgate/leader", "driftgate")
	if err != nil {
		return ""
	}
	n, ok := c.nodes[st.Holder]
	if !ok {
		return ""
	}
	if s, err := n.state(c.t); err != nil || s.Role != "primary" {
		return ""
	}
	return st.Holder
}

func (c *agentCluster) waitUntil(what string, d time.Duration, cond func() bool) time.Duration {
	c.t.Helper()
	took, ok := testkit.Poll(d, cond)
	if !ok {
		for name, n := range c.nodes {
			c.t.Logf("%s log:\n%s", name, n.out)
		}
		c.t.Fatalf("timed out after %v waiting for %s", d, what)
	}
	return took
}

// startFeed sends a sequenced feed to the VIP from the src namespace.
func (c *agentCluster) startFeed(rate int) {
	feed := c.lab.Host("src").Self("feed", agentVIP+":5000", strconv.Itoa(rate), strconv.Itoa(rate*60))
	if err := feed.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { feed.Process.Kill(); feed.Wait() })
}

// steady checks that every node delivered every datagram from 20 on.
func (c *agentCluster) steady(minHigh int) {
	c.t.Helper()
	hi := min(c.nodes["n1"].sink.high(), c.nodes["n2"].sink.high())
	for name, n := range c.nodes {
		if miss, dup := n.sink.window(20, hi); miss != 0 || dup != 0 || hi < minHigh {
			c.t.Fatalf("steady state: %s missed %d and duplicated %d of datagrams 20..%d", name, miss, dup, hi)
		}
	}
}

// TestAgentUnicastFromConsul: without multicast, the primary's relay sends
// to the receivers registered in Consul, itself included.
func TestAgentUnicastFromConsul(t *testing.T) {
	c := startAgentCluster(t, true)
	c.waitUntil("a primary", 30*time.Second, func() bool { return c.primary() != "" })
	c.startFeed(200)
	time.Sleep(3 * time.Second)
	c.steady(400)
	old := c.primary()
	other := map[string]string{"n1": "n2", "n2": "n1"}[old]
	// The primary's metrics say so.
	resp, err := c.nodes[old].http.Get("http://127.0.0.1:9469/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`driftgate_role{role="primary"} 1`, `driftgate_relay_packets_total{listen="198.18.0.100:5000",result="forwarded"}`,
		`driftgate_receiver_frames_total{result="delivered"}`, `driftgate_vip_present{vip="198.18.0.100/24"} 1`, "driftgate_build_info{", "driftgate_takeover_seconds_count 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics of %s lack %s", old, want)
		}
	}
	// The metrics listener is read-only: a step-down there is refused,
	// pointing to the control socket, and the primary stays.
	resp, err = c.nodes[old].http.Post("http://127.0.0.1:9469/step-down", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "control socket") {
		t.Fatalf("POST /step-down on the metrics listener: %s %q, want 403 naming the control socket", resp.Status, body)
	}
	if c.primary() != old {
		t.Fatalf("the refused step-down moved the primary to %s", c.primary())
	}
	if out, err := c.nodes[old].host.Command(context.Background(), driftgate, "step-down", "--config", c.nodes[old].cfg).CombinedOutput(); err != nil {
		t.Fatalf("step-down: %v: %s", err, out)
	}
	c.waitUntil("the takeover", 10*time.Second, func() bool { return c.primary() == other })
	before := c.nodes[old].sink.high()
	c.waitUntil("the old primary to receive from the new one", 10*time.Second, func() bool { return c.nodes[old].sink.high() > before+100 })
	t.Logf("unicast fan-out: both nodes received every datagram; after step-down %s relays to both", other)
}

// TestAgentFailover runs the agent cluster with multicast and a sequenced
// feed: steady state, kill -9 of the primary (with the clean-up systemd
// runs), restart, step-down, hooks, status and SIGTERM. Default timing.
func TestAgentFailover(t *testing.T) {
	c := startAgentCluster(t, false)
	nodes, client, lab := c.nodes, c.client, c.lab
	primary, waitUntil := c.primary, c.waitUntil
	waitUntil("a primary", 30*time.Second, func() bool { return primary() != "" })

	// Sample VIP ownership on both nodes for the whole test.
	ov := sampleOverlap(t, nodes["n1"].host, nodes["n2"].host)

	// The feed: 200 datagrams/s for up to 60 s. Steady state: every node
	// got every datagram (the first few may go while the router learns
	// the VIP).
	const rate = 200
	c.startFeed(rate)
	time.Sleep(3 * time.Second)
	c.steady(400)

	// Crash: kill -9 the primary's daemon; systemd's ExecStopPost would
	// run `driftgate cleanup`, so do that.
	old := primary()
	oldState, _ := nodes[old].state(t)
	other := map[string]string{"n1": "n2", "n2": "n1"}[old]
	crash := time.Now()
	// As systemd does, run the clean-up only once the process is gone:
	// until then the kernel still holds its instance lock.
	if err := nodes[old].proc.Kill(); err != nil {
		t.Fatal(err)
	}
	if out, err := nodes[old].host.Command(context.Background(), driftgate, "cleanup", "--config", nodes[old].cfg).CombinedOutput(); err != nil {
		t.Fatalf("cleanup: %v: %s", err, out)
	}
	took := waitUntil("the standby to take over", 30*time.Second, func() bool { return primary() == other })
	before := nodes[other].sink.high()
	waitUntil("frames to flow again", 10*time.Second, func() bool { return nodes[other].sink.high() > before+rate/2 })
	gap, _ := nodes[other].sink.gapAfter(crash)
	newState, _ := nodes[other].state(t)
	if newState.Epoch <= oldState.Epoch {
		t.Fatalf("epoch after failover %d, not above %d", newState.Epoch, oldState.Epoch)
	}
	t.Logf("kill -9 of %s: %s primary after %v; longest delivery gap at %s %v (epoch %d → %d)",
		old, other, took.Round(time.Millisecond), other, gap.Round(time.Millisecond), oldState.Epoch, newState.Epoch)

	// The killed node comes back as a standby.
	nodes[old].start(t)
	waitUntil("the restarted node to receive", 20*time.Second, func() bool {
		s, err := nodes[old].state(t)
		return err == nil && s.Role == "standby" && s.Receiver != nil && s.Receiver.Delivered > 0
	})

	// Clean step-down: the standby takes over at once.
	stepStart := time.Now()
	highBefore := nodes[other].sink.high()
	if out, err := nodes[other].host.Command(context.Background(), driftgate, "step-down", "--config", nodes[other].cfg).CombinedOutput(); err != nil {
		t.Fatalf("step-down: %v: %s", err, out)
	}
	took = waitUntil("the takeover", 10*time.Second, func() bool { return primary() == old })
	time.Sleep(time.Second)
	highAfter := nodes[old].sink.high()
	miss, _ := nodes[old].sink.window(highBefore+1, highAfter-rate/10)
	sgap, _ := nodes[old].sink.gapAfter(stepStart)
	t.Logf("step-down of %s: %s primary after %v; datagrams lost at %s: %d (of %d..%d); longest delivery gap %v",
		other, old, took.Round(time.Millisecond), old, miss, highBefore+1, highAfter-rate/10, sgap.Round(time.Millisecond))
	// The deposed primary's receiver took the new term's frames only once
	// Consul showed the term: how long did its first frames wait, and was
	// any dropped for want of a confirmation?
	if s, err := nodes[other].state(t); err == nil && s.Receiver != nil {
		t.Logf("step-down: at %s, the new term's frames waited at most %v for Consul's confirmation; %d dropped unconfirmed",
			other, s.Receiver.ConfirmWait, s.Receiver.Unconfirmed)
		if s.Receiver.Unconfirmed != 0 {
			t.Errorf("%s dropped %d frames of the new primary as unconfirmed", other, s.Receiver.Unconfirmed)
		}
	}

	// An operator deletes the VIP on the primary: it gives up at once.
	time.Sleep(1500 * time.Millisecond) // the step-down hold-off of the other node ends
	nodes[old].host.IP("addr", "del", agentVIP+"/24", "dev", "eth0")
	took = waitUntil("the takeover after the VIP was deleted", 10*time.Second, func() bool { return primary() == other })
	t.Logf("VIP deleted by hand on %s: %s primary after %v", old, other, took.Round(time.Millisecond))

	// The primary's link goes down (its switch port): it drops the VIP at
	// once; it cannot reach Consul either, and its renewals stop, so the
	// standby breaks the lock t_wait after the last renewal it saw (or
	// takes it after Consul fences the node, if that comes first).
	time.Sleep(1500 * time.Millisecond)
	port := nodes[other].host.Port
	if out, err := exec.Command("ip", "-n", lab.BridgeNS, "link", "set", port, "down").CombinedOutput(); err != nil {
		t.Fatalf("port down: %v: %s", err, out)
	}
	linkDown := time.Now()
	waitUntil("the primary to drop its VIP on link loss", 5*time.Second, func() bool { return !hasVIP(nodes[other].host) })
	dropped := time.Since(linkDown)
	took = waitUntil("the takeover after link loss", 60*time.Second, func() bool { return primary() == old })
	t.Logf("link down on %s: VIP dropped after %v, %s primary after %v", other, dropped.Round(time.Millisecond), old, took.Round(time.Millisecond))
	if out, err := exec.Command("ip", "-n", lab.BridgeNS, "link", "set", port, "up").CombinedOutput(); err != nil {
		t.Fatalf("port up: %v: %s", err, out)
	}
	// It may contend again once Consul sees its node alive (serf retries
	// failed members every 30 s by default).
	back := waitUntil("the node with the restored link to be healthy in Consul", 90*time.Second, func() bool {
		st, err := consul.ReadStatus(context.Background(), client, "driftgate/leader", "driftgate")
		if err != nil {
			return false
		}
		for _, n := range st.Nodes {
			if n.Node == other && n.Checks["Serf Health Status"] == "passing" && n.Checks["driftgate link"] == "passing" {
				return true
			}
		}
		return false
	})
	waitUntil("the node with the restored link to contend again", 10*time.Second, func() bool {
		s, err := nodes[other].state(t)
		return err == nil && s.Role == "standby" && s.Phase == "contending"
	})
	t.Logf("link restored on %s: healthy in Consul again after %v", other, back.Round(time.Millisecond))

	// Bad input never costs the primary its VIP: an agent started with a
	// broken configuration fails before touching anything (exit 2), and a
	// second agent for the node refuses to run; so does a clean-up.
	bad := filepath.Join(filepath.Dir(nodes[old].cfg), "bad.yaml")
	os.WriteFile(bad, []byte("node: "+old+"\nelection:\n  t_fence: 3\n"), 0o644)
	for _, args := range [][]string{{"agent", "--config", bad}, {"agent", "--config", nodes[old].cfg}, {"cleanup", "--config", nodes[old].cfg}} {
		cmd := nodes[old].host.Command(context.Background(), driftgate, args...)
		out, err := cmd.CombinedOutput()
		if err == nil || !hasVIP(nodes[old].host) || primary() != old ||
			(args[0] == "agent" && args[2] != bad && !strings.Contains(string(out), "another driftgate agent for this node is running")) {
			t.Fatalf("driftgate %v on the primary: %v, VIP still there: %v\n%s", args, err, hasVIP(nodes[old].host), out)
		}
		t.Logf("driftgate %s on the primary fails (%v): %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	// A reload (SIGHUP) with a broken file: the primary says so and keeps
	// running, VIP and all.
	good, _ := os.ReadFile(nodes[old].cfg)
	os.WriteFile(nodes[old].cfg, []byte("node: "+old+"\nvips: []\n"), 0o644)
	nodes[old].proc.Signal(syscall.SIGHUP)
	waitUntil("the reload to be refused", 5*time.Second, func() bool {
		return strings.Contains(nodes[old].out.String(), "reload: the configuration file is invalid")
	})
	os.WriteFile(nodes[old].cfg, good, 0o644)
	time.Sleep(500 * time.Millisecond)
	if !hasVIP(nodes[old].host) || primary() != old {
		t.Fatalf("after a reload with a broken file: VIP %v, primary %q", hasVIP(nodes[old].host), primary())
	}
	t.Logf("SIGHUP with a broken file on the primary: refused, still primary")

	samples, overlaps := ov.end()
	if overlaps != 0 {
		t.Fatalf("SAFETY: both nodes had the VIP in %d of %d samples", overlaps, samples)
	}
	t.Logf("VIP sampled %d times every 50ms: never on both nodes", samples)
	// Exactly one primary, and the status command agrees (exit 0).
	out, err := nodes[other].host.Command(context.Background(), driftgate, "status", "--config", nodes[other].cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "primary: "+old) {
		t.Fatalf("driftgate status: %v\n%s", err, out)
	}
	t.Logf("driftgate status on %s:\n%s", other, out)
	// …and says the standby would take over.
	waitUntil("status to show the standby eligible", 10*time.Second, func() bool {
		out, err := nodes[other].host.Command(context.Background(), driftgate, "status", "--config", nodes[other].cfg).CombinedOutput()
		return err == nil && strings.Contains(string(out), "eligible standbys: 1")
	})

	// Hooks ran on every transition, with role, epoch and VIP.
	hookLog, _ := os.ReadFile(filepath.Join(filepath.Dir(nodes[old].cfg), "hook.sh.log"))
	if !strings.Contains(string(hookLog), old+" candidate>primary ") || !strings.Contains(string(hookLog), agentVIP+"/24") {
		t.Fatalf("hook log of %s lacks the takeover:\n%s", old, hookLog)
	}

	// SIGTERM of the primary: it steps down cleanly (the standby takes
	// over at once), deregisters and exits 0. First let the standby's
	// step-down hold-off end.
	time.Sleep(1500 * time.Millisecond)
	nodes[old].proc.Signal(syscall.SIGTERM)
	if err := nodes[old].proc.Wait(20 * time.Second); err != nil {
		t.Fatalf("agent exit after SIGTERM: %v\n%s", err, nodes[old].out)
	}
	took = waitUntil("the takeover after SIGTERM", 10*time.Second, func() bool { return primary() == other })
	if hasVIP(nodes[old].host) {
		t.Fatal("the stopped agent left its VIP")
	}
	st, err := consul.ReadStatus(context.Background(), client, "driftgate/leader", "driftgate")
	if err != nil || len(st.Nodes) != 1 || st.Nodes[0].Node != other {
		t.Fatalf("after SIGTERM: registered nodes %+v, %v; want only %s", st.Nodes, err, other)
	}
	t.Logf("SIGTERM of %s: exit 0, %s primary %v after the signal", old, other, took.Round(time.Millisecond))
}
