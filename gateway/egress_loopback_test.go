package gateway

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"driftgate/internal/testkit"
)

// egressSink reads what reaches a destination, with the source address.
type egressSink struct {
	conn *net.UDPConn
	mu   sync.Mutex
	got  []string
	from []netip.AddrPort
}

func newEgressSink(t *testing.T) *egressSink {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &egressSink{conn: c}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got, s.from = append(s.got, string(buf[:n])), append(s.from, from)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return s
}

func (s *egressSink) addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (s *egressSink) seen() ([]string, []netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got), slices.Clone(s.from)
}

func (s *egressSink) wait(t *testing.T, n int) []string {
	t.Helper()
	testkit.WaitFor(t, "the sink to get the datagrams", 5*time.Second, func() bool { g, _ := s.seen(); return len(g) >= n })
	g, _ := s.seen()
	return g
}

// startEgress binds and runs an egress until the test ends.
func startEgress(t *testing.T, cfg EgressConfig) *Egress {
	t.Helper()
	e, err := NewEgress(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Bind(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("egress Run: %v", err)
		}
	})
	return e
}

func result(e *Egress, port int, r EgressResult) uint64 { return e.Stats()[port].Results[r.String()] }

func sendTo(t *testing.T, to EgressAddr, payloads ...[]byte) {
	t.Helper()
	c, err := to.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, p := range payloads {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEgressLoopback: datagrams leave from the source, and only while
// sending is on; a destination outside the allowlist is refused on either
// port kind.
func TestEgressLoopback(t *testing.T) {
	sink := newEgressSink(t)
	src := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), freePort(t, "127.0.0.2")) // the "VIP"
	fixed := EgressAddr{UDP: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "127.0.0.1"))}
	sock := EgressAddr{Unix: filepath.Join(t.TempDir(), "egress.sock")}
	e := startEgress(t, EgressConfig{Source: src, Allow: Allowlist{netip.MustParsePrefix("127.0.0.0/8")},
		Listeners: []EgressListener{{Listen: fixed, Destination: sink.addr()}, {Listen: sock, Header: true}}})

	sendTo(t, fixed, []byte("standby-1"), []byte("standby-2"))
	testkit.WaitFor(t, "not_primary", 5*time.Second, func() bool { return result(e, 0, EgressNotPrimary) == 2 })

	e.SetForwarding(true)
	sendTo(t, fixed, []byte("a"), []byte("b"))
	hdr := func(to netip.AddrPort, p string) []byte {
		return append(AppendEgressHeader(nil, EgressHeader{Dest: to}), p...)
	}
	sendTo(t, sock, hdr(sink.addr(), "c"), hdr(netip.MustParseAddrPort("198.18.2.1:9"), "refused"), []byte("no header"))
	got := sink.wait(t, 3)
	testkit.WaitFor(t, "the refusals counted", 5*time.Second, func() bool {
		return result(e, 1, EgressNotAllowed) == 1 && result(e, 1, EgressBadHeader) == 1
	})
	slices.Sort(got)
	if diff := cmp.Diff([]string{"a", "b", "c"}, got); diff != "" {
		t.Errorf("the sink got (-want +got):\n%s", diff)
	}
	_, from := sink.seen()
	for _, f := range from {
		if f != src {
			t.Errorf("a datagram came from %s, want the source %s", f, src)
		}
	}

	e.SetForwarding(false) // returns when nothing more leaves
	sendTo(t, fixed, []byte("after"))
	testkit.WaitFor(t, "not_primary", 5*time.Second, func() bool { return result(e, 0, EgressNotPrimary) == 3 })
	if g, _ := sink.seen(); len(g) != 3 {
		t.Errorf("the sink got %q after sending stopped", g[3:])
	}
	st := e.Stats()
	if st[0].Received != 5 || st[0].Results["sent"] != 2 || st[1].Received != 3 || st[1].Results["sent"] != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestEgressFailoverThroughFeed: two nodes' egresses, the primary's ids
