// Package consultest starts real Consul agents for tests: a single server on
// loopback, or a cluster of servers with one client agent per simulated node.
// Each agent gets its own ports and data directory; t.Cleanup stops the
// processes and removes the directories, even when the test fails.
//
// The binary is $DRIFTGATE_CONSUL, or bin/consul at the repository root
// (`make consul` builds Consul v1.14.0 there). Gossip uses Consul's
// production LAN timing, not -dev timing; raft_multiplier is 1.
package consultest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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

	"github.com/hashicorp/consul/api"

	"driftgate/internal/netlab"
)

// Binary returns the path of the consul binary, or fails the test.
func Binary(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv("DRIFTGATE_CONSUL"); p != "" {
		return p
	}
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if p := filepath.Join(dir, "bin", "consul"); fileExists(p) {
				return p
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	tb.Fatal("consul binary not found: run `make consul` (or set DRIFTGATE_CONSUL)")
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// Agent is one running consul agent.
type Agent struct {
	Name     string
	Server   bool
	HTTPAddr string // 127.0.0.1:port
	// Token, if set, is the ACL token Client uses.
	Token   string
	DNSAddr string
	SerfLAN string
	dir     string
	args    []string
	bin     string
	tb      testing.TB

	// dial, when set, reaches the agent's HTTP address (in a namespace).
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	ns   string // network namespace the agent runs in, "" for the test's

	mu   sync.Mutex
	proc *netlab.Proc
	out  *netlab.SyncBuffer
}

// Client returns an API client for the agent.
func (a *Agent) Client() *api.Client {
	cfg := api.DefaultConfig()
	cfg.Address = a.HTTPAddr
	cfg.Token = a.Token
	if a.dial != nil {
		cfg.Transport = &http.Transport{DialContext: a.dial}
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		a.tb.Fatalf("consul client: %v", err)
	}
	return c
}

// handedOut remembers ports given to agents of this process: a port freed
// by the probe below is free until its agent binds it, and must not be
// handed out twice meanwhile.
var (
	portsMu   sync.Mutex
	handedOut = map[int]bool{}
)

// freePorts returns n ports that were free for both TCP and UDP. They are
// drawn from 20000–31999, below Linux's ephemeral range (32768–60999), so
// the kernel does not give them to outgoing connections in the meantime.
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 10000 {
			tb.Fatal("consultest: no free ports in 20000-31999")
		}
		p := 20000 + rand.IntN(12000)
		if handedOut[p] {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(p))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		handedOut[p] = true
		ports = append(ports, p)
	}
	return ports
}

func newAgent(tb testing.TB, name string, server bool, bootstrapExpect int, join []string, extraHCL ...string) *Agent {
	tb.Helper()
	p := freePorts(tb, 5) // http dns serf_lan serf_wan server
	dir := tb.TempDir()
	a := &Agent{
		Name: name, Server: server, tb: tb, dir: dir, bin: Binary(tb),
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", p[0]),
		DNSAddr:  fmt.Sprintf("127.0.0.1:%d", p[1]),
		SerfLAN:  fmt.Sprintf("127.0.0.1:%d", p[2]),
	}
	hcl := fmt.Sprintf(`ports { http = %d, dns = %d, serf_lan = %d, serf_wan = %d, server = %d, grpc = -1, grpc_tls = -1 }
performance { raft_multiplier = 1 }
leave_on_terminate = true
disable_update_check = true
retry_interval = "1s"
enable_script_checks = true
`, p[0], p[1], p[2], p[3], p[4])
	if server {
		hcl += fmt.Sprintf("server = true\nbootstrap_expect = %d\nsession_ttl_min = \"1s\"\n", bootstrapExpect)
	}
	hcl += strings.Join(extraHCL, "\n")
	a.args = []string{"agent", "-node=" + name, "-bind=127.0.0.1", "-client=127.0.0.1", "-advertise=127.0.0.1",
		"-data-dir=" + filepath.Join(dir, "data"), "-log-level=warn", "-hcl=" + hcl}
	for _, j := range join {
		a.args = append(a.args, "-retry-join="+j)
	}
	a.start()
	tb.Cleanup(func() {
		a.Kill()
	})
	return a
}

func (a *Agent) start() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.out = &netlab.SyncBuffer{}
	cmd := exec.Command(a.bin, a.args...)
	if a.ns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", a.ns, a.bin}, a.args...)...)
	}
	p, err := netlab.StartProc(cmd, a.out)
	if err != nil {
		a.tb.Fatalf("starting consul %s: %v", a.Name, err)
	}
	a.proc = p
}

// Output returns what the agent logged.
func (a *Agent) Output() string {
	a.mu.Lock()
	out := a.out
	a.mu.Unlock()
	return out.String()
}

func (a *Agent) signal(s syscall.Signal) {
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	if p != nil {
		p.Signal(s)
	}
}

// Kill stops the agent with SIGKILL: a crash, no leave. It returns once
// the process is gone.
func (a *Agent) Kill() {
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	if p != nil {
		if err := p.Kill(); err != nil {
			a.tb.Errorf("consul agent %s: %v", a.Name, err)
		}
	}
}

// Stop stops the agent gracefully (SIGTERM; it leaves the cluster).
func (a *Agent) Stop() {
	a.signal(syscall.SIGTERM)
	if !a.wait(20 * time.Second) {
		a.Kill()
	}
}

// Pause freezes the agent (SIGSTOP).
func (a *Agent) Pause() { a.signal(syscall.SIGSTOP) }

// Resume thaws a paused agent (SIGCONT).
func (a *Agent) Resume() { a.signal(syscall.SIGCONT) }

