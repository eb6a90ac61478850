package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/net/ipv4"
	"golang.org/x/sync/errgroup"

	"driftgate/gateway"
	"driftgate/internal/agent"
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
			p, st := c.feeding()
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

// feeding waits for a primary, starts the 200/s feed and waits until every
// node delivers it; it returns the primary and its state.
func (c *agentCluster) feeding() (string, agent.State) {
	c.t.Helper()
	c.waitUntil("a primary", 30*time.Second, func() bool { return c.primary() != "" })
	p := c.primary()
	st, err := c.nodes[p].state(c.t)
	if err != nil {
		c.t.Fatal(err)
	}
	c.startFeed(200)
	c.waitUntil("the feed at every node", 10*time.Second, func() bool {
		return c.nodes["n1"].sink.high() > 100 && c.nodes["n2"].sink.high() > 100
	})
	return p, st
}

// agentKeyFile writes a new frame key the agents (running as nobody) can
// read, and returns its path.
func agentKeyFile(t *testing.T) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	keyPath := filepath.Join(dir, "frame.key")
	if err := gateway.GenerateKey(keyPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(keyPath, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	return keyPath
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
	keyPath := agentKeyFile(t)
	key, _, err := gateway.LoadKeys(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, clusterSpec{extra: []string{"rogue"}, keyFile: keyPath, receive: "  sources: [198.18.0.0/24]\n"})
	_, st := c.feeding()
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

// TestAgentConsulRebuilt: the Consul cluster is rebuilt from scratch under
// running agents — every server killed, its data directory deleted, and
// started again on the same address; the client agents joined to it again,
// as an operator would. Raft indexes start over, so the new primary's
// epoch is lower than the one every receiver follows. Each receiver
// follows Consul (counting an epoch regression) and the feed resumes,
// whole, at every node.
func TestAgentConsulRebuilt(t *testing.T) {
	c := startCluster(t, clusterSpec{})
	c.waitUntil("a primary", 30*time.Second, func() bool { return c.primary() != "" })
	// Raise the old cluster's index far above what the new one reaches in
	// this test, then start a term there.
	var g errgroup.Group
	g.SetLimit(16)
	for i := range 1500 {
		g.Go(func() error {
			_, err := c.client.KV().Put(&api.KVPair{Key: "scratch/" + strconv.Itoa(i%16), Value: []byte{byte(i)}}, nil)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	old := c.primary()
	if out, err := c.nodes[old].host.Command(context.Background(), driftgate, "step-down", "--config", c.nodes[old].cfg).CombinedOutput(); err != nil {
		t.Fatalf("step-down: %v: %s", err, out)
	}
	// primaryEpoch waits until a primary's epoch satisfies ok; it returns it.
	primaryEpoch := func(what string, d time.Duration, ok func(uint64) bool) uint64 {
		var epoch uint64
		c.waitUntil(what, d, func() bool {
			p := c.primary()
			if p == "" {
				return false
			}
			st, err := c.nodes[p].state(t)
			epoch = st.Epoch
			return err == nil && ok(st.Epoch)
		})
		return epoch
	}
	oldEpoch := primaryEpoch("a primary with the raised epoch", 30*time.Second, func(e uint64) bool { return e > 1500 })
	c.startFeed(200)
	c.waitUntil("the feed at every node", 10*time.Second, func() bool {
		return c.nodes["n1"].sink.high() > 100 && c.nodes["n2"].sink.high() > 100
	})

	rebuilt := time.Now()
	for _, s := range c.servers {
		s.Rebuild()
	}
	for _, s := range c.servers {
		s.WaitReady()
	}
	for name, a := range c.consul {
		if err := a.Client().Agent().Join(c.lab.Host("cs1").Addr4.Addr().String(), false); err != nil {
			t.Fatalf("%s: joining the rebuilt cluster: %v", name, err)
		}
	}
	newEpoch := primaryEpoch("a primary in the rebuilt cluster", 60*time.Second, func(e uint64) bool { return e < oldEpoch })
	t.Logf("a primary again %v after the rebuild began (epoch %d, was %d)", time.Since(rebuilt).Round(time.Millisecond), newEpoch, oldEpoch)
	at := max(c.nodes["n1"].sink.high(), c.nodes["n2"].sink.high())
	c.waitUntil("the feed to resume at every node", 20*time.Second, func() bool {
		return c.nodes["n1"].sink.high() > at+400 && c.nodes["n2"].sink.high() > at+400
	})
	for name, n := range c.nodes {
		if miss, dup := n.sink.window(at+1, at+400); miss != 0 || dup != 0 {
			t.Errorf("%s: after the rebuild it missed %d and duplicated %d of datagrams %d..%d", name, miss, dup, at+1, at+400)
		}
		s, err := n.state(t)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.Receiver; r.Epoch != newEpoch || r.EpochRegressions < 1 {
			t.Errorf("%s: receiver follows epoch %d with %d regressions; want the rebuilt cluster's %d, and the regression counted", name, r.Epoch, r.EpochRegressions, newEpoch)
		}
	}
}

// TestAgentSpoofedSource: a host on the LAN forges the primary's source
// address (a raw socket), so the receivers' source check, at its default
// (the registered nodes only), lets its frames through: an address proves
// nothing on a LAN. With a key they are refused — unsigned as tag_missing,
// signed with another key as tag_bad — and the feed goes on, whole, at
// every node. (The primary's own kernel drops a frame from its own address
// as a martian; the standby's receiver is the one the forgery reaches.)
func TestAgentSpoofedSource(t *testing.T) {
	c := startCluster(t, clusterSpec{extra: []string{"rogue"}, keyFile: agentKeyFile(t)})
	p, st := c.feeding()
	h := gateway.Header{Epoch: st.Epoch, Seq: 1 << 40}
	frames := [][]byte{
		gateway.NewCodec(nil).AppendFrame(nil, h, []byte("999999")),
		gateway.NewCodec(bytes.Repeat([]byte{9}, 32)).AppendFrame(nil, h, []byte("999998")),
	}
	const each = 10
	if err := c.lab.Host("rogue").Do(func() error {
		return sendSpoofed(c.nodes[p].host.Addr4.Addr().AsSlice(), frames, each)
	}); err != nil {
		t.Fatalf("sending forged frames: %v", err)
	}
	standby := map[string]string{"n1": "n2", "n2": "n1"}[p]
	c.waitUntil("the forged frames refused at the standby", 5*time.Second, func() bool {
		s, err := c.nodes[standby].state(t)
		return err == nil && s.Receiver != nil && s.Receiver.Rejected["tag_missing"] >= each && s.Receiver.Rejected["tag_bad"] >= each
	})
	at := c.nodes[p].sink.high()
	c.waitUntil("the feed to go on at every node", 10*time.Second, func() bool {
		return c.nodes["n1"].sink.high() > at+200 && c.nodes["n2"].sink.high() > at+200
	})
	c.steady(at + 200) // a forged frame delivered would show as datagram 999999
	s, _ := c.nodes[standby].state(t)
	if r := s.Receiver; r.ForeignSource != 0 || r.Epoch != st.Epoch {
		t.Errorf("%s: foreign_source %d (the forgery must pass the source check: only the key refuses it), epoch %d (want %d)", standby, r.ForeignSource, r.Epoch, st.Epoch)
	}
}

// sendSpoofed sends each frame n times to the agents' group from a raw
// socket, with src as the IPv4 source address.
func sendSpoofed(src net.IP, frames [][]byte, n int) error {
	pc, err := net.ListenPacket("ip4:udp", "0.0.0.0")
	if err != nil {
		return err
	}
	defer pc.Close()
	raw, err := ipv4.NewRawConn(pc)
	if err != nil {
		return err
	}
	ifi, err := net.InterfaceByName("eth0")
	if err != nil {
		return err
	}
	group := net.IPv4(239, 255, 0, 1).To4()
	for range n {
		for _, f := range frames {
			udp := make([]byte, 8+len(f))
			binary.BigEndian.PutUint16(udp[0:], 40000)
			binary.BigEndian.PutUint16(udp[2:], 5001)
			binary.BigEndian.PutUint16(udp[4:], uint16(len(udp))) // checksum 0: none (IPv4)
			copy(udp[8:], f)
			hdr := &ipv4.Header{Version: ipv4.Version, Len: ipv4.HeaderLen, TotalLen: ipv4.HeaderLen + len(udp),
				TTL: 1, Protocol: 17, Src: src, Dst: group}
			if err := raw.WriteTo(hdr, udp, &ipv4.ControlMessage{IfIndex: ifi.Index}); err != nil {
				return err
			}
		}
	}
	return nil
}
