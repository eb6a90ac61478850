package gateway

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type egressVector struct {
	Name     string `json:"name"`
	Datagram string `json:"datagram"`
	Dest     string `json:"dest"`
	ID       uint64 `json:"id"`
	HasID    bool   `json:"has_id"`
	Payload  string `json:"payload"`
	Error    bool   `json:"error"`
}

func loadEgressVectors(t *testing.T) []egressVector {
	t.Helper()
	b, err := os.ReadFile("testdata/egress_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []egressVector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatalf("parsing testdata/egress_vectors.json: %v", err)
	}
	return vs
}

func TestEgressHeaderVectors(t *testing.T) {
	for _, v := range loadEgressVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			b := mustHex(t, v.Datagram)
			h, p, err := ParseEgressHeader(b)
			if v.Error {
				if !errors.Is(err, ErrEgressHeader) {
					t.Fatalf("ParseEgressHeader = %+v, %v; want ErrEgressHeader", h, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want EgressHeader
			if v.Dest != "" {
				want.Dest = netip.MustParseAddrPort(v.Dest)
			}
			want.ID, want.HasID = v.ID, v.HasID
			if diff := cmp.Diff(want, h, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("header (-want +got):\n%s", diff)
			}
			if string(p) != v.Payload {
				t.Errorf("payload %q, want %q", p, v.Payload)
			}
			// The encoder makes the same bytes.
			if enc := hex.EncodeToString(append(AppendEgressHeader(nil, h), p...)); enc != v.Datagram {
				t.Errorf("AppendEgressHeader = %s, want %s", enc, v.Datagram)
			}
		})
	}
}

// TestEgressVectorsDocumented keeps docs/frame.md and testdata in step.
func TestEgressVectorsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/frame.md")
	if err != nil {
		t.Fatal(err)
	}
	flat := strings.Join(strings.Fields(string(doc)), "")
	for _, v := range loadEgressVectors(t) {
		if !strings.Contains(flat, v.Datagram) {
			t.Errorf("egress vector %s (%s) is not in docs/frame.md", v.Name, v.Datagram)
		}
	}
}

func FuzzParseEgressHeader(f *testing.F) {
	f.Add(mustHex(f, "4445010104002328c612020a000000000000002a68656c6c6f"))
	f.Add([]byte("DE"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, p, err := ParseEgressHeader(b)
		if err != nil {
			return
		}
		// What parses encodes to the same bytes.
		if got := append(AppendEgressHeader(nil, h), p...); !bytes.Equal(got, b) && !h.Dest.Addr().Is4() {
			// An IPv4-mapped IPv6 destination decodes as IPv4 and
			// encodes shorter: the only allowed difference.
			if !(len(b) > 4 && b[4] == 16) {
				t.Fatalf("round trip %x -> %+v -> %x", b, h, got)
			}
		}
	})
}

func TestSentRecord(t *testing.T) {
	rec := AppendSentRecord(nil, []uint64{1, 1 << 63, 42})
	ids, ok := ParseSentRecord(nil, rec)
	if !ok {
		t.Fatal("ParseSentRecord: not ok")
	}
	if diff := cmp.Diff([]uint64{1, 1 << 63, 42}, ids); diff != "" {
		t.Error(diff)
	}
	for _, bad := range [][]byte{nil, {2}, {RecordEgressSent, 1, 2}} {
		if _, ok := ParseSentRecord(nil, bad); ok {
			t.Errorf("ParseSentRecord(%x) ok", bad)
		}
	}
}

func TestParseEgressAddr(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "127.0.0.1:7100", want: "127.0.0.1:7100"},
		{in: "[::1]:7100", want: "[::1]:7100"},
		{in: "unix:///run/driftgate/egress.sock", want: "unix:///run/driftgate/egress.sock"},
		{in: "198.18.0.1:7100", err: "not a loopback address"},
		{in: "127.0.0.1:0", err: "non-zero port"},
		{in: "unix://relative", err: "absolute"},
		{in: "unix:///" + strings.Repeat("x", 107), err: "at most 107"},
		{in: "localhost:7100", err: "loopback IP:PORT"},
	} {
		a, err := ParseEgressAddr(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseEgressAddr(%q) = %v, %v; want an error with %q", tc.in, a, err, tc.err)
			}
			continue
		}
		if err != nil || a.String() != tc.want {
			t.Errorf("ParseEgressAddr(%q) = %v, %v; want %s", tc.in, a, err, tc.want)
		}
	}
}

