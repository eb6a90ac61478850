package netvip

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"driftgate/internal/netlab"
)

// TestFence: the kernel answers for a fenced VIP only while its lease
// lasts, with nothing from the process after Extend (as if it froze): no
// datagram sent to the VIP after the lease ended is received, and a host
// that has no neighbour entry for it gets no answer. Close lifts the fence.
func TestFence(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			lab := netlab.New(t, "router", "a")
			router, a := lab.Host("router"), lab.Host("a")
			dst := netip.AddrPortFrom(fam.vip.Addr(), 7000)
			var m *Manager
			in(t, a, func() (err error) { m, err = New(VIP{Prefix: fam.vip, Iface: "eth0"}); return err })
			defer m.Close()
			if err := m.Add(time.Time{}); err != nil {
				t.Fatal(err)
			}
			var f *Fence
			in(t, a, func() (err error) { f, err = OpenFence([]netip.Addr{fam.vip.Addr()}); return err })
			closed := false
			defer func() {
				if !closed {
					f.Close()
				}
			}()
			l := udpListen(t, a, fam.vip.Addr().Is6())

			// Fenced from the start: the router's solicitation gets no answer.
			sendFrom(t, router, dst, "fenced")
			if got := readFor(l, 300*time.Millisecond); len(got) != 0 {
				t.Fatalf("fenced VIP received %q", got)
			}
			if mac := neighMAC(router, fam.vip.Addr()); mac != "" {
				t.Fatalf("fenced VIP: the router learnt %s for it", mac)
			}

			// A lease of 400 ms: answered and received until it ends, to
			// the millisecond, and not after. Each datagram carries when
			// it was sent, from the lease's start.
			const lease = 400 * time.Millisecond
			router.IP("neigh", "flush", "dev", "eth0") // the failed entry would wait a second to ask again
			start := time.Now()
			if err := f.Extend(start.Add(lease)); err != nil {
				t.Fatal(err)
			}
			var c *net.UDPConn
			in(t, router, func() (err error) { c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst)); return err })
			defer c.Close()
			got := make(chan []string)
			go func() { got <- readFor(l, 200*time.Millisecond) }() // read as they come: a full buffer drops
			for d := time.Since(start); d < lease+300*time.Millisecond; d = time.Since(start) {
				c.Write(binary.BigEndian.AppendUint64(nil, uint64(d)))
				time.Sleep(time.Millisecond)
			}
			var last time.Duration
			n := 0
			for _, m := range <-got {
				n++
				last = max(last, time.Duration(binary.BigEndian.Uint64([]byte(m))))
			}
			t.Logf("%d datagrams received, the last sent %v into a lease of %v", n, last.Round(100*time.Microsecond), lease)
			if n == 0 || last >= lease-FenceSlack {
				t.Fatalf("the last datagram received was sent %v into a lease of %v (fence slack %v): the kernel answered past the lease", last, lease, FenceSlack)
			}
			if last < lease-100*time.Millisecond {
				t.Errorf("the fence fell %v early", lease-last)
			}
			// Expired: not even a fresh solicitation is answered.
			router.IP("neigh", "flush", "dev", "eth0")
			sendFrom(t, router, dst, "expired")
			if got := readFor(l, 300*time.Millisecond); len(got) != 0 {
				t.Fatalf("expired lease: received %q", got)
			}
			if mac := neighMAC(router, fam.vip.Addr()); mac != "" {
				t.Fatalf("expired lease: the router learnt %s for the VIP", mac)
			}

			// Extended again, then fenced at once (a drop): from that
			// instant nothing is received.
			router.IP("neigh", "flush", "dev", "eth0")
			if err := f.Extend(time.Now().Add(10 * time.Second)); err != nil {
				t.Fatal(err)
			}
			sendFrom(t, router, dst, "again")
			if got := readFor(l, 3*time.Second); len(got) != 1 || got[0] != "again" {
				t.Fatalf("extended again: received %q, want \"again\"", got)
			}
			if err := f.Extend(time.Time{}); err != nil {
				t.Fatal(err)
			}
			sendFrom(t, router, dst, "after the drop")
			if got := readFor(l, 300*time.Millisecond); len(got) != 0 {
				t.Fatalf("fenced at once: received %q", got)
			}

			// Removed: the kernel answers as for any address.
			router.IP("neigh", "flush", "dev", "eth0") // and with it what waited for an answer
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			closed = true
			sendFrom(t, router, dst, "open")
			if got := readFor(l, 3*time.Second); len(got) != 1 || got[0] != "open" {
				t.Fatalf("after Close: received %q, want \"open\"", got)
			}
		})
	}
}

// readFor returns what l received within d (until a quiet d).
func readFor(l *net.UDPConn, d time.Duration) []string {
	var got []string
	buf := make([]byte, 100)
	for {
		l.SetReadDeadline(time.Now().Add(d))
		n, _, err := l.ReadFromUDPAddrPort(buf)
		if err != nil {
			return got
		}
		got = append(got, string(buf[:n]))
		if len(got) == 1 && d > 100*time.Millisecond && string(buf[:n]) == "open" {
			return got
		}
	}
}

// BenchmarkFenceExtend: what a renewal adds for the kernel fence (one
// nftables transaction).
func BenchmarkFenceExtend(b *testing.B) {
	lab := netlab.New(b, "a")
	var f *Fence
	if err := lab.Host("a").Do(func() (err error) {
		f, err = OpenFence([]netip.Addr{netip.MustParseAddr("198.18.0.100")})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for b.Loop() {
		if err := f.Extend(time.Now().Add(time.Second)); err != nil {
			b.Fatal(err)
		}
	}
}
