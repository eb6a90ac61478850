package netvip

import (
	"context"
	"errors"
	"math"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"driftgate/internal/netlab"

	"driftgate/internal/testkit"
)

var families = []struct {
	name string
	vip  netip.Prefix
}{
	{"ipv4", netip.MustParsePrefix("198.18.0.100/24")},
	{"ipv6", netip.MustParsePrefix("2001:db8:d9::100/64")},
}

func TestValidate(t *testing.T) {
	tests := []struct {
		vip  VIP
		want string
	}{
		{VIP{Iface: "eth0"}, "address: want ADDRESS/PREFIXLEN"},
		{VIP{Prefix: netip.MustParsePrefix("127.0.0.2/8"), Iface: "eth0"}, "not a usable unicast address"},
		{VIP{Prefix: netip.MustParsePrefix("239.255.0.1/32"), Iface: "eth0"}, "not a usable unicast address"},
		{VIP{Prefix: netip.MustParsePrefix("fe80::1/64"), Iface: "eth0"}, "not a usable unicast address"},
		{VIP{Prefix: netip.MustParsePrefix("198.18.0.1/24")}, `interface: "": want a name`},
		{VIP{Prefix: netip.MustParsePrefix("198.18.0.1/24"), Iface: "averyveryverylongname"}, "want a name of 1..15"},
		{VIP{Prefix: netip.MustParsePrefix("198.18.0.1/24"), Iface: "eth0", Label: "vip"}, `label: "vip" must start with the interface name`},
		{VIP{Prefix: netip.MustParsePrefix("198.18.0.1/24"), Iface: "enp0s31f6abcde", Label: ""}, `label: "enp0s31f6abcde:dg"`},
		{VIP{Prefix: netip.MustParsePrefix("198.18.0.1/24"), Iface: "eth0"}, ""},
		{VIP{Prefix: netip.MustParsePrefix("2001:db8::1/64"), Iface: "eth0"}, ""},
	}
	for _, tt := range tests {
		err := tt.vip.Validate()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.vip, err, tt.want)
		}
	}
	if err := (AnnounceConfig{Count: 0, Interval: time.Second}).Validate(); err == nil || !strings.Contains(err.Error(), "count: 0 is out of range 1..20") {
		t.Errorf("AnnounceConfig count 0: %v", err)
	}
	if err := DefaultAnnounceConfig().Validate(); err != nil {
		t.Errorf("default announce config: %v", err)
	}
}

// in runs fn inside host h's namespace and fails the test on error.
func in(t *testing.T, h *netlab.Host, fn func() error) {
	t.Helper()
	if err := h.Do(fn); err != nil {
		t.Fatalf("in %s: %v", h.Name, err)
	}
}

func TestAddRemove(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			lab := netlab.New(t, "a")
			a := lab.Host("a")
			var m *Manager
			in(t, a, func() (err error) { m, err = New(VIP{Prefix: fam.vip, Iface: "eth0"}); return err })
			defer m.Close()
			add := func() error { return m.Add(time.Time{}) }
			steps := []struct {
				name string
				do   func() error
				want bool
			}{
				{"add", add, true},
				{"add again", add, true},
				{"remove", m.Remove, false},
				{"remove again", m.Remove, false},
				{"add after remove", add, true},
			}
			for _, s := range steps {
				if err := s.do(); err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
				if got, err := m.Present(); err != nil || got != s.want {
					t.Fatalf("after %s: Present = %v, %v; want %v", s.name, got, err, s.want)
				}
			}
			got, err := m.kernelAddr()
			if err != nil || got == nil {
				t.Fatalf("Addr: %v, %v", got, err)
			}
			type view struct {
				Label       string
				PreferedLft int
				ValidLft    int
				NoDAD       bool
				Deprecated  bool
			}
			// IPv4 reports a permanent address's lifetimes as infinite;
			// the deprecated flag is what counts.
			want := view{PreferedLft: math.MaxUint32, ValidLft: math.MaxUint32, Deprecated: true}
			if fam.vip.Addr().Is4() {
				want.Label = "eth0:dg"
			} else {
				want.PreferedLft = 0
				want.NoDAD = true
			}
			gotView := view{got.Label, got.PreferedLft, got.ValidLft, got.Flags&unix.IFA_F_NODAD != 0, got.Flags&unix.IFA_F_DEPRECATED != 0}
			if diff := cmp.Diff(want, gotView); diff != "" {
				t.Fatalf("address as read back through netlink (-want +got):\n%s", diff)
			}
			// Operators see it in ip addr.
			if out := a.IP("addr", "show", "dev", "eth0"); !strings.Contains(out, fam.vip.String()) || !strings.Contains(out, "deprecated") {
				t.Fatalf("ip addr does not show the deprecated VIP:\n%s", out)
			}
			removed, err := m.Cleanup()
			if err != nil || !removed {
				t.Fatalf("Cleanup with VIP present = %v, %v; want true", removed, err)
			}
			if removed, err = m.Cleanup(); err != nil || removed {
				t.Fatalf("Cleanup with VIP absent = %v, %v; want false", removed, err)
			}
		})
	}
}

