package e2e

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"

	"driftgate/consul"
	"driftgate/consul/consultest"
	"driftgate/internal/netlab"
	"driftgate/internal/testkit"
)

// The chaos suite: the agent cluster (three Consul servers, a client agent
// and a driftgate agent per node, receivers on every node, a sequenced feed
// into the VIP) under faults injected one after another in random order
// with random timing, recorded on one clock and checked against the
// invariants. `make test-chaos` runs it long; `make test` runs each fault
// once.
//
//	DRIFTGATE_CHAOS_TRIALS  trials per fault (default 1)
//	DRIFTGATE_CHAOS_NODES   driftgate nodes, 2 or 3 (default 2)
//	DRIFTGATE_CHAOS_SEED    seed of the order and timing (default: the clock)
//	DRIFTGATE_CHAOS_FAULTS  comma-separated fault names to run (default all)
//	DRIFTGATE_CHAOS_REPORT  file to write the report table to (markdown)
//	DRIFTGATE_CHAOS_PROFILE the agents' election.profile (default "default")

const (
	chaosRate = 200 // feed datagrams per second
	// overlapTolerance: VIP add/remove timestamps come from one netlink
	// monitor per namespace, each read by its own goroutine; allow for
	// their scheduling delay, nothing else.
	overlapTolerance = 5 * time.Millisecond
	// recoveryLimit: after a fault heals, the cluster must be whole again
	// (one primary the router points at, every node standby or primary and
	// healthy in Consul, every receiver delivering) within this. Consul's
	// serf takes up to ~30 s to see a partitioned node alive again.
	recoveryLimit = 90 * time.Second
)

// fault is one kind of injected failure.
type fault struct {
	name string
	// on says what it hits: the primary node, or the Consul leader.
	on string
	// hold is how long the fault lasts before it heals.
	hold func(r *rand.Rand) time.Duration
	// inject breaks something and returns what heals it.
	inject func(c *chaos, victim string) (heal func())
	// killsReceiver: the victim's receiver does not run through the fault
	// (its process dies), so what was sent meanwhile is not its to deliver.
	killsReceiver bool
	// cutsLink: the victim's link carries nothing from the injection on, so
	// what its relay sent at that instant (the feed reaches it over the
	// same link: nothing after) reached only its own receiver.
	cutsLink bool
}

func between(lo, hi time.Duration) func(*rand.Rand) time.Duration {
	return func(r *rand.Rand) time.Duration { return lo + time.Duration(r.Int64N(int64(hi-lo)+1)) }
}

func fixed(d time.Duration) func(*rand.Rand) time.Duration {
	return func(*rand.Rand) time.Duration { return d }
}

// chaos is the suite's state.
type chaos struct {
	*agentCluster
	t      *testing.T
	rec    *recorder
	rogue  *netlab.Host
	checks map[string]*checkTarget
	// One client per server, made once: every client has its own
	// connection pool, and Consul refuses an address more than 200.
	clients []*api.Client
}

