package gateway

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"driftgate/internal/testkit"
	"driftgate/internal/udpbatch"
)

// freePort returns a UDP port that was free a moment ago on addr.
func freePort(t *testing.T, addr string) uint16 {
	t.Helper()
	c, err := net.ListenPacket("udp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// collector is a Deliverer that records what it was given.
type collector struct {
	mu     sync.Mutex
	frames []Frame
	raws   [][]byte
}

func (c *collector) Deliver(f *Frame, raw []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := *f
	cp.Payload = bytes.Clone(f.Payload)
	c.frames = append(c.frames, cp)
	c.raws = append(c.raws, bytes.Clone(raw))
	return nil
}
func (c *collector) Flush() error { return nil }
func (c *collector) Close() error { return nil }
func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.frames)
}

// startRelayReceiver runs a relay on loop:port forwarding by unicast to a
// receiver on loop:rport, and returns them with the relay's ingress address.
func startRelayReceiver(t *testing.T, loop string, rkey, key []byte, allow Allowlist) (*Relay, *Receiver, *collector, netip.AddrPort) {
	t.Helper()
	return startTee(t, loop, rkey, key, allow, nil)
}

// startTee is startRelayReceiver with local, if not nil, as the relay's
// receiver in process (SetLocal), run too.
func startTee(t *testing.T, loop string, rkey, key []byte, allow Allowlist, local *Receiver) (*Relay, *Receiver, *collector, netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in := netip.AddrPortFrom(netip.MustParseAddr(loop), freePort(t, loop))
	out := netip.AddrPortFrom(netip.MustParseAddr(loop), freePort(t, loop))
	relay, err := NewRelay(RelayConfig{Listen: []netip.AddrPort{in}, Unicast: []netip.AddrPort{out}, Key: rkey, Allow: allow, Epoch: 7}, nil)
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{}
	recv, err := NewReceiver(ReceiverConfig{Listen: out, Key: key, Deliver: col}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := recv.Bind(ctx); err != nil {
		t.Fatal(err)
	}
	runs := []interface{ Run(context.Context) error }{relay, recv}
	if local != nil {
		relay.SetLocal(local)
		if err := local.Bind(ctx); err != nil {
			t.Fatal(err)
		}
		runs = append(runs, local)
	}
	errs := make(chan error, len(runs))
	for _, r := range runs {
		go func() { errs <- r.Run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for range runs {
			if err := <-errs; err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		}
	})
	if err := relay.Bind(ctx); err != nil {
		t.Fatal(err)
	}
	return relay, recv, col, in
}

func TestLoopbackRelayReceiver(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, 32)
	tests := []struct {
		name string
		loop string
		key  []byte
	}{
		{"ipv4", "127.0.0.1", nil},
		{"ipv4 auth", "127.0.0.1", key},
		{"ipv6", "::1", nil},
		{"ipv6 auth", "::1", key},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			relay, recv, col, in := startRelayReceiver(t, tt.loop, tt.key, tt.key, nil)
			src, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(in))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			const n = 200
			for i := range n {
				if _, err := fmt.Fprintf(src, "msg-%03d", i); err != nil {
					t.Fatal(err)
				}
			}
			testkit.WaitFor(t, "frames delivered", 5*time.Second, func() bool { return col.count() == n })
			srcAP := src.LocalAddr().(*net.UDPAddr).AddrPort()
			for i, f := range col.frames {
				want := Header{IngressPort: in.Port(), Epoch: 7, Seq: uint64(i + 1), Source: netip.AddrPortFrom(srcAP.Addr().Unmap(), srcAP.Port())}
				if tt.key != nil {
					want.Flags = FlagAuth
				}
				got := f.Header
				if got.Timestamp < time.Now().Add(-time.Minute).UnixNano() || got.Timestamp > time.Now().UnixNano() {
					t.Fatalf("frame %d timestamp %d not recent", i, got.Timestamp)
				}
				got.Timestamp = 0
				if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
					t.Fatalf("frame %d header (-want +got):\n%s", i, diff)
				}
				if string(f.Payload) != fmt.Sprintf("msg-%03d", i) {
					t.Fatalf("frame %d payload %q", i, f.Payload)
				}
			}
			rs := relay.Stats()[0]
			if rs.Received != n || rs.Forwarded != n || rs.Bytes != n*7 {
				t.Fatalf("relay stats %+v", rs)
			}
			st := recv.Stats()
			if st.Delivered != n || st.Unrecovered != 0 || st.Missing != 0 || st.Duplicates != 0 || st.Epoch != 7 {
				t.Fatalf("receiver stats %+v", st)
			}
			// The epoch changes at run time and the sequence restarts.
			relay.SetEpoch(8)
			fmt.Fprint(src, "after")
			testkit.WaitFor(t, "frame of epoch 8", 5*time.Second, func() bool { return col.count() == n+1 })
			if f := col.frames[n]; f.Epoch != 8 || f.Seq != 1 {
				t.Fatalf("after SetEpoch(8): epoch %d seq %d, want 8 1", f.Epoch, f.Seq)
			}
		})
	}
}