// TestLease: the kernel removes a VIP whose lease ran out, before the lease
// ends; renewing extends it; a lease under the kernel's resolution is
// refused without touching the address.
func TestLease(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			t.Parallel()
			lab := netlab.New(t, "a")
			var m *Manager
			in(t, lab.Host("a"), func() (err error) { m, err = New(VIP{Prefix: fam.vip, Iface: "eth0"}); return err })
			defer m.Close()
			present := func() bool {
				got, err := m.Present()
				if err != nil {
					t.Fatal(err)
				}
				return got
			}
			const lease = 2600 * time.Millisecond // lifetime 2 s
			if err := m.Add(time.Now().Add(lease)); err != nil {
				t.Fatal(err)
			}
			// Renew twice, 700 ms apart: the lease now ends 1.4 s later.
			for range 2 {
				time.Sleep(700 * time.Millisecond)
				if err := m.Add(time.Now().Add(lease)); err != nil {
					t.Fatal(err)
				}
			}
			renewed := time.Now()
			end := renewed.Add(lease)
			if err := m.Add(time.Now().Add(1200 * time.Millisecond)); !errors.Is(err, ErrLeaseTooShort) {
				t.Fatalf("Add with 1.2 s left: %v, want ErrLeaseTooShort", err)
			}
			time.Sleep(1500 * time.Millisecond)
			if !present() {
				t.Fatalf("VIP gone %v after the last renewal; the lifetime is 2 s", time.Since(renewed))
			}
			for present() {
				if time.Now().After(end) {
					t.Fatalf("VIP still there when its lease ended (%v after the last renewal)", time.Since(renewed))
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("the kernel removed the VIP %v after the last renewal, %v before the lease ended",
				time.Since(renewed).Round(time.Millisecond), time.Until(end).Round(time.Millisecond))
		})
	}
}

func TestMissingInterface(t *testing.T) {
	lab := netlab.New(t, "a")
	var m *Manager
	in(t, lab.Host("a"), func() (err error) {
		m, err = New(VIP{Prefix: netip.MustParsePrefix("198.18.0.100/24"), Iface: "nosuch0"})
		return err
	})
	defer m.Close()
	err := m.Add(time.Time{})
	if !errors.Is(err, ErrNoInterface) || !strings.Contains(err.Error(), "adding VIP 198.18.0.100/24 on nosuch0") {
		t.Fatalf("Add on missing interface: %v", err)
	}
	if err := m.Remove(); err != nil {
		t.Fatalf("Remove on missing interface: %v, want nil", err)
	}
	if removed, err := m.Cleanup(); removed || err != nil {
		t.Fatalf("Cleanup on missing interface: %v, %v", removed, err)
	}
}

// neighMAC returns the router's neighbour entry for ip, or "".
func neighMAC(h *netlab.Host, ip netip.Addr) string {
	out := h.IP("neigh", "show", ip.String(), "dev", "eth0")
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

func udpListen(t *testing.T, h *netlab.Host, v6 bool) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	in(t, h, func() (err error) {
		network := map[bool]string{false: "udp4", true: "udp6"}[v6]
		c, err = net.ListenUDP(network, &net.UDPAddr{Port: 7000})
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// sendFrom sends one datagram from h to dst.
func sendFrom(t *testing.T, h *netlab.Host, dst netip.AddrPort, msg string) {
	t.Helper()
	var c *net.UDPConn
	in(t, h, func() (err error) { c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst)); return err })
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("send from %s: %v", h.Name, err)
	}
}

func expectDatagram(t *testing.T, c *net.UDPConn, msg string) {
	t.Helper()
	buf := make([]byte, 100)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != msg {
		t.Fatalf("want %q, got %q, %v", msg, buf[:n], err)
	}
}

