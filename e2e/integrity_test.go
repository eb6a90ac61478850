package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"driftgate/gateway"
	"driftgate/internal/netlab"
)

// TestAgentStrayEpoch: while the feed runs, a third host on the LAN sends
// ONE frame with the primary's epoch + 10⁶ to the group. Before receivers
// followed Consul, that silenced both nodes for good (every later frame of
// the real primary was "stale"). Now: with the sources at their default,
// the stray frame is dropped as from a foreign host; with the whole LAN
// allowed as a source, it waits for a confirmation Consul never gives and
// is dropped as unconfirmed. Either way every node delivers every
// datagram of the feed, once.
func TestAgentStrayEpoch(t *testing.T) {
	for _, tt := range []struct {
		name, receive, counter string
	}{
		{"from an unregistered host", "", "foreign"},
		{"from an allowed source, unconfirmed", "  sources: [198.18.0.0/24]\n", "unconfirmed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := startCluster(t, clusterSpec{extra: []string{"rogue"}, receive: tt.receive})
			c.waitUntil("a primary", 30*time.Second, func() bool { return c.primary() != "" })
			p := c.primary()
			st, err := c.nodes[p].state(t)
			if err != nil {
				t.Fatal(err)
			}
			c.startFeed(200)
			c.waitUntil("the feed at every node", 10*time.Second, func() bool {
				return c.nodes["n1"].sink.high() > 100 && c.nodes["n2"].sink.high() > 100
			})
			if err := sendStrayEpoch(c.lab.Host("rogue"), st.Epoch, "999999"); err != nil {
				t.Fatal(err)
			}
			// The stray frame is seen and dropped at every node...
			c.waitUntil("the stray frame dropped at every node", 5*time.Second, func() bool {
				for _, n := range c.nodes {
					s, err := n.state(t)
					if err != nil || s.Receiver == nil {
						return false
					}
					if got := map[string]uint64{"foreign": s.Receiver.ForeignSource, "unconfirmed": s.Receiver.Unconfirmed}[tt.counter]; got != 1 {
						return false
					}
				}
				return true
			})
			// ...and the feed goes on at every node, whole.
			at := c.nodes[p].sink.high()
			c.waitUntil("the feed to go on at every node", 10*time.Second, func() bool {
				return c.nodes["n1"].sink.high() > at+400 && c.nodes["n2"].sink.high() > at+400
			})
			c.steady(at + 400)
			for name, n := range c.nodes {
				s, _ := n.state(t)
				if s.Receiver.StaleEpoch != 0 || s.Receiver.Epoch != st.Epoch {
					t.Fatalf("%s: stale %d, epoch %d (the primary's is %d)", name, s.Receiver.StaleEpoch, s.Receiver.Epoch, st.Epoch)
				}
			}
		})
	}
}

// sendStrayEpoch sends, from h, one unsigned frame with epoch + 10⁶ to the
// agents' group.
func sendStrayEpoch(h *netlab.Host, epoch uint64, payload string) error {
	frame := gateway.NewCodec(nil).AppendFrame(nil, gateway.Header{Epoch: epoch + 1_000_000, Seq: 1}, []byte(payload))
	return h.Do(func() error {
		conn, err := net.Dial("udp4", "239.255.0.1:5001")
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write(frame)
		return err
	})
}