func TestLoopbackRejects(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, 32)
	other := bytes.Repeat([]byte{0x43}, 32)
	// Relay signs with a different key: the receiver rejects every frame.
	relay, recv, col, in := startRelayReceiver(t, "127.0.0.1", other, key, nil)
	src, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(in))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for range 10 {
		src.Write([]byte("forged"))
	}
	testkit.WaitFor(t, "rejections", 5*time.Second, func() bool { return recv.Stats().Rejected["tag_bad"] == 10 })
	if col.count() != 0 || relay.Stats()[0].Forwarded != 10 {
		t.Fatalf("delivered %d, relay %+v", col.count(), relay.Stats()[0])
	}
}

func TestLoopbackForeignAndTruncated(t *testing.T) {
	// Only 198.18.0.0/15 may send: loopback senders are dropped.
	_, _, col, in := startRelayReceiver(t, "127.0.0.1", nil, nil, Allowlist{netip.MustParsePrefix("198.18.0.0/15")})
	relay2, recv2, col2, in2 := startRelayReceiver(t, "127.0.0.1", nil, nil, nil)
	src, _ := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(in))
	defer src.Close()
	for range 5 {
		src.Write([]byte("not allowed"))
	}
	// Truncated: a datagram larger than the relay's buffer is dropped, not cut.
	big := make([]byte, MaxRelayPayload+1)
	src2, _ := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(in2))
	defer src2.Close()
	if _, err := src2.Write(big); err != nil {
		t.Fatal(err)
	}
	src2.Write([]byte("ok"))
	// Foreign datagrams sent straight at the receiver are rejected.
	rx, _ := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(recv2.cfg.Listen))
	defer rx.Close()
	rx.Write([]byte("GET / HTTP/1.0\r\n\r\n not a frame at all, but long enough to be a header"))
	rx.Write([]byte("tiny"))
	testkit.WaitFor(t, "relay2 drops", 5*time.Second, func() bool { return relay2.Stats()[0].Dropped["truncated"] == 1 && relay2.Stats()[0].Forwarded == 1 })
	testkit.WaitFor(t, "receiver rejects", 5*time.Second, func() bool {
		st := recv2.Stats()
		return st.Rejected["bad_magic"] == 1 && st.Rejected["short"] == 1 && st.Delivered == 1
	})
	if col2.count() != 1 || string(col2.frames[0].Payload) != "ok" {
		t.Fatalf("receiver2 got %d frames", col2.count())
	}
	time.Sleep(50 * time.Millisecond)
	if col.count() != 0 {
		t.Fatalf("allowlist: %d frames delivered, want 0", col.count())
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	hex64 := "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	tests := []struct {
		name, body string
		mode       os.FileMode
		wantErr    string
	}{
		{"ok", "  " + hex64 + "\n", 0o600, ""},
		{"group readable", hex64, 0o640, "must not be readable by group or others"},
		{"world readable", hex64, 0o604, "mode 0604"},
		{"short", hex64[:62], 0o600, "want at least 32"},
		{"not hex", "zz" + hex64, 0o600, "not hex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := LoadKey(write(tt.name, tt.body, tt.mode))
			if tt.wantErr == "" {
				if err != nil || len(key) != 32 {
					t.Fatalf("LoadKey = %x, %v", key, err)
				}
				return
			}
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.wantErr)) {
				t.Fatalf("LoadKey error %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
	if _, err := LoadKey(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file: no error")
	}
}

// TestSetUnicast: destinations added and removed at run time.
func TestSetUnicast(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "127.0.0.1"))
	relay, err := NewRelay(RelayConfig{Listen: []netip.AddrPort{in}, DynamicUnicast: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var cols []*collector
	var outs []netip.AddrPort
	for range 2 {
		out := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "127.0.0.1"))
		col := &collector{}
		recv, err := NewReceiver(ReceiverConfig{Listen: out, Deliver: col}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := recv.Bind(ctx); err != nil {
			t.Fatal(err)
		}
		go recv.Run(ctx)
		cols, outs = append(cols, col), append(outs, out)
	}
	if err := relay.Bind(ctx); err != nil {
		t.Fatal(err)
	}
	go relay.Run(ctx)
	src, _ := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(in))
	defer src.Close()
	send := func(msg string) {
		before := relay.Stats()[0].Received
		src.Write([]byte(msg))
		testkit.WaitFor(t, "relay to read", 5*time.Second, func() bool { return relay.Stats()[0].Received > before })
	}
	send("nobody") // no destination yet
	if err := relay.SetUnicast(outs); err != nil {
		t.Fatal(err)
	}
	// Both get it and the frame before it: seq 1, relayed to nobody, is the
	// head of the feed, which a receiver asks for when its first frame is 2.
	send("both")
	testkit.WaitFor(t, "both receivers", 5*time.Second, func() bool { return cols[0].count() == 2 && cols[1].count() == 2 })
	relay.SetUnicast(outs[1:])
	send("second only")
	testkit.WaitFor(t, "the second receiver", 5*time.Second, func() bool { return cols[1].count() == 3 })
	time.Sleep(50 * time.Millisecond)
	if cols[0].count() != 2 {
		t.Fatalf("removed destination still got frames: %d", cols[0].count())
	}
}