// Restart starts a stopped agent again with the same data directory.
func (a *Agent) Restart() {
	a.start()
	a.WaitReady()
}

// Rebuild kills the agent, deletes its data directory and starts it again:
// a new agent with the old name and address, as when a cluster is rebuilt
// from scratch. It does not wait, since servers bootstrap together: call
// WaitReady on each.
func (a *Agent) Rebuild() {
	a.Kill()
	if err := os.RemoveAll(filepath.Join(a.dir, "data")); err != nil {
		a.tb.Fatalf("consul agent %s: deleting its data: %v", a.Name, err)
	}
	a.start()
}

func (a *Agent) wait(d time.Duration) bool {
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	return p == nil || !errors.Is(p.Wait(d), netlab.ErrStillRunning)
}

// WaitReady waits until the agent answers, sees a leader, and has
// registered its own node in the catalog.
func (a *Agent) WaitReady() {
	a.tb.Helper()
	c := a.Client()
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		a.mu.Lock()
		p := a.proc
		a.mu.Unlock()
		select {
		case <-p.Done():
			a.tb.Fatalf("consul agent %s exited; its log:\n%s", a.Name, a.Output())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		if err == nil && leader != "" {
			var n *api.CatalogNode
			n, _, err = c.Catalog().Node(a.Name, (&api.QueryOptions{}).WithContext(ctx))
			if err == nil && n != nil {
				cancel()
				return
			}
		}
		cancel()
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	a.tb.Fatalf("consul agent %s not ready after 60s (last error %v); its log:\n%s", a.Name, last, a.Output())
}

// InNamespace starts an agent inside network namespace ns, bound to ip,
// with Consul's default ports (the namespace has them to itself) and its
// HTTP API on the namespace's 127.0.0.1:8500, reached through dial. join
// lists servers' IPs.
func InNamespace(tb testing.TB, ns, ip, name string, server bool, bootstrapExpect int, join []string,
	dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Agent {
	tb.Helper()
	dir := tb.TempDir()
	a := &Agent{Name: name, Server: server, tb: tb, dir: dir, bin: Binary(tb), ns: ns, dial: dial,
		HTTPAddr: "127.0.0.1:8500", DNSAddr: "127.0.0.1:8600", SerfLAN: ip + ":8301"}
	hcl := `ports { grpc = -1, grpc_tls = -1 }
performance { raft_multiplier = 1 }
leave_on_terminate = true
disable_update_check = true
retry_interval = "1s"
`
	if server {
		hcl += fmt.Sprintf("server = true\nbootstrap_expect = %d\nsession_ttl_min = \"1s\"\n", bootstrapExpect)
	}
	a.args = []string{"agent", "-node=" + name, "-bind=" + ip, "-client=127.0.0.1", "-advertise=" + ip,
		"-data-dir=" + filepath.Join(dir, "data"), "-log-level=warn", "-hcl=" + hcl}
	for _, j := range join {
		a.args = append(a.args, "-retry-join="+j)
	}
	a.start()
	tb.Cleanup(a.Kill)
	return a
}

// StartServer starts one server agent (it is also the local agent of the
// test's nodes) and waits until it is leader.
func StartServer(tb testing.TB) *Agent {
	tb.Helper()
	a := newAgent(tb, "server1", true, 1, nil)
	a.WaitReady()
	return a
}

// StartServerWithACL starts one server with ACLs on, default deny, and
// management token mgmt, which Client uses; tests make narrower tokens with
// it.
func StartServerWithACL(tb testing.TB, mgmt string) *Agent {
	tb.Helper()
	a := newAgent(tb, "server1", true, 1, nil, fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  tokens { initial_management = %q, agent = %q }
}`, mgmt, mgmt))
	a.Token = mgmt
	a.WaitReady()
	return a
}

// Cluster is a set of server agents and one client agent per node.
type Cluster struct {
	Servers []*Agent
	Clients map[string]*Agent
}

// StartCluster starts `servers` servers and one client agent per name in
// nodes, all joined, and waits until every agent is ready.
func StartCluster(tb testing.TB, servers int, nodes ...string) *Cluster {
	tb.Helper()
	c := &Cluster{Clients: map[string]*Agent{}}
	var join []string
	for i := range servers {
		a := newAgent(tb, fmt.Sprintf("server%d", i+1), true, servers, join)
		join = append(join, a.SerfLAN)
		c.Servers = append(c.Servers, a)
	}
	// Later servers join earlier ones, clients join all servers; a join
	// that finds its peer not yet listening is retried every second
	// (retry_interval; Consul's default of 30 s made start-up slow).
	for _, n := range nodes {
		c.Clients[n] = newAgent(tb, n, false, 0, join)
	}
	for _, a := range c.Servers {
		a.WaitReady()
	}
	for _, a := range c.Clients {
		a.WaitReady()
	}
	return c
}

// Leader returns the server agent that is the Raft leader.
func (c *Cluster) Leader(tb testing.TB) *Agent {
	tb.Helper()
	for _, s := range c.Servers {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		leader, err := s.Client().Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		cancel()
		if err == nil {
			for _, s2 := range c.Servers {
				if _, port, _ := net.SplitHostPort(leader); port != "" && s2.serverPort() == port {
					return s2
				}
			}
		}
	}
	tb.Fatal("no consul leader")
	return nil
}

func (a *Agent) serverPort() string {
	for _, arg := range a.args {
		if len(arg) > 5 && arg[:5] == "-hcl=" {
			var http, dns, lan, wan, server int
			fmt.Sscanf(arg[5:], "ports { http = %d, dns = %d, serf_lan = %d, serf_wan = %d, server = %d", &http, &dns, &lan, &wan, &server)
			return strconv.Itoa(server)
		}
	}
	return ""
}
