// Package netlab builds throw-away test networks on the real kernel: network
// namespaces ("hosts") joined by a Linux bridge that lives in a namespace of
// its own, so a test never touches the machine's own interfaces.
//
// Every host gets eth0 with 198.18.0.x/24 (RFC 2544 benchmarking space) and
// 2001:db8:d9::x/64 (documentation space), and a route for multicast out of
// eth0. Labs are named uniquely per test and removed in t.Cleanup, even when
// the test fails; labs left behind by a killed test process are removed by
// the next New.
//
// It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN). Without it, tests skip with
// a clear reason, except when DRIFTGATE_REQUIRE_PRIVILEGED=1 (set by CI),
// where a skip would hide a failure, so they fail instead.
package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"driftgate/internal/testkit"
)

// prefix starts every namespace name a lab creates; the process id follows,
// so stale labs of dead processes can be found and removed.
const prefix = "dgt"

var labSeq atomic.Uint32

// Lab is a set of hosts on one bridge.
type Lab struct {
	Name     string // unique lab name, also the bridge namespace's name
	BridgeNS string
	Hosts    []*Host
	tb       testing.TB
}

// Host is one network namespace with eth0 on the lab's bridge.
type Host struct {
	Name  string       // short name given by the test
	NS    string       // namespace name, for `ip netns exec`
	Iface string       // "eth0"
	Addr4 netip.Prefix // 198.18.0.x/24
	Addr6 netip.Prefix // 2001:db8:d9::x/64
	Port  string       // the bridge port (in BridgeNS) this host hangs on
	lab   *Lab
}

// RequirePrivileged skips the test unless the process can create network
// namespaces; in CI (DRIFTGATE_REQUIRE_PRIVILEGED=1) it fails instead.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs the ip command (apt-get install iproute2)"
	}
	if why == "" {
		return
	}
	if os.Getenv("DRIFTGATE_REQUIRE_PRIVILEGED") == "1" {
		tb.Fatalf("privileged test cannot run: %s (DRIFTGATE_REQUIRE_PRIVILEGED=1)", why)
	}
	tb.Skipf("privileged test skipped: %s", why)
}

// New creates a lab with one host per name, numbered 198.18.0.11, .12, …
func New(tb testing.TB, names ...string) *Lab {
	tb.Helper()
	RequirePrivileged(tb)
	removeStale(tb)
	id := fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), labSeq.Add(1))
	l := &Lab{Name: id, BridgeNS: id + "-br", tb: tb}
	tb.Cleanup(l.destroy)
	l.ip("netns", "add", l.BridgeNS)
	l.ip("-n", l.BridgeNS, "link", "set", "lo", "up")
	// Snooping off: the bridge floods multicast like a plain switch would
	// before it hears a querier, so tests do not depend on IGMP timing.
	l.ip("-n", l.BridgeNS, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	l.ip("-n", l.BridgeNS, "link", "set", "br0", "up")
	for i, name := range names {
		l.AddHost(name, i+11)
	}
	return l
}

// AddHost adds a host with address index n (198.18.0.n).
func (l *Lab) AddHost(name string, n int) *Host {
	h := &Host{
		Name:  name,
		NS:    l.Name + "-" + name,
		Iface: "eth0",
		Addr4: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(n)}), 24),
		Addr6: netip.MustParsePrefix("2001:db8:d9::" + strconv.FormatInt(int64(n), 16) + "/64"),
		Port:  "p" + strconv.Itoa(n),
		lab:   l,
	}
	l.ip("netns", "add", h.NS)
	l.ip("-n", h.NS, "link", "set", "lo", "up")
	// No duplicate address detection: link-local addresses are usable at
	// once (NDP tests bind them) instead of after a second or two.
	for _, conf := range []string{"all", "default"} {
		path := "/proc/sys/net/ipv6/conf/" + conf + "/accept_dad"
		if out, err := exec.Command("ip", "netns", "exec", h.NS, "sh", "-c", "echo 0 > "+path).CombinedOutput(); err != nil {
			l.tb.Fatalf("netlab: disabling DAD in %s: %v: %s", h.NS, err, out)
		}
	}
	l.ip("-n", l.BridgeNS, "link", "add", h.Port, "type", "veth", "peer", "name", h.Iface, "netns", h.NS)
	l.ip("-n", l.BridgeNS, "link", "set", h.Port, "master", "br0", "up")
	l.ip("-n", h.NS, "addr", "add", h.Addr4.String(), "dev", h.Iface)
	l.ip("-n", h.NS, "addr", "add", h.Addr6.String(), "dev", h.Iface, "nodad")
	l.ip("-n", h.NS, "link", "set", h.Iface, "up")
	l.ip("-n", h.NS, "route", "add", "224.0.0.0/4", "dev", h.Iface)
	l.Hosts = append(l.Hosts, h)
	return h
}