// TestAgentHostileLAN: with a key, and the whole LAN allowed as a source
// (so the key is all that stands between a host and the feed), a host on
// the LAN sends, while the 200/s feed runs: frames without a tag, frames
// tagged with another key, a frame tagged with the real key but an epoch
// Consul never showed, a replay of 1000 captured frames, and a flood of
// 100 000 junk datagrams paced at up to 50k/s (the receivers read 10k/s
// of it, the source rate of a host only a prefix admits). Every node delivers every
// datagram of the feed exactly once, and counts each bad one under its
// reason.
func TestAgentHostileLAN(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	keyPath := filepath.Join(dir, "frame.key")
	if err := gateway.GenerateKey(keyPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(keyPath, 65534, 65534); err != nil { // the agents run as nobody
		t.Fatal(err)
	}
	key, _, err := gateway.LoadKeys(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, clusterSpec{extra: []string{"rogue"}, keyFile: keyPath, receive: "  sources: [198.18.0.0/24]\n"})
	c.waitUntil("a primary", 30*time.Second, func() bool { return c.primary() != "" })
	st, err := c.nodes[c.primary()].state(t)
	if err != nil {
		t.Fatal(err)
	}
	c.startFeed(200)
	c.waitUntil("the feed at every node", 10*time.Second, func() bool {
		return c.nodes["n1"].sink.high() > 100 && c.nodes["n2"].sink.high() > 100
	})
	rogue := c.lab.Host("rogue")
	group := &net.UDPAddr{IP: net.IPv4(239, 255, 0, 1), Port: 5001}
	// send sends frames at rate a second (0: at once), paced by the clock
	// so that sleeping late does not slow it; it returns how long it took.
	send := func(what string, frames [][]byte, rate int) time.Duration {
		t.Helper()
		start := time.Now()
		if err := rogue.Do(func() error {
			conn, err := net.DialUDP("udp4", nil, group)
			if err != nil {
				return err
			}
			defer conn.Close()
			for i, f := range frames {
				conn.Write(f) // a full buffer drops some: that is the flood
				if rate > 0 && i%100 == 99 {
					if d := time.Until(start.Add(time.Duration(i+1) * time.Second / time.Duration(rate))); d > 0 {
						time.Sleep(d)
					}
				}
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return time.Since(start)
	}
	h := gateway.Header{Epoch: st.Epoch, Seq: 1 << 40}
	send("unsigned", [][]byte{gateway.NewCodec(nil).AppendFrame(nil, h, []byte("-1"))}, 0)
	send("another key", [][]byte{gateway.NewCodec(bytes.Repeat([]byte{9}, 32)).AppendFrame(nil, h, []byte("-2"))}, 0)
	stray := h
	stray.Epoch += 1_000_000
	send("the real key, an unconfirmed epoch", [][]byte{gateway.NewCodec(key).AppendFrame(nil, stray, []byte("-3"))}, 0)

	// Capture 1000 frames of the feed, then send them all again.
	var captured [][]byte
	if err := rogue.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		conn, err := net.ListenMulticastUDP("udp4", ifi, group)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		buf := make([]byte, 2048)
		for len(captured) < 1000 {
			n, err := conn.Read(buf)
			if err != nil {
				return fmt.Errorf("after %d frames: %w", len(captured), err)
			}
			if f, err := gateway.NewCodec(key).Decode(buf[:n]); err == nil && f.Epoch == st.Epoch {
				captured = append(captured, bytes.Clone(buf[:n]))
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("capturing: %v", err)
	}
	send("a replay", captured, 10_000)

	junk := make([][]byte, 100_000)
	for i := range junk {
		junk[i] = []byte(fmt.Sprintf("%-64d", i)) // frame-sized, but no magic
	}
	took := send("a flood", junk, 50_000)
	t.Logf("the flood: %d datagrams in %v", len(junk), took.Round(time.Millisecond))

	at := c.nodes[c.primary()].sink.high()
	c.waitUntil("the feed to go on at every node", 10*time.Second, func() bool {
		return c.nodes["n1"].sink.high() > at+200 && c.nodes["n2"].sink.high() > at+200
	})
	c.steady(at + 200)
	for name, n := range c.nodes {
		s, err := n.state(t)
		if err != nil {
			t.Fatal(err)
		}
		r := s.Receiver
		got := map[string]uint64{"tag_missing": r.Rejected["tag_missing"], "tag_bad": r.Rejected["tag_bad"],
			"unconfirmed_epoch": r.Unconfirmed, "duplicates": r.Duplicates, "bad_magic": r.Rejected["bad_magic"],
			"source_rate_limited": r.SourceRateLimited}
		t.Logf("%s: %v (epoch %d, stale %d)", name, got, r.Epoch, r.StaleEpoch)
		if got["tag_missing"] < 1 || got["tag_bad"] < 1 || got["unconfirmed_epoch"] != 1 || got["duplicates"] < 900 || got["bad_magic"] < 10_000 ||
			// At most a second's burst and 10k/s while it lasted (and a
			// second of slack for the receiver's own pace) were read.
			float64(got["bad_magic"]) > 10_000*(took.Seconds()+2) || r.Epoch != st.Epoch {
			t.Errorf("%s counted %v, want a tag_missing, a tag_bad, one unconfirmed, ≥ 900 duplicates of the replay, and the flood as bad_magic or, beyond 10k/s, source_rate_limited", name, got)
		}
	}
}