// published as records through a relay to the standby's receiver. The
// standby holds its copies, drops those the primary sent, and on taking over
// sends the rest: the sink sees every message once.
func TestEgressFailoverThroughFeed(t *testing.T) {
	relay, recv, _, _ := startRelayReceiver(t, "127.0.0.1", nil, nil, nil)
	sink := newEgressSink(t)
	allow := Allowlist{netip.MustParsePrefix("127.0.0.0/8")}
	node := func(vip string) (*Egress, EgressAddr) {
		in := EgressAddr{UDP: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "127.0.0.1"))}
		src := netip.AddrPortFrom(netip.MustParseAddr(vip), freePort(t, vip))
		return startEgress(t, EgressConfig{Source: src, Allow: allow, Window: 10 * time.Second,
			Listeners: []EgressListener{{Listen: in, Header: true, Destination: sink.addr()}}}), in
	}
	a, ain := node("127.0.0.2")
	b, bin := node("127.0.0.3")
	a.SetPublish(relay.Publish)
	recv.SetRecords(b.TakeRecord)
	msg := func(id uint64) []byte {
		return append(AppendEgressHeader(nil, EgressHeader{ID: id, HasID: true}), byte('0'+id))
	}

	a.SetForwarding(true)
	// The standby takes the feed: it has seen a record.
	sendTo(t, ain, msg(9))
	sink.wait(t, 1)
	testkit.WaitFor(t, "the standby's receiver to take a record", 5*time.Second, func() bool { return recv.Stats().Records > 0 })
	// The standby's application runs ahead: 1..5; the primary's sends 1..3.
	sendTo(t, bin, msg(1), msg(2), msg(3), msg(4), msg(5))
	testkit.WaitFor(t, "the standby to hold 5", 5*time.Second, func() bool { return b.Stats()[0].Held == 5 })
	sendTo(t, ain, msg(1), msg(2), msg(3))
	sink.wait(t, 4)
	testkit.WaitFor(t, "the standby to drop what the primary sent", 5*time.Second, func() bool {
		return b.Stats()[0].Held == 2 && result(b, 0, EgressNotPrimary) == 3
	})
	// A clean step-down: the primary stops, the standby takes over and
	// sends what the primary did not; then the old primary's application
	// catches up (4, 5) and is a standby now.
	a.SetForwarding(false)
	relay.SetForwarding(false)
	b.SetForwarding(true)
	sink.wait(t, 6)
	sendTo(t, ain, msg(4), msg(5))
	sendTo(t, bin, msg(5), msg(6))
	got := sink.wait(t, 7)
	testkit.WaitFor(t, "the counts", 5*time.Second, func() bool {
		return result(b, 0, EgressDuplicate) == 1 && a.Stats()[0].Received == 6
	})
	if diff := cmp.Diff([]string{"9", "1", "2", "3", "4", "5", "6"}, got); diff != "" {
		t.Errorf("the sink got (-want +got):\n%s", diff)
	}
	_, from := sink.seen()
	for i, f := range from {
		want := netip.MustParseAddr("127.0.0.2")
		if i >= 4 {
			want = netip.MustParseAddr("127.0.0.3")
		}
		if f.Addr() != want {
			t.Errorf("message %s came from %s, want %s", got[i], f, want)
		}
	}
	if rs := recv.Stats(); rs.Records == 0 || rs.Delivered != 0 {
		t.Errorf("receiver: %d records, %d delivered; want records only", rs.Records, rs.Delivered)
	}
}

// TestEgressTakeDoesNotAllocate: the primary's path, from a batch read to
// the send from the source and the record of its ids, allocates nothing.
func TestEgressTakeDoesNotAllocate(t *testing.T) {
	sink := newEgressSink(t)
	src := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), freePort(t, "127.0.0.2"))
	in := EgressAddr{UDP: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "127.0.0.1"))}
	e, err := NewEgress(EgressConfig{Source: src, Allow: Allowlist{netip.MustParsePrefix("127.0.0.0/8")}, Window: time.Minute,
		Listeners: []EgressListener{{Listen: in, Header: true, Destination: sink.addr()}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Bind(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer e.close()
	published := 0
	e.SetPublish(func([]byte) error { published++; return nil })
	e.SetForwarding(true)
	l := e.listeners[0]
	id := uint64(0)
	fill := func() {
		for i := range 32 {
			id++
			n := len(AppendEgressHeader(l.bufs[i][:0], EgressHeader{ID: id, HasID: true}))
			l.bufs[i][n] = 'x'
			l.metas[i] = meta{N: n + 1}
		}
	}
	fill()
	l.take(32) // warm up: the batch's slices grow once
	allocs := testing.AllocsPerRun(50, func() {
		fill()
		l.take(32)
	})
	if allocs > 0 {
		t.Errorf("take allocates %.1f times per batch of 32", allocs)
	}
	// One batch before, and AllocsPerRun runs the function once more than asked.
	if got := result(e, 0, EgressSent); got != 32*52 || published != 52 {
		t.Errorf("sent %d (want %d), %d records published (want 52)", got, 32*52, published)
	}
}

// TestEgressIPv6: an IPv6 source sends to IPv6 destinations; an IPv4
// destination is outside an IPv6 source's allowlist.
func TestEgressIPv6(t *testing.T) {
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer c.Close()
	src := netip.AddrPortFrom(netip.IPv6Loopback(), freePort(t, "::1"))
	in := EgressAddr{UDP: netip.AddrPortFrom(netip.IPv6Loopback(), freePort(t, "::1"))}
	e := startEgress(t, EgressConfig{Source: src, Allow: Allowlist{netip.MustParsePrefix("::1/128")},
		Listeners: []EgressListener{{Listen: in, Header: true}}})
	e.SetForwarding(true)
	sendTo(t, in, append(AppendEgressHeader(nil, EgressHeader{Dest: c.LocalAddr().(*net.UDPAddr).AddrPort()}), "v6"...),
		append(AppendEgressHeader(nil, EgressHeader{Dest: netip.MustParseAddrPort("127.0.0.1:9")}), "v4"...))
	buf := make([]byte, 100)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "v6" || from != src {
		t.Errorf("got %q from %s, want \"v6\" from %s", buf[:n], from, src)
	}
	testkit.WaitFor(t, "the IPv4 destination refused", 5*time.Second, func() bool { return result(e, 0, EgressNotAllowed) == 1 })
}
