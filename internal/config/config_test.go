package config

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"driftgate/consul"
	"driftgate/gateway"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "driftgate.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// edited is ExampleWithVIP, checked to differ from Example.
func edited(t *testing.T) string {
	t.Helper()
	s := ExampleWithVIP()
	if s == Example || strings.Contains(s, "\n#  - address") || !strings.Contains(s, "    - 198.18.0.100:5000\n") {
		t.Fatal("the example's VIP block changed: edit ExampleWithVIP")
	}
	return s
}

// TestExample: the shipped reference configuration is refused until a VIP
// is set, with a message that says so (installing touches no interface);
// with the commented VIP taken in, it parses, with the values it documents.
func TestExample(t *testing.T) {
	if _, err := Load(write(t, Example), nil); err == nil || !strings.Contains(err.Error(), "vips: none is set") {
		t.Fatalf("the shipped configuration: %v, want the missing VIP named", err)
	}
	c, err := Load(write(t, edited(t)), nil)
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	type view struct {
		Node, Key   string
		TFence      time.Duration
		VIP         string
		Announce    int
		Listen      []netip.AddrPort
		Group       netip.AddrPort
		Deliver     string
		Checks      int
		Hooks       int
		Metrics     string
		HoldOff     time.Duration
		ReceiveFrom netip.AddrPort
	}
	got := view{c.Node, c.Consul.LeaderKey(), c.Election.Timing.TFence, c.VIPs[0].String(), c.VIPs[0].Announce.Count,
		c.Relay.Listen, c.Relay.Group, c.Receive.DeliverURL.String(), len(c.Checks), len(c.Hooks), c.Metrics.Address, c.Election.StepDownHoldOff, c.Receive.Group}
	want := view{"gw1", "driftgate/leader", 2100 * time.Millisecond, "198.18.0.100/24 on eth0", 3,
		[]netip.AddrPort{netip.MustParseAddrPort("198.18.0.100:5000")}, netip.MustParseAddrPort("239.255.0.1:5001"),
		"udp://127.0.0.1:6000", 0, 1, "127.0.0.1:9469", 10 * time.Second, netip.MustParseAddrPort("239.255.0.1:5001")}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Fatalf("example (-want +got):\n%s", diff)
	}
}

// minimal is the smallest valid configuration.
const minimal = `
node: n1
vips:
  - address: 198.18.0.100/24
    interface: eth0
relay:
  listen: ["198.18.0.100:5000"]
  group: 239.255.0.1:5001
receive:
  group: 239.255.0.1:5001
  deliver: stdout
`