// MAC returns the hardware address of the host's eth0.
func (h *Host) MAC() net.HardwareAddr {
	h.lab.tb.Helper()
	var mac net.HardwareAddr
	if err := h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Iface)
		if err == nil {
			mac = ifi.HardwareAddr
		}
		return err
	}); err != nil {
		h.lab.tb.Fatalf("netlab: %s: %v", h.Name, err)
	}
	return mac
}

// Host returns the host with the given name, or fails the test.
func (l *Lab) Host(name string) *Host {
	for _, h := range l.Hosts {
		if h.Name == name {
			return h
		}
	}
	l.tb.Fatalf("netlab: no host %q", name)
	return nil
}

func (l *Lab) ip(args ...string) string {
	l.tb.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		l.tb.Fatalf("netlab: ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// destroy removes every namespace of the lab; deleting a namespace removes
// its veth ends and so the bridge ports.
func (l *Lab) destroy() {
	for _, h := range l.Hosts {
		deleteNS(h.NS)
	}
	deleteNS(l.BridgeNS)
}

func deleteNS(ns string) {
	// Processes started in the namespace keep it alive; kill them first.
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	exec.Command("ip", "netns", "del", ns).Run()
}

// removeStale deletes labs whose creating process is gone.
func removeStale(tb testing.TB) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], prefix) {
			continue
		}
		rest := strings.TrimPrefix(f[0], prefix)
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			tb.Logf("netlab: removing namespace %s left by dead process %d", f[0], pid)
			deleteNS(f[0])
		}
	}
}

// Do runs fn on an OS thread that has entered the host's namespace, and
// returns that thread to the test's namespace afterwards. Sockets opened in
// fn stay in the host's namespace for their whole life, so a test can open
// them here and use them from anywhere.
func (h *Host) Do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + h.NS)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("entering namespace %s: %w", h.NS, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is in the wrong namespace: let it die with the
		// goroutine (LockOSThread without Unlock) instead of reusing it.
		runtime.LockOSThread()
		return fmt.Errorf("leaving namespace %s: %w", h.NS, err)
	}
	return fnErr
}

// DialContext dials from inside the host's namespace; the connection can
// then be used from anywhere. Use it as an http.Transport's DialContext to
// reach a server on the host's loopback.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Command returns a command that runs in the host's namespace.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Self returns a command that runs the test binary as role (see
// testkit.RunRole) in the host's namespace.
func (h *Host) Self(role string, args ...string) *exec.Cmd {
	return testkit.Command([]string{"ip", "netns", "exec", h.NS}, role, args...)
}

// IP runs `ip ARGS` in the host's namespace and returns its output, failing
// the test on error.
func (h *Host) IP(args ...string) string {
	h.lab.tb.Helper()
	return h.lab.ip(append([]string{"-n", h.NS}, args...)...)
}

// Start starts name in the host's namespace with output captured in the
// returned buffer; the process is killed in t.Cleanup.
func (h *Host) Start(name string, args ...string) (*Proc, *SyncBuffer) {
	h.lab.tb.Helper()
	out := &SyncBuffer{}
	p, err := StartProc(h.Command(context.Background(), name, args...), out)
	if err != nil {
		h.lab.tb.Fatalf("netlab: starting %s in %s: %v", name, h.Name, err)
	}
	h.lab.tb.Cleanup(func() { p.Kill() })
	return p, out
}

// Proc is a started process that one goroutine waits for, so that any
// number of callers can wait for its exit (a second Wait on an exec.Cmd
// never returns) and act on its absence only once it is gone.
type Proc struct {
	Cmd  *exec.Cmd
	Pid  int
	done chan struct{}
	err  error // of Wait; read after done
}