// TestLoopbackBadInputUnderLoad: while a keyed relay forwards a sequenced
// feed to a receiver, three other senders load it with bad input: oversized
// datagrams and datagrams from a sender outside the allowlist at the
// relay, and junk at the receiver (random bytes, frames broken in each
// checked field, frames signed with another key, up to 65507 bytes). Every
// bad datagram is counted under its reason; none is forwarded or
// delivered; every good datagram is delivered exactly once.
func TestLoopbackBadInputUnderLoad(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, 32)
	relay, recv, col, in := startRelayReceiver(t, "127.0.0.1", key, key, Allowlist{netip.MustParsePrefix("127.0.0.1/32")})
	dial := func(from string, to netip.AddrPort) *net.UDPConn {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(from)}, net.UDPAddrFromAddrPort(to))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	good, big, foreign, junk := dial("127.0.0.1", in), dial("127.0.0.1", in), dial("127.0.0.2", in), dial("127.0.0.1", recv.cfg.Listen)

	// The junk: one of each kind per round, each with a payload that says
	// "junk" in case it were ever delivered.
	other := NewCodec(bytes.Repeat([]byte{0x43}, 32))
	plain := NewCodec(nil)
	hdr := Header{Epoch: 7, Seq: 1, Source: netip.MustParseAddrPort("198.18.0.9:9")}
	signedByOther := other.AppendFrame(nil, hdr, []byte("junk"))
	unsigned := plain.AppendFrame(nil, hdr, []byte("junk"))
	mutate := func(b []byte, f func([]byte)) []byte { b = bytes.Clone(b); f(b); return b }
	kinds := []struct {
		reason string
		b      []byte
	}{
		{"short", []byte("junk")},
		{"bad_magic", append([]byte("XX"), signedByOther[2:]...)},
		{"bad_version", mutate(signedByOther, func(b []byte) { b[2] = 2 })},
		{"unknown_flags", mutate(signedByOther, func(b []byte) { b[3] |= 0x80 })},
		{"bad_header_length", mutate(signedByOther, func(b []byte) { b[4], b[5] = 0, 51 })},
		{"length_mismatch", append(bytes.Clone(signedByOther), 'x')},
		{"tag_missing", unsigned},
		{"tag_bad", signedByOther},
		{"bad_magic", bytes.Repeat([]byte("junk"), 65507/4)},
	}
	const rounds, goodN = 500, 5000
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	send := func(c *net.UDPConn, n int, payload func(i int) []byte) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if _, err := c.Write(payload(i)); err != nil {
					errs <- err
					return
				}
				if i%50 == 49 {
					time.Sleep(time.Millisecond) // paced so no socket buffer overflows: counts are exact
				}
			}
		}()
	}
	start := time.Now()
	send(good, goodN, func(i int) []byte { return fmt.Appendf(nil, "good-%d", i) })
	send(big, rounds, func(int) []byte { return make([]byte, MaxRelayPayload+1) })
	send(foreign, rounds, func(int) []byte { return []byte("junk from outside the allowlist") })
	send(junk, rounds*len(kinds), func(i int) []byte { return kinds[i%len(kinds)].b })
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := map[string]uint64{}
	for _, k := range kinds {
		want[k.reason] += rounds
	}
	testkit.WaitFor(t, "every datagram to be counted", 5*time.Second, func() bool {
		rs := relay.Stats()[0]
		return rs.Forwarded == goodN && rs.Dropped["truncated"] == rounds && rs.Dropped["not_allowed"] == rounds &&
			recv.Stats().Delivered == goodN && cmp.Diff(want, nonZero(recv.Stats().Rejected)) == ""
	})
	if diff := cmp.Diff(want, nonZero(recv.Stats().Rejected)); diff != "" {
		t.Fatalf("receiver rejections (-want +got):\n%s", diff)
	}
	seen := map[string]bool{}
	col.mu.Lock()
	for _, f := range col.frames {
		p := string(f.Payload)
		if !bytes.HasPrefix(f.Payload, []byte("good-")) || seen[p] {
			t.Errorf("delivered %q (duplicate: %v)", p, seen[p])
		}
		seen[p] = true
	}
	col.mu.Unlock()
	t.Logf("%d good datagrams delivered once each among %d bad ones in %v; relay %+v; receiver rejected %v",
		goodN, rounds*(2+len(kinds)), time.Since(start).Round(time.Millisecond), relay.Stats()[0].Dropped, recv.Stats().Rejected)
}