func faults() []fault {
	stop := func(d time.Duration) fault {
		return fault{name: "daemon SIGSTOP " + d.String(), on: "primary", hold: fixed(d),
			inject: func(c *chaos, v string) func() {
				c.nodes[v].proc.Signal(syscall.SIGSTOP)
				return func() { c.nodes[v].proc.Signal(syscall.SIGCONT) }
			}}
	}
	return []fault{
		{name: "host crash", on: "primary", hold: between(2*time.Second, 8*time.Second), killsReceiver: true,
			inject: func(c *chaos, v string) func() {
				c.hostCrash(v)
				return func() { c.reboot(v) }
			}},
		{name: "host freeze", on: "primary", hold: fixed(15 * time.Second),
			inject: func(c *chaos, v string) func() {
				// Every process of the host at once: a hung host or a
				// paused VM.
				c.nodes[v].proc.Signal(syscall.SIGSTOP)
				c.consul[v].Pause()
				return func() {
					c.consul[v].Resume()
					c.nodes[v].proc.Signal(syscall.SIGCONT)
				}
			}},
		{name: "daemon SIGKILL", on: "primary", hold: between(200*time.Millisecond, 2*time.Second), killsReceiver: true,
			inject: func(c *chaos, v string) func() {
				c.kill(v)
				c.cleanup(v) // systemd's ExecStopPost
				return func() { c.startDaemon(v) }
			}},
		{name: "daemon SIGKILL without clean-up", on: "primary", hold: between(200*time.Millisecond, 2*time.Second), killsReceiver: true,
			inject: func(c *chaos, v string) func() {
				c.kill(v)
				return func() { c.startDaemon(v) }
			}},
		stop(300 * time.Millisecond), stop(time.Second), stop(5 * time.Second), stop(30 * time.Second),
		{name: "consul agent stopped", on: "primary", hold: between(2*time.Second, 8*time.Second),
			inject: func(c *chaos, v string) func() {
				c.consul[v].Stop()
				return c.consul[v].Restart
			}},
		{name: "consul agent killed", on: "primary", hold: between(2*time.Second, 8*time.Second),
			inject: func(c *chaos, v string) func() {
				c.consul[v].Kill()
				return c.consul[v].Restart
			}},
		{name: "cut off from consul servers", on: "primary", hold: between(5*time.Second, 30*time.Second),
			inject: func(c *chaos, v string) func() { return c.cutFromServers(v) }},
		{name: "cut off from everything", on: "primary", hold: between(3*time.Second, 15*time.Second), cutsLink: true,
			inject: func(c *chaos, v string) func() { return c.bridgePort(v, "state", "0", "3") }},
		{name: "consul leader killed", on: "leader", hold: between(2*time.Second, 10*time.Second),
			inject: func(c *chaos, v string) func() {
				s := c.server(v)
				s.Kill()
				return s.Restart
			}},
		{name: "consul leader paused", on: "leader", hold: between(time.Second, 10*time.Second),
			inject: func(c *chaos, v string) func() {
				s := c.server(v)
				s.Pause()
				return s.Resume
			}},
		{name: "user check critical", on: "primary", hold: between(2*time.Second, 8*time.Second),
			inject: func(c *chaos, v string) func() {
				c.checks[v].set(false)
				return func() { c.checks[v].set(true) }
			}},
		{name: "user check flapping", on: "primary", hold: between(4*time.Second, 10*time.Second),
			inject: func(c *chaos, v string) func() {
				stop := make(chan struct{})
				done := make(chan struct{})
				go func() {
					defer close(done)
					for up := false; ; up = !up {
						c.checks[v].set(up)
						select {
						case <-stop:
							return
						case <-time.After(time.Second):
						}
					}
				}()
				return func() { close(stop); <-done; c.checks[v].set(true) }
			}},
		{name: "lossy LAN", on: "standby", hold: between(3*time.Second, 10*time.Second),
			inject: func(c *chaos, v string) func() {
				// Random drops of the feed's frames on their way to one
				// standby (2–20 %), which must repair every one of them.
				pct := 2 + float64(time.Now().UnixNano()%19)
				c.rec.add(v, "note", fmt.Sprintf("dropping %.0f%% of the frames towards %s", pct, v))
				c.lab.Drop(c.lab.Host(v), pct, 5001)
				return func() { c.lab.Undrop(c.lab.Host(v)) }
			}},
		{name: "link down", on: "primary", hold: between(time.Second, 8*time.Second), cutsLink: true,
			inject: func(c *chaos, v string) func() { return c.bridgePort(v, "", "down", "up") }},
		{name: "VIP deleted", on: "primary", hold: fixed(0),
			inject: func(c *chaos, v string) func() {
				c.nodes[v].host.IP("addr", "del", agentVIP+"/24", "dev", "eth0")
				return func() {}
			}},
		{name: "rogue ARP claim", on: "primary", hold: fixed(0),
			inject: func(c *chaos, v string) func() {
				if out, err := c.rogue.Self("garp", "eth0", agentVIP, "3").CombinedOutput(); err != nil {
					c.t.Errorf("rogue ARP: %v: %s", err, out)
				}
				return func() {}
			}},
		{name: "stray epoch frame", on: "primary", hold: fixed(0),
			inject: func(c *chaos, v string) func() {
				// One frame with the primary's epoch + 10⁶ from a host the
				// receivers take frames from (receive.sources): it must wait
				// for a confirmation Consul never gives, and fence nobody.
				st, err := c.nodes[v].state(c.t)
				if err != nil {
					c.t.Errorf("stray epoch: reading %s's state: %v", v, err)
					return func() {}
				}
				if err := sendStrayEpoch(c.rogue, st.Epoch, "-1"); err != nil {
					c.t.Errorf("stray epoch frame: %v", err)
				}
				return func() {}
			}},
		{name: "leader key deleted", on: "primary", hold: fixed(0),
			inject: func(c *chaos, v string) func() {
				if _, err := c.anyServer().KV().Delete("driftgate/leader", nil); err != nil {
					c.t.Errorf("deleting the leader key: %v", err)
				}
				return func() {}
			}},
		{name: "leader key overwritten", on: "primary", hold: fixed(0),
			inject: func(c *chaos, v string) func() {
				if _, err := c.anyServer().KV().Put(&api.KVPair{Key: "driftgate/leader", Value: []byte("operator was here")}, nil); err != nil {
					c.t.Errorf("overwriting the leader key: %v", err)
				}
				return func() {}
			}},
	}
}