func TestDefaults(t *testing.T) {
	c, err := Load(write(t, minimal), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Consul.Address != "127.0.0.1:8500" || c.Service.Name != "driftgate" || c.Relay.TTL != 1 || c.Relay.NoGSO ||
		c.VIPs[0].Announce.Delay != 2*time.Second || c.Log.Level != "info" {
		t.Fatalf("defaults not applied: %+v", c)
	}
	// The election's defaults are consul.DefaultTiming's, every one; a
	// profile's are its own, every one.
	if diff := cmp.Diff(consul.DefaultTiming(), c.Election.Timing); diff != "" {
		t.Fatalf("election timing defaults (-want +got):\n%s", diff)
	}
	for _, name := range consul.ProfileNames() {
		c, err := Load(write(t, merge(minimal, "election:\n  profile: "+name+"\n")), nil)
		if err != nil {
			t.Fatalf("profile %s: %v", name, err)
		}
		want, _ := consul.Profile(name)
		if diff := cmp.Diff(want, c.Election.Timing); diff != "" || c.Election.Profile != name {
			t.Fatalf("profile %s (%q) timing (-want +got):\n%s", name, c.Election.Profile, diff)
		}
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name, edit, want string
	}{
		{"unknown key", "bogus: 1\n", "unknown key(s): bogus"},
		{"unknown nested key", "relay:\n  listen: [\"198.18.0.100:5000\"]\n  group: 239.255.0.1:5001\n  colour: red\n", "relay.colour"},
		{"bare number duration", "election:\n  t_fence: 3\n", `election.t_fence: "3" is not a duration; write it with a unit`},
		{"unsafe t_wait", "election:\n  t_wait: 2s\n", "election.t_wait: 2s is unsafe"},
		{"t_fence under kernel lifetime", "election:\n  kernel_fence: lifetime\n  t_fence: 2s\n  request_timeout: 900ms\n", "election.t_fence: 2s is below request_timeout + 1s + 300ms = 2.2s"},
		{"fast without nftables", "election:\n  profile: fast\n  kernel_fence: lifetime\n", "election.t_fence: 700ms is below request_timeout + 1s + 300ms = 1.5s: with kernel_fence lifetime"},
		{"kernel fence", "election:\n  kernel_fence: iptables\n", `election.kernel_fence: "iptables": want nftables or lifetime`},
		{"announce count", "vips:\n  - address: 198.18.0.100/24\n    interface: eth0\n    announce:\n      count: 50\n", "vips[0].announce.count: 50 is out of range 1..20"},
		{"bad vip", "vips:\n  - address: 198.18.0.100\n    interface: eth0\n", `vips[0].address: "198.18.0.100": want ADDRESS/PREFIXLEN`},
		{"vip label", "vips:\n  - address: 198.18.0.100/24\n    interface: eth0\n    label: vip\n", `vips[0].label: "vip" must start with the interface name`},
		{"no vips", "vips: []\n", "vips: none is set"},
		{"relay listen", "relay:\n  listen: [\"198.18.0.100\"]\n  group: 239.255.0.1:5001\n", `relay.listen[0]: "198.18.0.100": want IP:PORT`},
		{"relay group", "relay:\n  listen: [\"198.18.0.100:5000\"]\n  group: 198.18.0.1:5001\n", "relay.group: 198.18.0.1:5001 is not a multicast address"},
		{"relay ttl", "relay:\n  listen: [\"198.18.0.100:5000\"]\n  group: 239.255.0.1:5001\n  ttl: 300\n", "relay.ttl: 300 is out of range 1..255"},
		{"relay batch", "relay:\n  listen: [\"198.18.0.100:5000\"]\n  group: 239.255.0.1:5001\n  batch: 2000\n", "relay.batch: 2000 is out of range 1..1024"},
		{"relay no destination", "relay:\n  listen: [\"198.18.0.100:5000\"]\n", "relay: no destination: set relay.group, relay.unicast or relay.unicast_from_consul"},
		{"receive group", "receive:\n  group: 198.18.0.1:5001\n  deliver: stdout\n", "receive.group: 198.18.0.1:5001 is not a multicast address"},
		{"relay allow", "relay:\n  listen: [\"198.18.0.100:5000\"]\n  group: 239.255.0.1:5001\n  allow: [\"198.18.0.0/99\"]\n", `relay.allow[0]: "198.18.0.0/99"`},
		{"receive both", "receive:\n  group: 239.255.0.1:5001\n  listen: 127.0.0.1:1\n  deliver: stdout\n", "receive: set exactly one of receive.group and receive.listen"},
		{"receive deliver", "receive:\n  group: 239.255.0.1:5001\n  deliver: ftp://x\n", `receive.deliver: "ftp://x"`},
		{"check", "checks:\n  - name: app\n    interval: 1s\n    timeout: 1s\n", "checks[0].http: set exactly one of http, tcp and args"},
		{"check interval", "checks:\n  - name: app\n    tcp: 127.0.0.1:1\n    interval: 5\n    timeout: 1s\n", `checks[0].interval: "5" is not a duration`},
		{"hook relative", "hooks:\n  - command: [notify]\n", `hooks[0].command: "notify": give an absolute path`},
		{"reserved tag", "service:\n  tags: [primary]\n", `service.tags[0]: "primary" is reserved`},
		{"log level", "log:\n  level: loud\n", `log.level: "loud"`},
		{"priority", "election:\n  priority: 101\n", "election.priority: 101 is out of range 0..100"},
		{"profile", "election:\n  profile: quick\n", `election.profile: unknown timing profile "quick": want default, fast, tolerant`},
		{"profile override unsafe", "election:\n  profile: fast\n  t_fence: 3s\n", "election.t_wait: 820ms is unsafe"},
		{"egress source not a VIP", "egress:\n  source: 198.18.0.1:6000\n  allow: [198.18.2.0/24]\n  listen:\n    - address: 127.0.0.1:7100\n      destination: 198.18.2.1:9000\n", "egress.source: 198.18.0.1 is not one of vips"},
		{"egress no source", "egress:\n  allow: [198.18.2.0/24]\n  listen:\n    - address: 127.0.0.1:7100\n      header: true\n", `egress.source: "": want IP:PORT`},
		{"egress not loopback", "egress:\n  source: 198.18.0.100:6000\n  allow: [198.18.2.0/24]\n  listen:\n    - address: 198.18.0.5:7100\n      header: true\n", `egress.listen[0].address: "198.18.0.5:7100": not a loopback address`},
		{"egress outside allow", "egress:\n  source: 198.18.0.100:6000\n  allow: [198.18.2.0/24]\n  listen:\n    - address: 127.0.0.1:7100\n      destination: 198.18.3.1:9000\n", "egress.listen[0].destination: 198.18.3.1:9000 is outside allow"},
		{"egress no allow", "egress:\n  source: 198.18.0.100:6000\n  listen:\n    - address: 127.0.0.1:7100\n      header: true\n", "egress.allow: at least one destination prefix is required"},
		{"egress ids without receiver", "receive:\n  enabled: false\negress:\n  source: 198.18.0.100:6000\n  allow: [198.18.2.0/24]\n  listen:\n    - address: 127.0.0.1:7100\n      header: true\n  duplicate_window: 5s\n", "egress.duplicate_window: 5s needs receive.enabled"},
		{"egress unknown key", "egress:\n  source: 198.18.0.100:6000\n  allow: [198.18.2.0/24]\n  listen:\n    - address: 127.0.0.1:7100\n      header: true\n      colour: red\n", "colour"},
		{"token both", "consul:\n  token: a\n  token_file: /x\n", "consul.token_file: set either"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(write(t, merge(minimal, tt.edit)), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load error:\n  %v\nwant it to contain\n  %s", err, tt.want)
			}
		})
	}
}

