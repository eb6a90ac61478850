package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"driftgate/internal/testkit"
)

// lossyLink sits between a relay and a receiver on loopback: frames the
// relay sends to its side are passed on to the receiver from its other
// side, except that drop decides which frames are lost the first time
// they pass; repair requests and repaired frames travel back the same way.
type lossyLink struct {
	relaySide, recvSide *net.UDPConn
	relay, recv         netip.AddrPort // learnt from traffic / given
	mu                  sync.Mutex
	passed              map[uint64]bool
	dropped             int
}

func newLossyLink(t *testing.T, recv netip.AddrPort, drop func(seq uint64) bool) *lossyLink {
	t.Helper()
	a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	l := &lossyLink{relaySide: a, recvSide: b, recv: recv, passed: map[uint64]bool{}}
	t.Cleanup(func() { a.Close(); b.Close() })
	go func() { // relay → receiver
		buf := make([]byte, 65536)
		for {
			n, from, err := a.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			l.mu.Lock()
			l.relay = from
			seq := binary.BigEndian.Uint64(buf[16:])
			first := !l.passed[seq]
			l.passed[seq] = true
			lose := first && drop(seq)
			if lose {
				l.dropped++
			}
			l.mu.Unlock()
			if !lose {
				b.WriteToUDPAddrPort(buf[:n], recv)
			}
		}
	}()
	go func() { // receiver → relay: repair requests
		buf := make([]byte, 65536)
		for {
			n, _, err := b.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			l.mu.Lock()
			to := l.relay
			l.mu.Unlock()
			a.WriteToUDPAddrPort(buf[:n], to)
		}
	}()
	return l
}

func (l *lossyLink) addr() netip.AddrPort { return l.relaySide.LocalAddr().(*net.UDPAddr).AddrPort() }

// A receiver behind a lossy link asks for what it missed and delivers the
// whole feed exactly once, in arrival order but complete; the relay's
// counters account for every request.
func TestLoopbackRepair(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, 32)
	for _, tt := range []struct {
		name string
		key  []byte
		drop func(seq uint64) bool
	}{
		{"every 10th", nil, func(s uint64) bool { return s%10 == 3 }},
		{"bursts of 50, signed requests", key, func(s uint64) bool { return s%400 >= 100 && s%400 < 150 }},
		{"the last frame before a pause", nil, func(s uint64) bool { return s == 1000 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			recvAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "127.0.0.1"))
			link := newLossyLink(t, recvAddr, tt.drop)
			in := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "127.0.0.1"))
			relay, err := NewRelay(RelayConfig{Listen: []netip.AddrPort{in}, Unicast: []netip.AddrPort{link.addr()}, Key: tt.key, Epoch: 3,
				Repair: RepairConfig{Frames: 4096, Bytes: 1 << 20}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			col := &collector{}
			recv, err := NewReceiver(ReceiverConfig{Listen: recvAddr, Key: tt.key, Deliver: col}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := recv.Bind(ctx); err != nil {
				t.Fatal(err)
			}
			if err := relay.Bind(ctx); err != nil {
				t.Fatal(err)
			}
			errs := make(chan error, 2)
			go func() { errs <- relay.Run(ctx) }()
			go func() { errs <- recv.Run(ctx) }()
			defer func() {
				cancel()
				for range 2 {
					if err := <-errs; err != nil {
						t.Errorf("Run: %v", err)
					}
				}
			}()
			src, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(in))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			const n = 1000
			for i := range n {
				fmt.Fprintf(src, "%d", i+1)
				if i%50 == 49 {
					time.Sleep(time.Millisecond) // a bounded, paced feed
				}
			}
			if _, ok := testkit.Poll(10*time.Second, func() bool { return col.count() >= n }); !ok {
				rs, _ := relay.RepairStats()
				t.Fatalf("after 10 s, %d of %d delivered; receiver %+v; relay %+v", col.count(), n, recv.Stats(), rs)
			}
			col.mu.Lock()
			seen := map[uint64]int{}
			for _, f := range col.frames {
				seen[f.Seq]++
			}
			col.mu.Unlock()
			for s := uint64(1); s <= n; s++ {
				if seen[s] != 1 {
					t.Fatalf("seq %d delivered %d times", s, seen[s])
				}
			}
			link.mu.Lock()
			dropped := link.dropped
			link.mu.Unlock()
			// A request counts as sent once its send returned, which may
			// be after its answer was delivered.
			testkit.Poll(2*time.Second, func() bool { return recv.Stats().Nacks > 0 })
			st := recv.Stats()
			got := struct{ Repaired, Unrecovered, Missing, Duplicates uint64 }{st.Repaired, st.Unrecovered, st.Missing, st.Duplicates}
			want := got
			// At least what the link dropped: a loaded machine may lose
			// more on loopback, and that is repaired too.
			want.Repaired, want.Unrecovered, want.Missing = max(got.Repaired, uint64(dropped)), 0, 0
			if st.Nacks == 0 || dropped == 0 {
				t.Fatalf("dropped %d, repair requests %d: the test did not test repair", dropped, st.Nacks)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("receiver (-want +got):\n%s", diff)
			}
			// Every request the relay read, the receiver counts as sent —
			// once its send returned, which may be after the relay read it.
			var rs RepairStats
			var nacks uint64
			testkit.Poll(time.Second, func() bool {
				rs, _ = relay.RepairStats()
				nacks = recv.Stats().Nacks
				return rs.Requests <= nacks
			})
			if rs.Frames < uint64(dropped) || rs.Requests == 0 || rs.Requests > nacks || rs.Unavailable != 0 {
				t.Fatalf("relay repair stats %+v: want >= %d frames resent for %d requests", rs, dropped, nacks)
			}
			// Repair traffic: nothing nobody asked for — every frame resent
			// was in a request the receiver sent (a loaded machine answers
			// late and a retried request is answered again, or loses a
			// resent frame on loopback and asks again: more requests, never
			// more than they asked). How little is resent on a LAN is make
			// bench-repair's (1.00x).
			if asked := recv.Stats().NackFrames; rs.Frames > asked || asked == 0 {
				t.Fatalf("%d frames resent for %d asked for (%d repaired)", rs.Frames, asked, st.Repaired)
			}
		})
	}
}