// trial is one injected fault and what the recording shows about it.
type trial struct {
	fault, victim                  string
	killsReceiver, cutsLink        bool
	quiet, inject, heal, recovered time.Time
	// measured
	failover time.Duration // longest pause in deliveries at the other nodes
	lost     int           // datagrams never delivered at another node (max)
}

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

func TestChaos(t *testing.T) {
	trials := envInt(t, "DRIFTGATE_CHAOS_TRIALS", 1)
	nNodes := envInt(t, "DRIFTGATE_CHAOS_NODES", 2)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DRIFTGATE_CHAOS_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("DRIFTGATE_CHAOS_SEED=%q: %v", s, err)
		}
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	all := faults()
	if only := os.Getenv("DRIFTGATE_CHAOS_FAULTS"); only != "" {
		var keep []fault
		for _, f := range all {
			for _, name := range strings.Split(only, ",") {
				if strings.TrimSpace(name) == f.name {
					keep = append(keep, f)
				}
			}
		}
		if len(keep) == 0 {
			t.Fatalf("DRIFTGATE_CHAOS_FAULTS=%q names no fault", only)
		}
		all = keep
	}
	var order []fault
	for range trials {
		order = append(order, all...)
	}
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	profile := cmp.Or(os.Getenv("DRIFTGATE_CHAOS_PROFILE"), "default")
	t.Logf("chaos: %d trials, %d nodes, profile %s, seed %d (DRIFTGATE_CHAOS_SEED=%d repeats the order and timing)", len(order), nNodes, profile, seed, seed)

	c := startChaos(t, nNodes, profile)
	// The feed runs for the whole suite; it is bounded by count and so by
	// time (MAX/RATE + 10 s).
	budget := 120 + len(order)*90
	feed := c.lab.Host("src").Self("feed", agentVIP+":5000", strconv.Itoa(chaosRate), strconv.Itoa(chaosRate*budget))
	if err := feed.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { feed.Process.Kill(); feed.Wait() })

	var done []trial
	defer func() {
		if dir := os.Getenv("DRIFTGATE_CHAOS_LOGS"); dir != "" {
			os.MkdirAll(dir, 0o755)
			for n, node := range c.nodes {
				os.WriteFile(filepath.Join(dir, n+".log"), []byte(node.log()), 0o644)
			}
			os.WriteFile(filepath.Join(dir, "timeline.txt"), []byte(c.rec.timeline(c.rec.start, 24*time.Hour)), 0o644)
		}
		if t.Failed() {
			for n, node := range c.nodes {
				t.Logf("%s log (last 6000 bytes):\n%s", n, tail(node.log(), 6000))
			}
		}
	}()
	whole := c.waitRecovered(time.Now(), 60*time.Second, "the cluster to form")
	for i, f := range order {
		tr := trial{fault: f.name, quiet: whole, killsReceiver: f.killsReceiver, cutsLink: f.cutsLink}
		// A quiet stretch, which must be loss-free (the stable stretch
		// of the recovery before it counts too), then the fault at a
		// random moment.
		time.Sleep(time.Duration(rng.Int64N(int64(time.Second))))
		tr.victim = c.pickVictim(f.on)
		hold := f.hold(rng)
		tr.inject = time.Now()
		c.rec.add(tr.victim, "fault", f.name)
		heal := f.inject(c, tr.victim)
		time.Sleep(hold)
		tr.heal = time.Now()
		heal()
		c.rec.add(tr.victim, "heal", f.name)
		tr.recovered = c.waitRecovered(tr.heal, recoveryLimit, fmt.Sprintf("recovery from %q on %s", f.name, tr.victim))
		whole = tr.recovered
		c.rec.add("", "recovered", fmt.Sprintf("%s: %v after the heal", f.name, tr.recovered.Sub(tr.heal).Round(time.Millisecond)))
		done = append(done, tr)
		t.Logf("trial %d/%d: %s on %s for %v: %s; whole again %v after the heal", i+1, len(order), f.name, tr.victim,
			hold.Round(time.Millisecond), c.rec.vipMoves(tr.inject, tr.recovered), tr.recovered.Sub(tr.heal).Round(time.Millisecond))
	}
	time.Sleep(2 * time.Second) // a last quiet stretch
	end := time.Now()
	// What one node delivered just before the end another may deliver just
	// after: wait (bounded) until every node has caught up with the newest
	// datagram any node delivered before the end, then check.
	newest := func(n string, before time.Time) int {
		hi := -1
		for _, f := range c.rec.framesOf(n) {
			if before.IsZero() || f.t.Before(before) {
				hi = max(hi, f.src)
			}
		}
		return hi
	}
	target := -1
	for n := range c.nodes {
		target = max(target, newest(n, end))
	}
	testkit.Poll(2*time.Second, func() bool {
		for n := range c.nodes {
			if newest(n, time.Time{}) < target {
				return false
			}
		}
		return true
	})
	c.check(done, end)
}

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// checkTarget is a TCP listener in a node's namespace that its user health
// check probes: open is passing, closed is critical.
type checkTarget struct {
	h  *netlab.Host
	mu sync.Mutex
	l  net.Listener
}

