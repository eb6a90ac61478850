package gateway

import (
	"bytes"

	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeWriter records frames, and refuses the ones refuse says to.
type fakeWriter struct {
	frames [][]byte
	refuse func(i int) bool
	n      int
	keep   bool
	dsts   []netip.AddrPort // per call
}

func (w *fakeWriter) WriteBatch(frames [][]byte, dst netip.AddrPort) (int, error) {
	failed := 0
	var err error
	if w.keep {
		w.dsts = append(w.dsts, dst)
	}
	for _, f := range frames {
		w.n++
		if w.refuse != nil && w.refuse(w.n) {
			failed++
			err = syscall.ENETUNREACH
			continue
		}
		if w.keep {
			w.frames = append(w.frames, bytes.Clone(f))
		}
	}
	return failed, err
}

// newTestListener builds a listener wired to fakes, with a fixed clock.
func newTestListener(t testing.TB, allow Allowlist, key []byte, ws ...*fakeWriter) (*relayListener, *Relay) {
	r, err := NewRelay(RelayConfig{Listen: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.100:5000")}, Unicast: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.11:6000")}, Key: key, Epoch: 4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.SetAllow(allow)
	l := &relayListener{port: 5000, codec: NewCodec(key), allow: &r.allow, space: &r.space, stopped: &r.stopped, log: r.log, now: func() int64 { return 1234 }, rep: r.rep}
	var ds []dest
	for i, w := range ws {
		ds = append(ds, dest{addr: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.11"), uint16(6000+i)), w: w})
	}
	l.dests.Store(&ds)
	l.alloc(8)
	return l, r
}

// feed puts datagrams into the listener's batch as if read from the socket.
func feed(l *relayListener, ds ...meta) int {
	for i, d := range ds {
		for j := range d.N {
			l.reads[i][j] = byte('a' + j%26)
		}
		l.metas[i] = d
	}
	return len(ds)
}

func TestRelayProcess(t *testing.T) {
	a := netip.MustParseAddrPort("198.18.0.50:4000")
	foreign := netip.MustParseAddrPort("203.0.113.9:4000")
	w1, w2 := &fakeWriter{keep: true}, &fakeWriter{keep: true, refuse: func(i int) bool { return i == 2 }}
	l, r := newTestListener(t, Allowlist{netip.MustParsePrefix("198.18.0.0/15")}, nil, w1, w2)
	l.process(feed(l,
		meta{N: 3, From: a},
		meta{N: 5, From: foreign},
		meta{N: 100, From: a, Trunc: true},
		meta{N: 4, From: a},
		meta{N: 0, From: a},
	))
	st := l.stats()
	want := RelayStats{Received: 5, Forwarded: 2, Bytes: 112, Dropped: map[string]uint64{"truncated": 1, "not_allowed": 1, "send_error": 1, "not_primary": 0}, SendErrors: 1}
	if diff := cmp.Diff(want, st, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Fatalf("stats (-want +got):\n%s", diff)
	}
	// The outcomes add up to the total (driftgate_relay_packets_total).
	sum := st.Forwarded
	for _, v := range st.Dropped {
		sum += v
	}
	if sum != st.Received {
		t.Fatalf("forwarded + dropped = %d, received %d: the outcomes must add up", sum, st.Received)
	}
	c := NewCodec(nil)
	var got []Frame
	for _, b := range w1.frames {
		f, err := c.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, f)
	}
	wantFrames := []Frame{
		{Header: Header{IngressPort: 5000, Epoch: 4, Seq: 1, Timestamp: 1234, Source: a}, Payload: []byte("abc")},
		{Header: Header{IngressPort: 5000, Epoch: 4, Seq: 2, Timestamp: 1234, Source: a}, Payload: []byte("abcd")},
		{Header: Header{IngressPort: 5000, Epoch: 4, Seq: 3, Timestamp: 1234, Source: a}, Payload: []byte{}},
	}
	if diff := cmp.Diff(wantFrames, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Fatalf("frames (-want +got):\n%s", diff)
	}
	// Forwarding off: read and dropped, nothing written.
	r.SetForwarding(false)
	before := len(w1.frames)
	l.process(feed(l, meta{N: 1, From: a}, meta{N: 1, From: a}))
	if st := l.stats(); st.Dropped["not_primary"] != 2 || len(w1.frames) != before {
		t.Fatalf("with forwarding off: %+v, %d frames written", st, len(w1.frames)-before)
	}
	r.SetForwarding(true)
	// A new epoch restarts the sequence at 1.
	r.SetEpoch(5)
	l.process(feed(l, meta{N: 1, From: a}))
	f, _ := c.Decode(w1.frames[len(w1.frames)-1])
	if f.Epoch != 5 || f.Seq != 1 {
		t.Fatalf("after SetEpoch(5): epoch %d seq %d", f.Epoch, f.Seq)
	}
}

func TestRelayConfigErrors(t *testing.T) {
	ap := netip.MustParseAddrPort
	ok := RelayConfig{Listen: []netip.AddrPort{ap("198.18.0.100:5000")}, Group: ap("239.255.0.1:5001")}
	tests := []struct {
		name string
		mod  func(*RelayConfig)
		want string
	}{
		{"no listen", func(c *RelayConfig) { c.Listen = nil }, "relay: listen: at least one address"},
		{"listen port 0", func(c *RelayConfig) { c.Listen[0] = ap("198.18.0.100:0") }, "listen[0]"},
		{"no destination", func(c *RelayConfig) { c.Group = netip.AddrPort{} }, "no destination"},
		{"group unicast", func(c *RelayConfig) { c.Group = ap("198.18.0.1:5001") }, "not a multicast address"},
		{"unicast multicast", func(c *RelayConfig) { c.Unicast = []netip.AddrPort{ap("239.255.0.2:1")} }, "unicast[0]"},
		{"ttl", func(c *RelayConfig) { c.TTL = 256 }, "relay: ttl: 256 is out of range"},
		{"batch", func(c *RelayConfig) { c.Batch = 2000 }, "relay: batch: 2000 is out of range"},
		{"rcvbuf", func(c *RelayConfig) { c.RcvBuf = -1 }, "relay: rcvbuf: -1 must not be negative"},
		{"short key", func(c *RelayConfig) { c.Key = make([]byte, 16) }, "relay: key: 16 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			c.Listen = append([]netip.AddrPort(nil), ok.Listen...)
			tt.mod(&c)
			_, err := NewRelay(c, nil)
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
				t.Fatalf("NewRelay error %v, want it to mention %q", err, tt.want)
			}
		})
	}
	if _, err := NewRelay(ok, nil); err != nil {
		t.Fatalf("valid config: %v", err)
	}
}