// The relay answers only requesters it knows, and only with what it holds.
func TestRepairRefusals(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	cfg := RelayConfig{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, Unicast: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:5001")},
		Key: key, Repair: RepairConfig{Frames: 16, Bytes: 1 << 20, Rate: 1000}}
	p := newRelayRepairer(cfg)
	p.setAllowed(cfg.Unicast, []netip.Addr{netip.MustParseAddr("198.18.0.3")})
	codec := NewCodec(key)
	frame := codec.AppendFrame(nil, Header{Epoch: 5, Seq: 1}, bytes.Repeat([]byte{1}, 100))
	for s := uint64(1); s <= 20; s++ { // 1..4 are evicted by count
		p.ring.putBatch(5, []uint64{s}, [][]byte{frame})
	}
	w := &fakeWriter{}
	a := answer{w: w, buf: make([]byte, 0, 1<<20)}
	var n Nack
	now := time.Now()
	ask := func(from string, key []byte, epoch uint64, ts time.Time, ranges ...SeqRange) {
		b := NewCodec(key).AppendNack(nil, &Nack{Epoch: epoch, Timestamp: ts.UnixNano(), Ranges: ranges})
		p.handle(codec, b, netip.MustParseAddrPort(from), &n, &a, now)
	}
	ask("198.18.0.9:4000", key, 5, now, SeqRange{10, 1})                                     // not allowed
	ask("198.18.0.2:4000", nil, 5, now, SeqRange{10, 1})                                     // unsigned
	ask("198.18.0.2:4000", key, 5, now.Add(-time.Minute), SeqRange{10, 1})                   // replayed
	ask("198.18.0.2:4000", key, 5, now, SeqRange{2, 4})                                      // 2..4 evicted, 5 sent
	ask("198.18.0.3:4000", key, 6, now, SeqRange{10, 1})                                     // wrong epoch
	ask("198.18.0.3:4000", key, 5, now, SeqRange{6, 10})                                     // rate: 250 bytes of burst = 1 frame
	p.handle(codec, []byte("DN junk"), netip.MustParseAddrPort("198.18.0.2:1"), &n, &a, now) // malformed
	got := p.stats()
	want := RepairStats{Requests: 7, Frames: 2, Bytes: 2 * uint64(len(frame)), Unavailable: 4,
		Refused: map[string]uint64{"not_allowed": 1, "malformed": 1, "bad_tag": 1, "replay": 1, "rate_limited": 9}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

// A second receiver asking for the same frame right after the first gets
// it by multicast, once; a third asking right after is suppressed.
func TestRepairSuppression(t *testing.T) {
	cfg := RelayConfig{Group: netip.MustParseAddrPort("239.255.0.1:5001"), Repair: RepairConfig{Frames: 16, Bytes: 1 << 20}}
	p := newRelayRepairer(cfg)
	p.setAllowed(nil, []netip.Addr{netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("198.18.0.4")})
	codec := NewCodec(nil)
	p.ring.putBatch(1, []uint64{1}, [][]byte{codec.AppendFrame(nil, Header{Epoch: 1, Seq: 1}, []byte("x"))})
	w := &fakeWriter{keep: true}
	a := answer{w: w, buf: make([]byte, 0, 1<<20)}
	var n Nack
	now := time.Now()
	for i, from := range []string{"198.18.0.2:9", "198.18.0.3:9", "198.18.0.4:9"} {
		b := codec.AppendNack(nil, &Nack{Epoch: 1, Timestamp: now.UnixNano(), Ranges: []SeqRange{{1, 1}}})
		p.handle(codec, b, netip.MustParseAddrPort(from), &n, &a, now.Add(time.Duration(i)*time.Millisecond))
	}
	var dsts []string
	for _, d := range w.dsts {
		dsts = append(dsts, d.String())
	}
	if diff := cmp.Diff([]string{"198.18.0.2:9", "239.255.0.1:5001"}, dsts); diff != "" {
		t.Fatalf("answers went to (-want +got):\n%s", diff)
	}
	if st := p.stats(); st.Suppressed != 1 || st.Multicast != 1 {
		t.Fatalf("stats %+v: want 1 suppressed, 1 multicast", st)
	}
}

// Peer repair: after a takeover, a receiver that missed frames of the
// deposed primary, whose relay does not answer (dead), gets them from
// another receiver that has them.
func TestLoopbackPeerRepair(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lo := netip.MustParseAddr("127.0.0.1")
	a1, a2 := netip.AddrPortFrom(lo, freePort(t, "127.0.0.1")), netip.AddrPortFrom(lo, freePort(t, "127.0.0.1"))
	cols := []*collector{{}, {}}
	var recvs []*Receiver
	errs := make(chan error, 2)
	for i, addr := range []netip.AddrPort{a1, a2} {
		r, err := NewReceiver(ReceiverConfig{Listen: addr, Deliver: cols[i]}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Bind(ctx); err != nil {
			t.Fatal(err)
		}
		recvs = append(recvs, r)
		go func() { errs <- r.Run(ctx) }()
	}
	defer func() {
		cancel()
		for range 2 {
			<-errs
		}
	}()
	recvs[0].SetPeers([]netip.AddrPort{a2})
	recvs[1].SetPeers([]netip.AddrPort{a1})
	// The deposed primary: a socket that sends and never answers.
	dead, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	codec := NewCodec(nil)
	send := func(from *net.UDPConn, to netip.AddrPort, epoch, seq uint64) {
		from.WriteToUDPAddrPort(codec.AppendFrame(nil, Header{Epoch: epoch, Seq: seq}, []byte(fmt.Sprint(seq))), to)
	}
	for s := uint64(1); s <= 100; s++ {
		send(dead, a2, 1, s)
		if s < 40 || s > 50 {
			send(dead, a1, 1, s) // the first receiver misses 40..50
		}
	}
	testkit.WaitFor(t, "epoch 1 at both", 5*time.Second, func() bool { return cols[0].count() == 89 && cols[1].count() == 100 })
	// The takeover: a new primary's first frame.
	next, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	send(next, a1, 2, 1)
	send(next, a2, 2, 1)
	if _, ok := testkit.Poll(5*time.Second, func() bool { return cols[0].count() == 101 }); !ok {
		t.Fatalf("the first receiver has %d frames, want 89 + 11 repaired of epoch 1 and 1 of epoch 2; stats %+v", cols[0].count(), recvs[0].Stats())
	}
	st, peer := recvs[0].Stats(), recvs[1].Stats()
	if st.Repaired != 11 || st.Unrecovered != 0 || peer.PeerRepair == nil || peer.PeerRepair.Frames != 11 {
		t.Fatalf("repaired %d, unrecovered %d; the peer answered %+v", st.Repaired, st.Unrecovered, peer.PeerRepair)
	}
}