func (ct *checkTarget) set(up bool) {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	if up == (ct.l != nil) {
		return
	}
	if !up {
		ct.l.Close()
		ct.l = nil
		return
	}
	err := ct.h.Do(func() (err error) {
		ct.l, err = net.Listen("tcp4", "127.0.0.1:7070")
		return err
	})
	if err != nil {
		panic(fmt.Sprintf("check target in %s: %v", ct.h.Name, err))
	}
	go func(l net.Listener) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}(ct.l)
}

func startChaos(t *testing.T, nNodes int, profile string) *chaos {
	var names []string
	for i := range nNodes {
		names = append(names, fmt.Sprintf("n%d", i+1))
	}
	sockDir := t.TempDir()
	os.Chmod(sockDir, 0o777)
	var rec *recorder
	c := &chaos{t: t, checks: map[string]*checkTarget{}}
	spec := clusterSpec{nodes: names, extra: []string{"rogue"}, profile: profile,
		// The rogue host is a source the receivers take frames from, so a
		// stray epoch from it meets the epoch confirmation, not only the
		// source check.
		receive: "  sources: [198.18.0.0/24]\n",
		deliver: func(node string) string { return rec.frameSink(t, sockDir, node) },
		config: `checks:
  - name: app
    tcp: 127.0.0.1:7070
    interval: 1s
    timeout: 500ms
`}
	// The recorder needs the hosts, and the hosts come with the cluster:
	// start the lab first through a spec hook.
	spec.beforeAgents = func(lab *netlab.Lab) {
		var hosts []*netlab.Host
		for _, n := range append(slices.Clone(names), "rogue") {
			hosts = append(hosts, lab.Host(n))
		}
		rec = newRecorder(hosts...)
		for _, n := range names {
			rec.watchVIP(t, lab.Host(n))
			rec.watchFence(t, lab.Host(n))
			ct := &checkTarget{h: lab.Host(n)}
			ct.set(true)
			t.Cleanup(func() { ct.set(false) })
			c.checks[n] = ct
		}
		rec.watchRouter(t, lab.Host("src"))
	}
	c.agentCluster = startCluster(t, spec)
	c.rec = rec
	c.rogue = c.lab.Host("rogue")
	for _, s := range c.servers {
		c.clients = append(c.clients, s.Client())
	}
	return c
}

// kill SIGKILLs node's daemon and waits until it is gone (reaped), as
// systemd does before it runs ExecStopPost.
func (c *agentCluster) kill(n string) {
	if err := c.nodes[n].proc.Kill(); err != nil {
		c.t.Fatalf("the daemon of %s: %v", n, err)
	}
}

// cleanup runs `driftgate cleanup` as the unit's ExecStopPost does.
func (c *chaos) cleanup(n string) {
	out, err := c.nodes[n].host.Command(context.Background(), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all,+net_admin,+net_raw", "--ambient-caps=-all,+net_admin,+net_raw", "--bounding-set=-all,+net_admin,+net_raw",
		"--", driftgate, "cleanup", "--config", c.nodes[n].cfg).CombinedOutput()
	if err != nil {
		c.t.Errorf("cleanup on %s: %v: %s", n, err, out)
	}
}

func (c *chaos) startDaemon(n string) { c.nodes[n].start(c.t) }