// TestAnnounceMovesTraffic: B holds the VIP and the router has it cached at
// B's MAC; B lets go, A takes it and announces; the router's neighbour
// entry moves to A's MAC and traffic for the VIP arrives at A.
func TestAnnounceMovesTraffic(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			lab := netlab.New(t, "router", "a", "b")
			router, a, b := lab.Host("router"), lab.Host("a"), lab.Host("b")
			vip := VIP{Prefix: fam.vip, Iface: "eth0"}
			dst := netip.AddrPortFrom(fam.vip.Addr(), 7000)
			v6 := fam.vip.Addr().Is6()

			var mb, ma *Manager
			in(t, b, func() (err error) { mb, err = New(vip); return err })
			in(t, a, func() (err error) { ma, err = New(vip); return err })
			if err := mb.Add(time.Time{}); err != nil {
				t.Fatal(err)
			}
			lb, la := udpListen(t, b, v6), udpListen(t, a, v6)
			sendFrom(t, router, dst, "to-b")
			expectDatagram(t, lb, "to-b")
			if got, want := neighMAC(router, fam.vip.Addr()), b.MAC().String(); got != want {
				t.Fatalf("router's entry for the VIP: %q, want B's MAC %s", got, want)
			}

			if err := mb.Remove(); err != nil {
				t.Fatal(err)
			}
			if err := ma.Add(time.Time{}); err != nil {
				t.Fatal(err)
			}
			var ann *Announcer
			in(t, a, func() (err error) {
				ann, err = NewAnnouncer(vip, AnnounceConfig{Count: 2, Interval: 50 * time.Millisecond}, func() bool { return true })
				return err
			})
			defer ann.Close()
			if err := ann.Run(t.Context()); err != nil { // no Delay, no Refresh: one burst
				t.Fatal(err)
			}
			testkit.WaitFor(t, "router to point the VIP at A", 2*time.Second, func() bool { return neighMAC(router, fam.vip.Addr()) == a.MAC().String() })
			sendFrom(t, router, dst, "to-a")
			expectDatagram(t, la, "to-a")
			want := uint64(2)
			if !v6 {
				want = 4 // request + reply per announcement
			}
			if ann.Sent() != want {
				t.Fatalf("Sent = %d, want %d", ann.Sent(), want)
			}
		})
	}
}

func TestAnnounceNotAllowed(t *testing.T) {
	lab := netlab.New(t, "a")
	a := lab.Host("a")
	vip := VIP{Prefix: netip.MustParsePrefix("198.18.0.100/24"), Iface: "eth0"}
	var ann *Announcer
	in(t, a, func() (err error) {
		ann, err = NewAnnouncer(vip, DefaultAnnounceConfig(), func() bool { return false })
		return err
	})
	defer ann.Close()
	if err := ann.Announce(); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("Announce when not allowed: %v", err)
	}
	start := time.Now()
	if err := ann.Run(t.Context()); err != nil {
		t.Fatalf("Run when not allowed: %v, want nil", err)
	}
	if time.Since(start) > 100*time.Millisecond || ann.Sent() != 0 || ann.Skipped() != 2 {
		t.Fatalf("deposed announcer: took %v, sent %d, skipped %d; want immediate, 0, 2", time.Since(start), ann.Sent(), ann.Skipped())
	}
}

func TestProbe(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			lab := netlab.New(t, "a", "b")
			a, b := lab.Host("a"), lab.Host("b")
			vip := VIP{Prefix: fam.vip, Iface: "eth0"}
			probe := func() *Claim {
				var c *Claim
				in(t, a, func() (err error) {
					ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
					defer cancel()
					c, err = Probe(ctx, vip, 2, 150*time.Millisecond)
					return err
				})
				return c
			}
			if c := probe(); c != nil {
				t.Fatalf("nobody holds the VIP, but the probe saw %v", c)
			}
			var mb *Manager
			in(t, b, func() (err error) { mb, err = New(vip); return err })
			if err := mb.Add(time.Time{}); err != nil {
				t.Fatal(err)
			}
			c := probe()
			if c == nil || c.MAC.String() != b.MAC().String() || c.VIP != fam.vip.Addr() {
				t.Fatalf("probe with B holding the VIP: %v, want a claim by %s", c, b.MAC())
			}
		})
	}
}