// StartProc starts cmd with stdout and stderr to out (if not nil).
func StartProc(cmd *exec.Cmd, out io.Writer) (*Proc, error) {
	if out != nil {
		cmd.Stdout, cmd.Stderr = out, out
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, Pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited and been reaped: every thread
// has gone and the kernel has released what it held (sockets, the abstract
// instance lock), as systemd waits for before ExecStopPost.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process unless it has been reaped.
func (p *Proc) Signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		p.Cmd.Process.Signal(sig)
	}
}

// Wait waits up to d for the process to exit and returns its Wait error;
// ErrStillRunning if it did not exit in time.
func (p *Proc) Wait(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return p.err
	case <-t.C:
		return fmt.Errorf("pid %d (%s): %w after %v", p.Pid, p.Cmd.Path, ErrStillRunning, d)
	}
}

// ErrStillRunning is returned by Wait and Kill when the process outlived the
// wait.
var ErrStillRunning = errors.New("still running")

// Kill sends SIGKILL (and SIGCONT, for a stopped process) and waits until
// the process is gone; an error only if it is still there after 10 s.
func (p *Proc) Kill() error {
	p.Signal(syscall.SIGKILL)
	p.Signal(syscall.SIGCONT)
	if err := p.Wait(10 * time.Second); errors.Is(err, ErrStillRunning) {
		return err
	}
	return nil
}

// SyncBuffer is a bytes.Buffer safe for a writer process and a reading test.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Drop makes the bridge drop datagrams on their way to host h: each with
// probability percent/100, and only UDP over IPv4 to port udpPort (0: every
// packet, ARP and Consul included). This kernel has no netem; a clsact
// qdisc with a classic-BPF filter in direct-action mode does it ("ld rand"
// against a threshold, TC_ACT_SHOT). Calling it again replaces the filter;
// Undrop, or the lab's removal, takes it away.
func (l *Lab) Drop(h *Host, percent float64, udpPort uint16) {
	l.tb.Helper()
	threshold := uint64(percent / 100 * (1 << 32))
	threshold = min(threshold, 1<<32-1)
	// Classic BPF: code jt jf k. The last two instructions are drop (2,
	// TC_ACT_SHOT) and pass (0, TC_ACT_OK); jumps count from the next one.
	var prog [][4]uint32
	if udpPort != 0 {
		prog = [][4]uint32{
			{0x28, 0, 0, 12},              // ldh [12]: ethertype
			{0x15, 0, 8, 0x0800},          // IPv4, else pass
			{0x30, 0, 0, 23},              // ldb [23]: protocol
			{0x15, 0, 6, 17},              // UDP, else pass
			{0xb1, 0, 0, 14},              // ldxb 4*([14]&0xf): IP header length
			{0x48, 0, 0, 16},              // ldh [x+16]: destination port
			{0x15, 0, 3, uint32(udpPort)}, // the port, else pass
		}
	}
	prog = append(prog,
		[4]uint32{0x20, 0, 0, 0xfffff038},        // ld rand
		[4]uint32{0x35, 1, 0, uint32(threshold)}, // rand >= threshold: pass
		[4]uint32{0x06, 0, 0, 2},                 // drop
		[4]uint32{0x06, 0, 0, 0},                 // pass
	)
	code := []string{strconv.Itoa(len(prog))}
	for _, in := range prog {
		code = append(code, fmt.Sprintf("%d %d %d %d", in[0], in[1], in[2], in[3]))
	}
	l.Undrop(h)
	l.tc("qdisc", "add", "dev", h.Port, "clsact")
	l.tc("filter", "add", "dev", h.Port, "egress", "bpf", "da", "bytecode", strings.Join(code, ","))
}

// Undrop removes Drop's filter, if any.
func (l *Lab) Undrop(h *Host) {
	_ = exec.Command("ip", "netns", "exec", l.BridgeNS, "tc", "qdisc", "del", "dev", h.Port, "clsact").Run()
}

func (l *Lab) tc(args ...string) {
	l.tb.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", l.BridgeNS, "tc"}, args...)...).CombinedOutput()
	if err != nil {
		l.tb.Fatalf("netlab: tc %s: %v: %s", strings.Join(args, " "), err, out)
	}
}