// hostCrash is node n's host dying: every process in its namespace (the
// daemon and its Consul agent) SIGKILLed and its link down at once. It
// returns once both processes are gone.
func (c *agentCluster) hostCrash(n string) {
	var wg sync.WaitGroup
	wg.Go(func() { c.kill(n) })
	wg.Go(func() { c.consul[n].Kill() })
	c.bridgePort(n, "", "down", "up")
	wg.Wait()
}

// reboot brings a crashed host back: link up, its Consul agent on its old
// data directory (which restores the dead run's checks with their last
// status), driftgate started fresh. Within rebootEligible of its agent
// rejoining the node must be an eligible standby again: a pair that
// silently lost its standby is the failure this guards.
func (c *chaos) reboot(n string) {
	if out, err := exec.Command("ip", "-n", c.lab.BridgeNS, "link", "set", "dev", c.nodes[n].host.Port, "up").CombinedOutput(); err != nil {
		c.t.Errorf("link up: %v: %s", err, out)
	}
	c.consul[n].Restart() // returns once the agent is back in the cluster
	rejoined := time.Now()
	c.rec.add(n, "consul agent rejoined", "")
	c.startDaemon(n)
	_, ok := testkit.Poll(rebootEligible-time.Since(rejoined), func() bool {
		s, err := c.nodes[n].state(c.t)
		return err == nil && s.Role == "standby" && s.Eligible
	})
	if !ok {
		s, _ := c.nodes[n].state(c.t)
		c.t.Errorf("%s rebooted: not an eligible standby %v after its Consul agent rejoined: %s (%s)", n, rebootEligible, s.Role, s.Ineligible)
		return
	}
	c.rec.add(n, "eligible standby again", fmt.Sprintf("%v after its agent rejoined", time.Since(rejoined).Round(time.Millisecond)))
}

// rebootEligible bounds how long a rebooted host may take to be an eligible
// standby once its Consul agent is back.
const rebootEligible = 5 * time.Second

// bridgePort changes n's port on the bridge: with attr "state", the STP
// port state (0 disabled: nothing passes, yet the host keeps its carrier);
// with attr "", the link itself (down: the host loses carrier).
func (c *agentCluster) bridgePort(n, attr, broken, healed string) func() {
	set := func(v string) {
		args := []string{"-n", c.lab.BridgeNS, "link", "set", "dev", c.nodes[n].host.Port, v}
		cmd := "ip"
		if attr != "" {
			cmd, args = "bridge", []string{"-n", c.lab.BridgeNS, "link", "set", "dev", c.nodes[n].host.Port, attr, v}
		}
		if out, err := exec.Command(cmd, args...).CombinedOutput(); err != nil {
			c.t.Errorf("%s %v: %v: %s", cmd, args, err, out)
		}
	}
	set(broken)
	return func() { set(healed) }
}

// cutFromServers drops all IP traffic between node n and the Consul
// servers; n still reaches every other host, and so does its Consul agent.
func (c *chaos) cutFromServers(n string) func() {
	h := c.nodes[n].host
	route := func(op string) {
		for _, s := range []string{"cs1", "cs2", "cs3"} {
			sh := c.lab.Host(s)
			for _, r := range [][2]*netlab.Host{{h, sh}, {sh, h}} {
				if out, err := exec.Command("ip", "-n", r[0].NS, "route", op, "blackhole", r[1].Addr4.Addr().String()+"/32").CombinedOutput(); err != nil {
					c.t.Errorf("route %s on %s: %v: %s", op, r[0].Name, err, out)
				}
			}
		}
	}
	route("add")
	return func() { route("del") }
}

// server returns the Consul server agent running on host name.
func (c *chaos) server(name string) *consultest.Agent {
	for _, s := range c.servers {
		if s.Name == name {
			return s
		}
	}
	c.t.Fatalf("no consul server %s", name)
	return nil
}

// anyServer is a client of the first Consul server that answers.
func (c *chaos) anyServer() *api.Client {
	for _, cl := range c.clients {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cl.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		cancel()
		if err == nil {
			return cl
		}
	}
	return c.clients[0]
}