// TestGuard: while A holds the VIP, a rogue host B announces it; A's guard
// reports B's MAC and A announces again, so the router comes back to A.
func TestGuard(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			lab := netlab.New(t, "router", "a", "b")
			router, a, b := lab.Host("router"), lab.Host("a"), lab.Host("b")
			vip := VIP{Prefix: fam.vip, Iface: "eth0"}
			var ma *Manager
			var ann *Announcer
			var g *Guard
			in(t, a, func() (err error) {
				if ma, err = New(vip); err != nil {
					return err
				}
				if err = ma.Add(time.Time{}); err != nil {
					return err
				}
				if ann, err = NewAnnouncer(vip, AnnounceConfig{Count: 1, Interval: 10 * time.Millisecond}, func() bool { return true }); err != nil {
					return err
				}
				g, err = NewGuard(vip)
				return err
			})
			defer ann.Close()
			// The router learns the VIP at A.
			sendFrom(t, router, netip.AddrPortFrom(fam.vip.Addr(), 7000), "hello")
			testkit.WaitFor(t, "router to learn A", 2*time.Second, func() bool { return neighMAC(router, fam.vip.Addr()) == a.MAC().String() })

			claims := make(chan Claim, 10)
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- g.Run(ctx, ann, func(c Claim) { claims <- c }) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("guard: %v", err)
				}
			}()
			time.Sleep(100 * time.Millisecond) // the guard is reading

			var rogue *Announcer
			in(t, b, func() (err error) {
				rogue, err = NewAnnouncer(vip, AnnounceConfig{Count: 1, Interval: 10 * time.Millisecond}, func() bool { return true })
				return err
			})
			defer rogue.Close()
			if err := rogue.Announce(); err != nil {
				t.Fatal(err)
			}
			select {
			case c := <-claims:
				if c.MAC.String() != b.MAC().String() {
					t.Fatalf("claim %v, want B's MAC %s", c, b.MAC())
				}
			case <-time.After(3 * time.Second):
				t.Fatal("the guard reported no claim")
			}
			testkit.WaitFor(t, "A to re-announce", 2*time.Second, func() bool { return ann.Sent() > 0 })
			testkit.WaitFor(t, "router back at A", 3*time.Second, func() bool { return neighMAC(router, fam.vip.Addr()) == a.MAC().String() })
			if g.Claims() == 0 {
				t.Fatal("Claims() = 0")
			}
		})
	}
}

// TestWatch: carrier loss and gain (the switch port goes down) and an
// operator's `ip addr del` of the VIP are reported.
func TestWatch(t *testing.T) {
	lab := netlab.New(t, "a")
	a := lab.Host("a")
	vip := VIP{Prefix: netip.MustParsePrefix("198.18.0.100/24"), Iface: "eth0"}
	var m *Manager
	var w *Watcher
	in(t, a, func() (err error) {
		if m, err = New(vip); err != nil {
			return err
		}
		if err = m.Add(time.Time{}); err != nil {
			return err
		}
		w, err = Watch(vip)
		return err
	})
	if !w.CarrierUp() {
		t.Fatal("carrier down at start")
	}
	events := make(chan Event, 10)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(e Event) { events <- e }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch: %v", err)
		}
	}()
	expect := func(want EventKind) {
		t.Helper()
		for {
			select {
			case e := <-events:
				if e.Kind == want {
					return
				}
				t.Logf("event %s while waiting for %s", e.Kind, want)
			case <-time.After(3 * time.Second):
				t.Fatalf("no %s event", want)
			}
		}
	}
	// Carrier: take the bridge-side end of A's veth down.
	bridgeIP(t, lab, "link", "set", a.Port, "down")
	expect(CarrierLost)
	bridgeIP(t, lab, "link", "set", a.Port, "up")
	expect(CarrierGained)
	a.IP("addr", "del", vip.Prefix.String(), "dev", "eth0")
	expect(VIPRemoved)
	if err := m.Add(time.Time{}); err != nil {
		t.Fatal(err)
	}
	expect(VIPAdded)
}

func bridgeIP(t *testing.T, lab *netlab.Lab, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", lab.BridgeNS}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

// TestAnnounceSchedule: a burst, a second burst after Delay, then refreshes,
// and the allowed check stops it the moment the holder is deposed.
func TestAnnounceSchedule(t *testing.T) {
	lab := netlab.New(t, "a")
	vip := VIP{Prefix: netip.MustParsePrefix("2001:db8:d9::100/64"), Iface: "eth0"} // one packet per announcement
	var held atomic.Bool
	held.Store(true)
	var ann *Announcer
	in(t, lab.Host("a"), func() (err error) {
		ann, err = NewAnnouncer(vip, AnnounceConfig{Count: 3, Interval: 20 * time.Millisecond, Delay: 300 * time.Millisecond, Refresh: time.Second}, held.Load)
		return err
	})
	defer ann.Close()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- ann.Run(t.Context()) }()
	testkit.WaitFor(t, "first burst", time.Second, func() bool { return ann.Sent() == 3 })
	if el := time.Since(start); el > 250*time.Millisecond {
		t.Fatalf("first burst took %v", el)
	}
	testkit.WaitFor(t, "second burst", time.Second, func() bool { return ann.Sent() == 6 })
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("second burst after %v, want ≥ 300ms", el)
	}
	testkit.WaitFor(t, "a refresh", 2*time.Second, func() bool { return ann.Sent() == 7 })
	if el := time.Since(start); el < 1300*time.Millisecond {
		t.Fatalf("refresh after %v, want ≥ 1.3s", el)
	}
	held.Store(false) // deposed: the next refresh must not go out
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not stop after the holder was deposed")
	}
	if ann.Sent() != 7 || ann.Skipped() != 1 {
		t.Fatalf("sent %d skipped %d, want 7 and 1", ann.Sent(), ann.Skipped())
	}
}