// nonZero drops zero counts, so a map compares with cmp.Diff.
func nonZero(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// TestLocalReceiver: a relay with a receiver in process (SetLocal) hands it
// every frame by a call, as it sends the same frames to a remote receiver:
// both deliver the whole feed once, in order, and the local one read
// nothing from a socket. The checks still apply: with ConfirmEpochs, the
// local receiver holds the relay's frames until their epoch is confirmed,
// and a wrong key rejects them.
func TestLocalReceiver(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, 32)
	tests := []struct {
		name     string
		localKey []byte
		confirm  bool
		want     int // frames the local receiver delivers
	}{
		{"delivers", key, false, 200},
		{"held until confirmed", key, true, 200},
		{"wrong key rejected", bytes.Repeat([]byte{0x43}, 32), false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			col := &collector{}
			rcv, err := NewReceiver(ReceiverConfig{Listen: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "127.0.0.1")),
				Key: tt.localKey, ConfirmEpochs: tt.confirm, Deliver: col}, nil)
			if err != nil {
				t.Fatal(err)
			}
			relay, _, remote, in := startTee(t, "127.0.0.1", key, key, nil, rcv)
			src, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(in))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			const n = 200
			for i := range n {
				fmt.Fprintf(src, "msg-%03d", i)
				if i%50 == 49 {
					testkit.WaitFor(t, "the relay to forward", 5*time.Second, func() bool { return relay.Stats()[0].Forwarded == uint64(i+1) })
				}
			}
			testkit.WaitFor(t, "the remote receiver", 5*time.Second, func() bool { return remote.count() == n })
			testkit.WaitFor(t, "the local receiver to take every frame", 5*time.Second, func() bool { return rcv.Stats().Local == n })
			if tt.confirm {
				if got := col.count(); got != 0 {
					t.Fatalf("%d frames delivered before their epoch was confirmed", got)
				}
				rcv.ConfirmEpoch(7)
			}
			testkit.WaitFor(t, "local deliveries", 5*time.Second, func() bool { return col.count() == tt.want })
			st := rcv.Stats()
			if st.Received != 0 {
				t.Errorf("the local receiver read %d datagrams from its socket, want 0", st.Received)
			}
			if tt.want == 0 && st.Rejected["tag_bad"] != n {
				t.Errorf("rejected %v, want %d tag_bad", st.Rejected, n)
			}
			col.mu.Lock()
			defer col.mu.Unlock()
			for i, f := range col.frames {
				if f.Seq != uint64(i+1) || f.Epoch != 7 || string(f.Payload) != fmt.Sprintf("msg-%03d", i) {
					t.Fatalf("local frame %d: epoch %d seq %d %q", i, f.Epoch, f.Seq, f.Payload)
				}
			}
		})
	}
}