// pickVictim names the primary node, or the host of the Consul leader.
func (c *chaos) pickVictim(on string) string {
	if on == "leader" {
		leader, err := c.anyServer().Status().Leader()
		if err != nil {
			c.t.Fatalf("finding the Consul leader: %v", err)
		}
		for _, s := range c.servers {
			if strings.HasPrefix(leader, c.lab.Host(s.Name).Addr4.Addr().String()+":") {
				return s.Name
			}
		}
		c.t.Fatalf("the Consul leader %q is none of the servers", leader)
	}
	hs := c.rec.vipHolders()
	if len(hs) != 1 {
		c.t.Fatalf("VIP holders before the fault: %v", hs)
	}
	if on == "standby" {
		for n := range c.nodes {
			if n != hs[0] {
				return n
			}
		}
	}
	return hs[0]
}

// whole reports whether the cluster is whole: exactly one node has the VIP
// and says it is primary, Consul's key names it, the router points at it,
// every other node is a healthy standby contending for the lock, and every
// receiver delivered frames of the primary's epoch since `since`.
func (c *chaos) whole(since time.Time) (bool, string) {
	hs := c.rec.vipHolders()
	if len(hs) != 1 {
		return false, fmt.Sprintf("VIP on %v", hs)
	}
	p := hs[0]
	if r := c.rec.routerTarget(); r != p {
		return false, fmt.Sprintf("router points at %q, VIP on %s", r, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := consul.ReadStatus(ctx, c.anyServer(), "driftgate/leader", "driftgate")
	if err != nil {
		return false, err.Error()
	}
	if st.Holder != p {
		return false, fmt.Sprintf("Consul says %q holds the lock, VIP on %s", st.Holder, p)
	}
	healthy := map[string]bool{}
	for _, ns := range st.Nodes {
		ok := true
		for _, s := range ns.Checks {
			ok = ok && s == "passing"
		}
		healthy[ns.Node] = ok
	}
	var epoch uint64
	for n, node := range c.nodes {
		s, err := node.state(c.t)
		if err != nil {
			return false, fmt.Sprintf("%s: %v", n, err)
		}
		switch {
		case !healthy[n]:
			return false, n + " not healthy in Consul"
		case n == p && s.Role != "primary":
			return false, fmt.Sprintf("%s has the VIP but is %s", n, s.Role)
		case n == p:
			epoch = s.Epoch
		case s.Role != "standby" || s.Phase != "contending":
			return false, fmt.Sprintf("%s is %s (%s)", n, s.Role, s.Phase)
		case !s.Eligible:
			return false, fmt.Sprintf("%s is standby but not eligible: %s", n, s.Ineligible)
		}
	}
	if st.EligibleStandbys != len(c.nodes)-1 {
		return false, fmt.Sprintf("Consul shows %d eligible standbys, want %d", st.EligibleStandbys, len(c.nodes)-1)
	}
	for n := range c.nodes {
		if at, e := c.rec.lastFrame(n); at.Before(since) || e != epoch {
			return false, fmt.Sprintf("%s's receiver has not delivered epoch %d frames yet", n, epoch)
		}
	}
	return true, ""
}

// waitRecovered waits until the cluster has been whole for stableFor
// without a break (a delayed Consul sync can still end a term a second or
// two after a heal) and returns when that stretch began.
func (c *chaos) waitRecovered(from time.Time, limit time.Duration, what string) time.Time {
	c.t.Helper()
	const stableFor = 3 * time.Second
	var why string
	var since time.Time
	for time.Since(from) < limit {
		ok, w := c.whole(time.Now().Add(-200 * time.Millisecond))
		switch {
		case !ok:
			since, why = time.Time{}, w
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= stableFor:
			return since
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("waiting for %s: not whole for %v on end within %v: %s\ntimeline:\n%s", what, stableFor, limit, why, c.rec.timeline(from, limit))
	return time.Time{}
}

// check measures each trial and checks the invariants over the whole
// recording.
func (c *chaos) check(trials []trial, end time.Time) {
	t := c.t
	var problems []string
	problem := func(at time.Time, format string, args ...any) {
		problems = append(problems, fmt.Sprintf(format, args...)+"\ntimeline around it:\n"+c.rec.timeline(at, 3*time.Second))
	}
	// The recording is over: read each receiver's deliveries once.
	frames := map[string][]delivered{}
	for n := range c.nodes {
		frames[n] = c.rec.framesOf(n)
	}

	// 1. VIP ownership never overlaps.
	iv := c.rec.ownership(end)
	ov := overlaps(iv, overlapTolerance)
	for _, o := range ov {
		problem(maxTime(o[0].from, o[1].from), "SAFETY: %s and %s both had the VIP for %v",
			o[0].node, o[1].node, minTime(o[0].to, o[1].to).Sub(maxTime(o[0].from, o[1].from)))
	}
	overlapsIn := func(tr trial, next time.Time) int {
		n := 0
		for _, o := range ov {
			if at := maxTime(o[0].from, o[1].from); !at.Before(tr.quiet) && at.Before(next) {
				n++
			}
		}
		return n
	}

	// 2. Epochs only increase, at every receiver and across them.
	stale := map[string][]delivered{}
	firstSeen := map[uint64]time.Time{}
	for n := range c.nodes {
		var high uint64
		for _, f := range frames[n] {
			if f.epoch < high {
				stale[n] = append(stale[n], f)
				problem(f.t, "%s delivered a frame of epoch %d (source %d) after one of epoch %d", n, f.epoch, f.src, high)
			}
			high = max(high, f.epoch)
			if at, ok := firstSeen[f.epoch]; !ok || f.t.Before(at) {
				firstSeen[f.epoch] = f.t
			}
		}
	}
	var epochs []uint64
	for e := range firstSeen {
		epochs = append(epochs, e)
	}
	slices.Sort(epochs)
	for i := 1; i < len(epochs); i++ {
		if firstSeen[epochs[i]].Before(firstSeen[epochs[i-1]]) {
			problem(firstSeen[epochs[i]], "epoch %d was delivered before epoch %d", epochs[i], epochs[i-1])
		}
	}
	staleIn := func(tr trial, next time.Time) int {
		k := 0
		for _, fs := range stale {
			for _, f := range fs {
				if !f.t.Before(tr.quiet) && f.t.Before(next) {
					k++
				}
			}
		}
		return k
	}

	// 3. Exactly once: no receiver ever delivers a datagram twice, and in
	// the quiet stretch before each fault every receiver gets every
	// datagram.
	got := map[string]map[int]bool{} // by node: the datagrams it delivered
	for n := range c.nodes {
		seen := map[int]time.Time{}
		got[n] = map[int]bool{}
		for _, f := range frames[n] {
			got[n][f.src] = true
			if at, dup := seen[f.src]; dup {
				problem(f.t, "%s delivered datagram %d twice (first at %s)", n, f.src, at.Sub(c.rec.start))
			}
			seen[f.src] = f.t
		}
	}
	for i, tr := range trials {
		from := tr.quiet.Add(300 * time.Millisecond)
		lo, hi := -1, -1
		for n := range c.nodes {
			for _, f := range frames[n] {
				if f.t.After(from) && f.t.Before(tr.inject) {
					if lo < 0 || f.src < lo {
						lo = f.src
					}
					hi = max(hi, f.src)
				}
			}
		}
		if lo < 0 || hi-lo < chaosRate {
			problem(tr.inject, "trial %d (%s): only datagrams %d..%d delivered in the quiet stretch before it", i+1, tr.fault, lo, hi)
			continue
		}
		hi -= chaosRate / 20 // the last 50 ms may still be in flight at the fault
		for n := range c.nodes {
			var missing []int
			for q := lo; q <= hi; q++ {
				if !got[n][q] {
					missing = append(missing, q)
				}
			}
			if len(missing) > 0 {
				problem(tr.inject, "trial %d (%s): %s missed %d of datagrams %d..%d before the fault, e.g. %v", i+1, tr.fault, n, len(missing), lo, hi, missing[:min(5, len(missing))])
			}
		}
	}

	// 4. The same feed everywhere: whatever any node delivered from the
	// quiet stretch before a fault until the next one, every node
	// delivered (at any time: repairs come late) — except the victim of a
	// fault that killed its receiver, for the time it was gone.
	for i, tr := range trials {
		next := end
		if i+1 < len(trials) {
			next = trials[i+1].quiet
		}
		union := map[int]time.Time{}
		by := map[int]map[string]bool{} // who delivered each
		for n := range c.nodes {
			for _, f := range frames[n] {
				if !f.t.Before(tr.quiet) && f.t.Before(next) {
					if at, ok := union[f.src]; !ok || f.t.Before(at) {
						union[f.src] = f.t
					}
					if by[f.src] == nil {
						by[f.src] = map[string]bool{}
					}
					by[f.src][n] = true
				}
			}
		}
		for n := range c.nodes {
			var missing []int
			for src, at := range union {
				if got[n][src] {
					continue
				}
				// (From a moment before the kill: what the others had just
				// delivered may still have been in the victim's queue.)
				if tr.killsReceiver && n == tr.victim && !at.Before(tr.inject.Add(-100*time.Millisecond)) && at.Before(tr.recovered) {
					continue
				}
				// (What only the victim delivered as its link went: its
				// relay's last frames, which could leave it no more.)
				if tr.cutsLink && n != tr.victim && len(by[src]) == 1 && by[src][tr.victim] &&
					!at.Before(tr.inject.Add(-100*time.Millisecond)) && at.Before(tr.inject.Add(100*time.Millisecond)) {
					continue
				}
				missing = append(missing, src)
			}
			if len(missing) > 0 {
				slices.Sort(missing)
				problem(union[missing[0]], "trial %d (%s on %s): %s never delivered %d datagrams that another node did, e.g. %v",
					i+1, tr.fault, tr.victim, n, len(missing), missing[:min(5, len(missing))])
			}
		}
	}

	// Measure each trial at the nodes the fault did not hit.
	rows := map[string]*reportRow{}
	var names []string
	for i := range trials {
		tr := &trials[i]
		next := end
		if i+1 < len(trials) {
			next = trials[i+1].quiet
		}
		for n := range c.nodes {
			if n == tr.victim {
				continue
			}
			gap, lost := lossAt(frames[n], tr.inject, tr.recovered)
			tr.failover = max(tr.failover, gap)
			tr.lost = max(tr.lost, lost)
		}
		r := rows[tr.fault]
		if r == nil {
			r = &reportRow{fault: tr.fault}
			rows[tr.fault] = r
			names = append(names, tr.fault)
		}
		r.failover = append(r.failover, tr.failover)
		r.lost = append(r.lost, tr.lost)
		r.recovery = append(r.recovery, tr.recovered.Sub(tr.heal))
		r.overlaps += overlapsIn(*tr, next)
		r.stale += staleIn(*tr, next)
	}
	sort.Strings(names)
	report := chaosReport(names, rows)
	t.Logf("chaos report (%d trials):\n%s", len(trials), report)
	if p := os.Getenv("DRIFTGATE_CHAOS_REPORT"); p != "" {
		if err := os.WriteFile(p, []byte(report), 0o644); err != nil {
			t.Errorf("writing the report: %v", err)
		}
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// lossAt measures one receiver's deliveries around a fault: the longest
// pause between deliveries from the fault until the cluster was whole, and
// how many datagrams between the last one before the fault and the first
// one after recovery it never delivered.
func lossAt(fs []delivered, inject, recovered time.Time) (time.Duration, int) {
	before, after := -1, -1
	last := inject
	var gap time.Duration
	got := map[int]bool{}
	for _, f := range fs {
		got[f.src] = true
		if f.t.Before(inject) {
			before = max(before, f.src)
			continue
		}
		if !f.t.After(recovered) {
			gap = max(gap, f.t.Sub(last))
			last = f.t
		} else if after < 0 {
			gap = max(gap, f.t.Sub(last))
			after = f.src
		}
	}
	lost := 0
	if before >= 0 && after > before {
		for q := before + 1; q < after; q++ {
			if !got[q] {
				lost++
			}
		}
	}
	return gap, lost
}

type reportRow struct {
	fault           string
	failover        []time.Duration
	recovery        []time.Duration
	lost            []int
	overlaps, stale int
}

func pct[T any](xs []T, less func(a, b T) int, p float64) T {
	s := slices.Clone(xs)
	slices.SortFunc(s, less)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// chaosReport is a markdown table, aligned for reading as text too.
func chaosReport(names []string, rows map[string]*reportRow) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 1, ' ', 0)
	line := func(cells ...string) { fmt.Fprintln(tw, "| "+strings.Join(cells, "\t| ")+"\t|") }
	line("fault", "trials", "failover p50", "p95", "max", "lost p50", "lost max", "whole after heal (max)", "overlaps", "stale frames")
	line("---", "---", "---", "---", "---", "---", "---", "---", "---", "---")
	dur := func(a, b time.Duration) int { return int(a - b) }
	num := func(a, b int) int { return a - b }
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	for _, n := range names {
		r := rows[n]
		line(r.fault, strconv.Itoa(len(r.failover)),
			ms(pct(r.failover, dur, 0.5)), ms(pct(r.failover, dur, 0.95)), ms(pct(r.failover, dur, 1)),
			strconv.Itoa(pct(r.lost, num, 0.5)), strconv.Itoa(pct(r.lost, num, 1)), ms(pct(r.recovery, dur, 1)),
			strconv.Itoa(r.overlaps), strconv.Itoa(r.stale))
	}
	tw.Flush()
	return b.String()
}
