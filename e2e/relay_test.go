package e2e

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"driftgate/internal/netlab"
)

type jsonFrame struct {
	Epoch       uint64 `json:"epoch"`
	Seq         uint64 `json:"seq"`
	Source      string `json:"source"`
	IngressPort uint16 `json:"ingress_port"`
	Payload     string `json:"payload"`
}

func waitOutput(t *testing.T, what string, out *netlab.SyncBuffer, substr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q in output after 10s:\n%s", what, substr, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRelayMulticastNamespaces: a relay in one namespace tees datagrams by
// multicast to receivers in two other namespaces and to its own host (via
// multicast loop), over a real bridge. The relay listens on a VIP that is
// added to its interface only after it started (FREEBIND).
func TestRelayMulticastNamespaces(t *testing.T) {
	tests := []struct {
		name, vip, group string
	}{
		{"ipv4", "198.18.0.100", "239.255.0.1"},
		{"ipv6", "2001:db8:d9::100", "ff12::d9:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lab := netlab.New(t, "src", "gw", "a", "b")
			gw := lab.Host("gw")
			vip := netip.MustParseAddr(tt.vip)
			listen := netip.AddrPortFrom(vip, 5000).String()
			group := netip.AddrPortFrom(netip.MustParseAddr(tt.group), 5001).String()

			rcv := map[string]*netlab.SyncBuffer{}
			for _, name := range []string{"gw", "a", "b"} {
				_, out := lab.Host(name).Start(driftgate, "receive", "--group", group, "--iface", "eth0", "--deliver", "stdout")
				rcv[name] = out
			}
			relay, relayOut := gw.Start(driftgate, "relay", "--listen", listen, "--group", group, "--iface", "eth0", "--epoch", "5")
			waitOutput(t, "relay", relayOut, "msg=listening")
			for name, out := range rcv {
				waitOutput(t, "receiver "+name, out, "msg=receiving")
			}
			// The VIP arrives after the relay bound it.
			bits := 24
			if vip.Is6() {
				bits = 64
			}
			args := []string{"addr", "add", netip.PrefixFrom(vip, bits).String(), "dev", "eth0"}
			if vip.Is6() {
				args = append(args, "nodad")
			}
			gw.IP(args...)
			// Give IGMP/MLD joins and neighbour discovery a moment.
			time.Sleep(300 * time.Millisecond)

			const n = 500
			src := lab.Host("src")
			if out, err := src.Self("feed", listen, "20000", strconv.Itoa(n)).CombinedOutput(); err != nil {
				t.Fatalf("sender: %v: %s", err, out)
			}
			srcAddr := src.Addr4.Addr()
			if vip.Is6() {
				srcAddr = src.Addr6.Addr()
			}
			for name, out := range rcv {
				deadline := time.Now().Add(10 * time.Second)
				var frames []jsonFrame
				for {
					frames = parseFrames(t, out.String())
					if len(frames) >= n || time.Now().After(deadline) {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				if len(frames) != n {
					t.Fatalf("receiver %s got %d frames, want %d\nrelay:\n%s", name, len(frames), n, relayOut)
				}
				for i, f := range frames {
					payload, _ := hex.DecodeString(f.Payload)
					src, err := netip.ParseAddrPort(f.Source)
					if err != nil || src.Addr() != srcAddr || f.Epoch != 5 || f.Seq != uint64(i+1) || f.IngressPort != 5000 || string(payload) != strconv.Itoa(i+1) {
						t.Fatalf("receiver %s frame %d: %+v (payload %q), want epoch 5 seq %d from %s", name, i, f, payload, i+1, srcAddr)
					}
				}
			}
			relay.Signal(syscall.SIGTERM)
			if err := relay.Wait(10 * time.Second); err != nil {
				t.Fatalf("relay exit: %v\n%s", err, relayOut)
			}
			want := fmt.Sprintf("received=%d forwarded=%d", n, n)
			if !strings.Contains(relayOut.String(), want) {
				t.Fatalf("relay summary lacks %q:\n%s", want, relayOut)
			}
		})
	}
}

func parseFrames(t *testing.T, out string) []jsonFrame {
	t.Helper()
	var fs []jsonFrame
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var f jsonFrame
		if err := json.Unmarshal([]byte(line), &f); err != nil {
			t.Fatalf("bad JSON line %q: %v", line, err)
		}
		fs = append(fs, f)
	}
	return fs
}