func TestEgressConfigValidate(t *testing.T) {
	ok := func() EgressConfig {
		return EgressConfig{Source: netip.MustParseAddrPort("198.18.0.100:6000"), Allow: Allowlist{netip.MustParsePrefix("198.18.2.0/24")},
			Listeners: []EgressListener{{Listen: EgressAddr{UDP: netip.MustParseAddrPort("127.0.0.1:7100")}, Destination: netip.MustParseAddrPort("198.18.2.10:9000")}}}
	}
	for _, tc := range []struct {
		name string
		mod  func(*EgressConfig)
		err  string
	}{
		{"ok", func(*EgressConfig) {}, ""},
		{"no listeners", func(c *EgressConfig) { c.Listeners = nil }, "listen: at least one"},
		{"no source port", func(c *EgressConfig) { c.Source = netip.MustParseAddrPort("198.18.0.100:0") }, "source:"},
		{"no allow", func(c *EgressConfig) { c.Allow = nil }, "allow: at least one"},
		{"allow of the other family", func(c *EgressConfig) { c.Allow = append(c.Allow, netip.MustParsePrefix("2001:db8::/32")) }, "allow[1]"},
		{"destination outside allow", func(c *EgressConfig) { c.Listeners[0].Destination = netip.MustParseAddrPort("198.18.3.1:9000") }, "listen[0].destination: 198.18.3.1:9000 is outside allow"},
		{"no destination, no header", func(c *EgressConfig) { c.Listeners[0].Destination = netip.AddrPort{} }, "listen[0]: set a destination"},
		{"header without destination", func(c *EgressConfig) { c.Listeners[0].Destination, c.Listeners[0].Header = netip.AddrPort{}, true }, ""},
		{"twice", func(c *EgressConfig) { c.Listeners = append(c.Listeners, c.Listeners[0]) }, "listen[1].address: 127.0.0.1:7100 is listed twice"},
		{"window", func(c *EgressConfig) { c.Window = time.Hour }, "duplicate_window: 1h0m0s is out of range"},
		{"rate", func(c *EgressConfig) { c.Rate = -1 }, "rate: -1"},
	} {
		c := ok()
		tc.mod(&c)
		err := c.Validate()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: Validate() = %v, want %q", tc.name, err, tc.err)
		}
	}
}

// egressEvent is one step of a simulated egress: a datagram from the
// application (id, or 0 for none), the feed's record of ids sent, or the
// clock moving.
type egressEvent struct {
	at    time.Duration
	on    bool     // sending (primary) at this step
	send  []uint64 // the application's datagrams, by id (0: no id)
	to    string   // their destination ("" : 198.18.2.10:9000)
	learn []uint64 // ids a primary said it sent
}