// TestRelayProcessDoesNotAllocate is the steady-state allocation proof for
// the relay's per-batch work: read results in, frames out.
func TestRelayProcessDoesNotAllocate(t *testing.T) {
	a := netip.MustParseAddrPort("198.18.0.50:4000")
	l, _ := newTestListener(t, Allowlist{netip.MustParsePrefix("198.18.0.0/15")}, bytes.Repeat([]byte{1}, 32), &fakeWriter{}, &fakeWriter{})
	ds := make([]meta, 8)
	for i := range ds {
		ds[i] = meta{N: 64 + i*100, From: a}
	}
	if l.rep == nil {
		t.Fatal("the test listener keeps no repair ring: the proof would not cover it")
	}
	if n := testing.AllocsPerRun(100, func() { l.process(feed(l, ds...)) }); n != 0 {
		t.Fatalf("%.1f allocations per batch, want 0", n)
	}
}

type nopDeliverer struct{ n int }

func (d *nopDeliverer) Deliver(*Frame, []byte) error { d.n++; return nil }
func (d *nopDeliverer) Flush() error                 { return nil }
func (d *nopDeliverer) Close() error                 { return nil }

// TestReceiverProcessDoesNotAllocate: the receiver's per-batch work on a
// loss-free feed — decode, check, deliver — allocates nothing.
func TestReceiverProcessDoesNotAllocate(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	d := &nopDeliverer{}
	r, err := NewReceiver(ReceiverConfig{Listen: netip.MustParseAddrPort("198.18.0.11:6000"), Key: key, Deliver: d}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const batch = 8
	rs := &readSide{bufs: make([][]byte, batch), metas: make([]meta, batch)}
	codec := NewCodec(key)
	for i := range rs.bufs {
		rs.bufs[i] = make([]byte, 2048)
	}
	seq := uint64(0)
	from := netip.MustParseAddrPort("198.18.0.12:40000")
	fill := func() {
		for i := range batch {
			seq++
			copy(rs.bufs[i][HeaderLen:], "payload")
			n := codec.EncodeInPlace(rs.bufs[i], &Header{Epoch: 3, Seq: seq}, len("payload"))
			rs.metas[i] = meta{N: n, From: from}
		}
	}
	if n := testing.AllocsPerRun(100, fill); n != 0 {
		t.Fatalf("the test's own encoding allocates %.1f times", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		fill()
		r.process(rs, batch)
	}); n != 0 {
		t.Fatalf("%.1f allocations per batch, want 0", n)
	}
	if d.n < 100*batch {
		t.Fatalf("delivered %d", d.n)
	}
}

// BenchmarkRelayProcess: the relay's per-batch work, with the repair
// ring (as it runs) and without it (the anchor for the ring's cost), so the
// two are printed side by side.
func BenchmarkRelayProcess(b *testing.B) {
	for _, size := range []int{64, 512, 1400} {
		for _, v := range []struct {
			name          string
			keyed, noRing bool
		}{{"plain", false, false}, {"plain-no-ring", false, true}, {"hmac", true, false}} {
			b.Run(v.name+"/"+strconv.Itoa(size), func(b *testing.B) {
				var key []byte
				if v.keyed {
					key = bytes.Repeat([]byte{1}, 32)
				}
				a := netip.MustParseAddrPort("198.18.0.50:4000")
				l, r := newTestListener(b, nil, key, &fakeWriter{})
				if v.noRing {
					l.rep = nil
				} else {
					r.rep.ring.a.prefault()
				}
				ds := make([]meta, 8)
				for i := range ds {
					ds[i] = meta{N: size, From: a}
				}
				n := feed(l, ds...)
				b.ReportAllocs()
				b.SetBytes(int64(size * n))
				for b.Loop() {
					l.process(n)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/datagram")
			})
		}
	}
}

// Past its lease deadline the relay forwards nothing, even with forwarding
// on: what a frozen holder finds in its socket on waking stays unsent.
func TestRelayDeadline(t *testing.T) {
	w := &fakeWriter{}
	l, r := newTestListener(t, nil, nil, w)
	l.until = r.deadline
	a := netip.MustParseAddrPort("198.18.0.50:4000")
	r.SetDeadline(time.Now().Add(time.Hour))
	l.process(feed(l, meta{N: 10, From: a}))
	r.SetDeadline(time.Now().Add(-time.Millisecond))
	l.process(feed(l, meta{N: 10, From: a}, meta{N: 10, From: a}))
	r.SetDeadline(time.Time{}) // none: forwards again
	l.process(feed(l, meta{N: 10, From: a}))
	st := l.stats()
	if st.Forwarded != 2 || st.Dropped["not_primary"] != 2 || w.n != 2 {
		t.Fatalf("forwarded %d, not_primary %d, written %d; want 2, 2, 2", st.Forwarded, st.Dropped["not_primary"], w.n)
	}
}

// localTee is a test listener with a receiver in process (SetLocal), as
// on the primary, delivering to d.
func localTee(t testing.TB, key []byte, d Deliverer) (*relayListener, *Receiver) {
	l, _ := newTestListener(t, nil, key, &fakeWriter{})
	rcv, err := NewReceiver(ReceiverConfig{Listen: netip.MustParseAddrPort("198.18.0.11:6000"), Key: key, Deliver: d}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rcv.keep.a.prefault()
	l.local = rcv
	l.now = func() int64 { return time.Now().UnixNano() } // a keyed receiver drops frames stamped before it started
	return l, rcv
}

// TestLocalTeeDoesNotAllocate: the primary's per-batch work with its own
// receiver in process — frame, keep, send, then check and deliver — allocates
// nothing.
func TestLocalTeeDoesNotAllocate(t *testing.T) {
	d := &nopDeliverer{}
	l, rcv := localTee(t, bytes.Repeat([]byte{1}, 32), d)
	a := netip.MustParseAddrPort("198.18.0.50:4000")
	ds := make([]meta, 8)
	for i := range ds {
		ds[i] = meta{N: 64 + i*100, From: a}
	}
	if n := testing.AllocsPerRun(100, func() { l.process(feed(l, ds...)) }); n != 0 {
		t.Fatalf("%.1f allocations per batch, want 0", n)
	}
	if st := rcv.Stats(); d.n != 101*len(ds) || st.Local != uint64(d.n) || st.Duplicates != 0 {
		t.Fatalf("delivered %d, local %d, duplicates %d; want %d each and none", d.n, st.Local, st.Duplicates, 101*len(ds))
	}
}

// BenchmarkLocalTee: the primary's own work per datagram, the relay alone
// and the relay with its receiver in process, side by side (no system
// calls: a fake writer and a deliverer that counts).
func BenchmarkLocalTee(b *testing.B) {
	for _, size := range []int{64, 512, 1400} {
		for _, local := range []bool{false, true} {
			name := "relay"
			if local {
				name = "relay+receiver"
			}
			b.Run(name+"/"+strconv.Itoa(size), func(b *testing.B) {
				l, r := newTestListener(b, nil, nil, &fakeWriter{})
				r.rep.ring.a.prefault()
				if local {
					l, _ = localTee(b, nil, &nopDeliverer{})
					l.rep.ring.a.prefault()
				}
				a := netip.MustParseAddrPort("198.18.0.50:4000")
				ds := make([]meta, 8)
				for i := range ds {
					ds[i] = meta{N: size, From: a}
				}
				n := feed(l, ds...)
				b.ReportAllocs()
				for b.Loop() {
					l.process(n)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/datagram")
			})
		}
	}
}

// BenchmarkReceiverProcess: the receiver's work per datagram read, one
// datagram per buffer and 8 the kernel coalesced into one (GRO).
func BenchmarkReceiverProcess(b *testing.B) {
	for _, size := range []int{64, 512, 1400} {
		for _, gro := range []bool{false, true} {
			name := "single"
			if gro {
				name = "gro"
			}
			b.Run(name+"/"+strconv.Itoa(size), func(b *testing.B) {
				r, err := NewReceiver(ReceiverConfig{Listen: netip.MustParseAddrPort("198.18.0.11:6000"), Deliver: &nopDeliverer{}}, nil)
				if err != nil {
					b.Fatal(err)
				}
				r.keep.a.prefault()
				const batch = 8
				rs := &readSide{bufs: make([][]byte, batch), metas: make([]meta, batch)}
				for i := range rs.bufs {
					rs.bufs[i] = make([]byte, 65535)
				}
				codec := NewCodec(nil)
				from := netip.MustParseAddrPort("198.18.0.12:40000")
				payload := bytes.Repeat([]byte{'p'}, size)
				seq := uint64(0)
				frame := make([]byte, 0, maxFrameLen)
				fill := func() int {
					if !gro {
						for i := range batch {
							seq++
							frame = codec.AppendFrame(frame[:0], Header{Epoch: 3, Seq: seq}, payload)
							rs.metas[i] = meta{N: copy(rs.bufs[i], frame), From: from}
						}
						return batch
					}
					buf := rs.bufs[0][:0]
					for range batch {
						seq++
						buf = codec.AppendFrame(buf, Header{Epoch: 3, Seq: seq}, payload)
					}
					rs.metas[0] = meta{N: len(buf), From: from, Seg: len(buf) / batch}
					return 1
				}
				b.ReportAllocs()
				for b.Loop() {
					b.StopTimer()
					n := fill()
					b.StartTimer()
					r.process(rs, n)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/datagram")
			})
		}
	}
}

// TestRelaySpreadDoesNotAllocate: taking coalesced reads apart (GRO) adds
// no allocation: each datagram is copied into its frame's payload area.
func TestRelaySpreadDoesNotAllocate(t *testing.T) {
	w := &fakeWriter{}
	l, _ := newTestListener(t, nil, nil, w)
	l.gro = true
	l.alloc(8)
	a := netip.MustParseAddrPort("198.18.0.50:4000")
	// Two reads: 12 datagrams of 100 bytes and a short one, then a single.
	l.groMetas[0] = meta{N: 12*100 + 30, From: a, Seg: 100}
	l.groMetas[1] = meta{N: 7, From: a}
	if n := testing.AllocsPerRun(100, func() { l.spread(2) }); n != 0 {
		t.Fatalf("%.1f allocations per read, want 0", n)
	}
	if st := l.stats(); st.Forwarded != 101*14 || w.n != 101*14 {
		t.Fatalf("forwarded %d, written %d; want %d", st.Forwarded, w.n, 101*14)
	}
}