// TestDeliverForms: the configuration accepts every delivery URL the
// receiver accepts, because both call gateway.ParseDeliverURL.
func TestDeliverForms(t *testing.T) {
	for _, d := range []string{"stdout", "-", "udp://127.0.0.1:6000", "unix:///run/app.sock", "unixgram:///run/app.sock"} {
		c, err := Load(write(t, merge(minimal, "receive:\n  group: 239.255.0.1:5001\n  deliver: \""+d+"\"\n")), nil)
		if err != nil {
			t.Errorf("receive.deliver %q: %v", d, err)
			continue
		}
		if _, err := gateway.ParseDeliverURL(d); err != nil || c.Receive.DeliverURL.String() != d {
			t.Errorf("receive.deliver %q: loaded as %q; the receiver's parser says %v", d, c.Receive.DeliverURL, err)
		}
	}
}

// merge replaces minimal's top-level sections with those in edit.
func merge(base, edit string) string {
	sections := func(s string) (order []string, m map[string]string) {
		m = map[string]string{}
		cur := ""
		for _, line := range strings.Split(s, "\n") {
			if line == "" {
				continue
			}
			if line[0] != ' ' {
				cur = strings.SplitN(line, ":", 2)[0]
				order = append(order, cur)
			}
			m[cur] += line + "\n"
		}
		return order, m
	}
	order, b := sections(base)
	eorder, e := sections(edit)
	for _, k := range eorder {
		if _, ok := b[k]; !ok {
			order = append(order, k)
		}
		b[k] = e[k]
	}
	var out strings.Builder
	for _, k := range order {
		out.WriteString(b[k])
	}
	return out.String()
}

