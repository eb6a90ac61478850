package e2e

import (
	"net"
	"testing"
	"time"

	"driftgate/gateway"
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
			frame := gateway.NewCodec(nil).AppendFrame(nil, gateway.Header{Epoch: st.Epoch + 1_000_000, Seq: 1}, []byte("999999"))
			if err := c.lab.Host("rogue").Do(func() error {
				conn, err := net.Dial("udp4", "239.255.0.1:5001")
				if err != nil {
					return err
				}
				defer conn.Close()
				_, err = conn.Write(frame)
				return err
			}); err != nil {
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