func TestEgressStateSimulated(t *testing.T) {
	const window = 2 * time.Second
	for _, tc := range []struct {
		name   string
		window time.Duration
		rate   int
		events []egressEvent
		sent   []uint64 // ids that left, in order
		want   map[string]uint64
		held   int64
		fresh  bool // the node has seen no record yet
	}{{
		name:   "primary sends, standby drops without ids",
		events: []egressEvent{{on: true, send: []uint64{0, 0}}, {on: false, send: []uint64{0}}},
		sent:   []uint64{0, 0},
		want:   map[string]uint64{"sent": 2, "not_primary": 1},
	}, {
		name:   "off: ids are ignored, the standby drops",
		events: []egressEvent{{on: false, send: []uint64{1, 2}}, {on: true, send: []uint64{1, 3}}},
		sent:   []uint64{1, 3},
		want:   map[string]uint64{"sent": 2, "not_primary": 2},
	}, {
		name:   "standby holds until the primary's record, then drops",
		window: window,
		events: []egressEvent{{on: false, send: []uint64{1, 2, 3}}, {learn: []uint64{1, 2}}},
		want:   map[string]uint64{"not_primary": 2},
		held:   1,
	}, {
		name:   "takeover sends what the old primary did not, then skips what it did",
		window: window,
		events: []egressEvent{
			{on: false, send: []uint64{1, 2, 3, 4}},
			{learn: []uint64{1, 2}},
			{on: true, send: []uint64{5}},
			{on: true, send: []uint64{2, 4, 6}}, // a lagging application's copies
		},
		sent: []uint64{3, 4, 5, 6},
		want: map[string]uint64{"not_primary": 2, "sent": 4, "duplicate": 2},
	}, {
		name:   "what is held expires after the window",
		window: window,
		events: []egressEvent{{on: false, send: []uint64{1}}, {at: 3 * time.Second, on: true}},
		want:   map[string]uint64{"expired": 1},
	}, {
		name:   "ids sent are forgotten after the window",
		window: window,
		events: []egressEvent{{on: true, send: []uint64{1}}, {at: 3 * time.Second, on: true, send: []uint64{1}}},
		sent:   []uint64{1, 1},
		want:   map[string]uint64{"sent": 2},
	}, {
		name:   "a standby drops at once what the primary sent already",
		window: window,
		events: []egressEvent{{learn: []uint64{1}}, {on: false, send: []uint64{1}}},
		want:   map[string]uint64{"not_primary": 1},
	}, {
		name:   "outside the allowlist: refused, on any node",
		window: window,
		events: []egressEvent{{on: true, send: []uint64{1}, to: "198.18.3.1:9000"}, {on: false, send: []uint64{2}, to: "198.18.3.1:9000"}},
		want:   map[string]uint64{"not_allowed": 2},
	}, {
		name:   "a standby that has seen no record holds nothing: what it would hold, the primary may have sent",
		window: window,
		fresh:  true,
		events: []egressEvent{{on: false, send: []uint64{1, 2}}, {learn: []uint64{2}}, {on: false, send: []uint64{3}}, {on: true}},
		sent:   []uint64{3},
		want:   map[string]uint64{"not_primary": 2, "sent": 1},
	}, {
		name:   "rate limit per destination",
		rate:   2,
		events: []egressEvent{{on: true, send: []uint64{0, 0, 0}}, {at: time.Second, on: true, send: []uint64{0, 0, 0}}},
		sent:   []uint64{0, 0, 0, 0},
		want:   map[string]uint64{"sent": 4, "rate_limited": 2},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := EgressConfig{Allow: Allowlist{netip.MustParsePrefix("198.18.2.0/24")}, Window: tc.window, Rate: tc.rate, Burst: tc.rate,
				HoldFrames: 100, HoldBytes: 1 << 20}
			st := newEgressState(cfg)
			st.synced = !tc.fresh
			l := &egressListener{cfg: EgressListener{Header: true, Destination: netip.MustParseAddrPort("198.18.2.10:9000")}}
			var sent []uint64
			var o egressOut
			for _, ev := range tc.events {
				now := int64(ev.at)
				st.learn(ev.learn, now)
				st.expire(now)
				o.reset()
				if ev.on && st.flush {
					st.flushHeld(&o, now)
				}
				for _, id := range ev.send {
					h := EgressHeader{ID: id, HasID: id != 0}
					if ev.to != "" {
						h.Dest = netip.MustParseAddrPort(ev.to)
					}
					st.classify(l, append(AppendEgressHeader(nil, h), "m"...), false, ev.on, now, &o)
				}
				for i := range o.bufs {
					sent = append(sent, o.ids[i])
					o.from[i].add(EgressSent, 1) // as write does
				}
				if !ev.on {
					st.flush = true // as SetForwarding(true) will
				}
			}
			if diff := cmp.Diff(tc.sent, sent); diff != "" {
				t.Errorf("sent ids (-want +got):\n%s", diff)
			}
			got := map[string]uint64{}
			for r := range numEgressResults {
				if n := l.c.results[r].Load(); n > 0 {
					got[r.String()] = n
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("results (-want +got):\n%s", diff)
			}
			if h := l.c.held.Load(); h != tc.held {
				t.Errorf("held %d, want %d", h, tc.held)
			}
		})
	}
}

func TestEgressHoldBounds(t *testing.T) {
	st := newEgressState(EgressConfig{Allow: Allowlist{netip.MustParsePrefix("198.18.2.0/24")}, Window: time.Minute, HoldFrames: 3, HoldBytes: 1 << 20})
	st.synced = true
	l := &egressListener{cfg: EgressListener{Header: true, Destination: netip.MustParseAddrPort("198.18.2.10:9000")}}
	var o egressOut
	for id := uint64(1); id <= 5; id++ {
		st.classify(l, AppendEgressHeader(nil, EgressHeader{ID: id, HasID: true}), false, false, 0, &o)
	}
	st.flushHeld(&o, 0)
	if diff := cmp.Diff([]uint64{3, 4, 5}, o.ids); diff != "" {
		t.Errorf("sent after takeover (-want +got):\n%s", diff)
	}
	if n := l.c.results[EgressExpired].Load(); n != 2 {
		t.Errorf("expired %d, want 2 (the oldest, beyond hold_frames)", n)
	}
}