func TestEnvAndFlags(t *testing.T) {
	t.Setenv("DRIFTGATE_ELECTION_PROFILE", "tolerant")
	t.Setenv("DRIFTGATE_ELECTION_T_FENCE", "7s")
	t.Setenv("DRIFTGATE_CONSUL_ADDRESS", "127.0.0.1:18500")
	t.Setenv("DRIFTGATE_RELAY_TTL", "4")
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.String("log-level", "info", "")
	fs.String("node", "", "")
	if err := fs.Parse([]string{"--log-level=debug", "--node=from-flag"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(write(t, minimal), fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Election.Timing.TFence != 7*time.Second || c.Election.Timing.TWait != 8500*time.Millisecond || c.Consul.Address != "127.0.0.1:18500" || c.Relay.TTL != 4 || c.Log.Level != "debug" || c.Node != "from-flag" {
		t.Fatalf("overrides not applied: t_fence %s consul %s ttl %d level %s node %s", c.Election.Timing.TFence, c.Consul.Address, c.Relay.TTL, c.Log.Level, c.Node)
	}
	t.Setenv("DRIFTGATE_ELECTION_T_WAIT", "1")
	if _, err := Load(write(t, minimal), nil); err == nil || !strings.Contains(err.Error(), `election.t_wait: "1" is not a duration`) {
		t.Fatalf("bad env value: %v", err)
	}
}

// TestEveryKeyHasADefault: every scalar key has a default, which makes it
// known to viper and so overridable from the environment; and every key is
// documented in example.yaml.
func TestEveryKeyHasADefault(t *testing.T) {
	v := viper.New()
	defaults(v)
	for _, key := range reflectKeys(reflect.TypeOf(raw{}), "") {
		if !v.IsSet(key) {
			t.Errorf("key %s has no default, so DRIFTGATE_%s is ignored", key, strings.ToUpper(strings.ReplaceAll(key, ".", "_")))
		}
		leaf := key[strings.LastIndex(key, ".")+1:]
		if !strings.Contains(Example, leaf+":") {
			t.Errorf("key %s is not documented in example.yaml", key)
		}
	}
}

func TestEffective(t *testing.T) {
	c, err := Load(write(t, edited(t)), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Consul.Token = "secret"
	b, err := json.Marshal(c.Effective())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"TFence":"2.1s"`, `"Prefix":"198.18.0.100/24"`, `"Group":"239.255.0.1:5001"`, `"Token":"(set)"`, `"Listen":["198.18.0.100:5000"]`, `"Interval":"100ms"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("effective config lacks %s:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), "secret") {
		t.Error("the token is shown")
	}
}

// FuzzLoad: any file either loads or fails with an error; never a panic.
func FuzzLoad(f *testing.F) {
	f.Add(Example)
	f.Add(minimal)
	f.Add("election:\n  t_fence: 3\n")
	f.Add("vips: [{address: 198.18.0.100/24, interface: eth0, announce: {count: -1}}]\n")
	f.Fuzz(func(t *testing.T, body string) {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(p, nil)
		if err == nil && (c.Node == "" || len(c.VIPs) == 0 || len(c.Relay.Listen) == 0) {
			t.Fatalf("loaded an incomplete configuration: %+v", c)
		}
	})
}

// TestChanged: a reload is told what differs, section by section, and for
// relay, receive, log and metrics field by field.
func TestChanged(t *testing.T) {
	base := merge(minimal, "log:\n  level: info\n")
	a, err := Load(write(t, base), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, edit string
		want       []string
	}{
		{"nothing", "", nil},
		{"log level", "log:\n  level: debug\n", []string{"Log.Level"}},
		{"hooks", "hooks:\n  - name: h\n    command: [/bin/true]\n", []string{"Hooks"}},
		{"relay allow and receive sources", "relay:\n  listen: [\"198.18.0.100:5000\"]\n  group: 239.255.0.1:5001\n  allow: [198.18.0.0/24]\nreceive:\n  group: 239.255.0.1:5001\n  deliver: stdout\n  sources: [198.18.1.0/24]\n",
			[]string{"Receive.Sources", "Relay.Allow"}},
		{"election", "election:\n  profile: fast\n", []string{"Election"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Load(write(t, merge(base, tt.edit)), nil)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, Changed(a, b)); diff != "" {
				t.Fatalf("Changed (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEgress(t *testing.T) {
	c, err := Load(write(t, merge(minimal, `egress:
  source: 198.18.0.100:6000
  allow: [198.18.2.0/24]
  rate: 1000
  duplicate_window: 5s
  listen:
    - address: 127.0.0.1:7100
      destination: 198.18.2.10:9000
    - address: unix:///run/driftgate/egress.sock
      header: true
`)), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := gateway.EgressConfig{Source: netip.MustParseAddrPort("198.18.0.100:6000"), Allow: gateway.Allowlist{netip.MustParsePrefix("198.18.2.0/24")},
		Rate: 1000, Window: 5 * time.Second, HoldFrames: gateway.DefaultEgressHoldFrames, HoldBytes: gateway.DefaultEgressHoldBytes,
		Listeners: []gateway.EgressListener{
			{Listen: gateway.EgressAddr{UDP: netip.MustParseAddrPort("127.0.0.1:7100")}, Destination: netip.MustParseAddrPort("198.18.2.10:9000")},
			{Listen: gateway.EgressAddr{Unix: "/run/driftgate/egress.sock"}, Header: true},
		}}
	if diff := cmp.Diff(want, c.Egress.EgressConfig, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" || !c.Egress.Enabled {
		t.Errorf("egress (enabled %v) (-want +got):\n%s", c.Egress.Enabled, diff)
	}
	if c, err := Load(write(t, minimal), nil); err != nil || c.Egress.Enabled {
		t.Errorf("no listen entries: enabled %v, %v; want off", c.Egress.Enabled, err)
	}
}