// TestRelayGRO: a sender's GSO sends reach the relay coalesced (UDP_GRO);
// the relay frames each datagram on its own, in order, an empty one too,
// and drops one too large to frame, counted, rather than cut it.
func TestRelayGRO(t *testing.T) {
	relay, _, col, in := startRelayReceiver(t, "127.0.0.1", nil, nil, nil)
	if !relay.listeners[0].gro {
		t.Skip("kernel refuses UDP_GRO")
	}
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(in))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w, err := udpbatch.New(conn, 64, true)
	if err != nil {
		t.Fatal(err)
	}
	var sent [][]byte
	for i := range 150 { // more than one batch of frames
		sent = append(sent, bytes.Repeat([]byte{byte(i)}, 200))
	}
	if failed, err := w.WriteBatch(sent, netip.AddrPort{}); failed != 0 {
		t.Fatal(err)
	}
	if failed, err := w.WriteBatch([][]byte{{}, make([]byte, MaxRelayPayload+1), []byte("last")}, netip.AddrPort{}); failed != 0 {
		t.Fatal(err)
	}
	sent = append(sent, []byte{}, []byte("last"))
	testkit.WaitFor(t, "every datagram relayed", 5*time.Second, func() bool { return col.count() == len(sent) })
	col.mu.Lock()
	defer col.mu.Unlock()
	for i, f := range col.frames {
		if f.Seq != uint64(i+1) || !bytes.Equal(f.Payload, sent[i]) {
			t.Fatalf("frame %d: seq %d, %d bytes; want seq %d, %d bytes", i, f.Seq, len(f.Payload), i+1, len(sent[i]))
		}
	}
	if st := relay.Stats()[0]; st.Received != uint64(len(sent)+1) || st.Dropped["truncated"] != 1 {
		t.Fatalf("relay stats %+v: want %d received, 1 truncated", st, len(sent)+1)
	}
}

// TestRelayReloadDestinations: a reload's allowlist and unicast
// destinations take effect from the next batch: a sender refused, then a
// second receiver added, both without a restart.
func TestRelayReloadDestinations(t *testing.T) {
	relay, _, col, in := startRelayReceiver(t, "127.0.0.1", nil, nil, nil)
	src, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(in))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	send := func(msg string) {
		before := relay.Stats()[0].Received
		src.Write([]byte(msg))
		testkit.WaitFor(t, "the relay to read", 5*time.Second, func() bool { return relay.Stats()[0].Received > before })
	}
	send("allowed")
	testkit.WaitFor(t, "the first frame", 5*time.Second, func() bool { return col.count() == 1 })
	relay.SetAllow(Allowlist{netip.MustParsePrefix("198.18.0.0/15")}) // loopback no longer
	send("refused")
	if st := relay.Stats()[0]; st.Dropped["not_allowed"] != 1 {
		t.Fatalf("after SetAllow: %+v, want one not_allowed", st)
	}
	relay.SetAllow(nil)
	second := &collector{}
	out2 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "127.0.0.1"))
	rcv2, err := NewReceiver(ReceiverConfig{Listen: out2, Deliver: second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := rcv2.Bind(ctx); err != nil {
		t.Fatal(err)
	}
	go rcv2.Run(ctx)
	if err := relay.SetStaticUnicast([]netip.AddrPort{relay.cfg.Unicast[0], out2}); err != nil {
		t.Fatal(err)
	}
	if err := relay.SetStaticUnicast([]netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:0")}); err == nil {
		t.Fatal("SetStaticUnicast took a destination with port 0")
	}
	send("both")
	// The new receiver gets it, and the feed's first frame too: its first
	// was the second of the feed, so it asks for the head (repaired).
	testkit.WaitFor(t, "both receivers", 5*time.Second, func() bool { return col.count() == 2 && second.count() == 2 })
}
