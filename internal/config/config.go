package config

import (
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"driftgate/gateway"
)

// DefaultPath is where the packaged configuration lives.
const DefaultPath = "/etc/driftgate/driftgate.yaml"

// DefaultControlSocket is the agent's control socket (the unit's
// RuntimeDirectory); driftgate status and step-down use it.
const DefaultControlSocket = "/run/driftgate/control.sock"

// Example is the commented reference configuration.
//
//go:embed example.yaml
var Example string

// ExampleWithVIP is Example as an operator edits it first: the commented
// VIP (198.18.0.100/24 on eth0) and relay listen address taken in. Tests
// that need a valid file use it.
func ExampleWithVIP() string {
	s := strings.Replace(Example, "vips: []\n", "vips:\n", 1)
	s = strings.Replace(s, "\n#  - address: 198.18.0.100/24\n", "\n  - address: 198.18.0.100/24\n", 1)
	for _, l := range []string{"interface: eth0", "label: eth0:dg", "probe: true", "announce:", "  count: 3", "  interval: 100ms", "  delay: 2s", "  refresh: 0s"} {
		s = strings.Replace(s, "\n#    "+l+"\n", "\n    "+l+"\n", 1)
	}
	return strings.Replace(s, "  listen: []\n  #  - 198.18.0.100:5000\n", "  listen:\n    - 198.18.0.100:5000\n", 1)
}

// raw mirrors the YAML. Durations are strings so that bare numbers can be
// refused with a clear message instead of being read as nanoseconds.
type raw struct {
	Node   string `mapstructure:"node"`
	Consul struct {
		Address    string `mapstructure:"address"`
		Token      string `mapstructure:"token"`
		TokenFile  string `mapstructure:"token_file"`
		Datacenter string `mapstructure:"datacenter"`
		KeyPrefix  string `mapstructure:"key_prefix"`
		TLS        struct {
			CAFile   string `mapstructure:"ca_file"`
			CertFile string `mapstructure:"cert_file"`
			KeyFile  string `mapstructure:"key_file"`
		} `mapstructure:"tls"`
	} `mapstructure:"consul"`
	Service struct {
		Name string   `mapstructure:"name"`
		Tags []string `mapstructure:"tags"`
	} `mapstructure:"service"`
	Election struct {
		Profile           string `mapstructure:"profile"`
		TFence            string `mapstructure:"t_fence"`
		TWait             string `mapstructure:"t_wait"`
		ConfirmInterval   string `mapstructure:"confirm_interval"`
		RequestTimeout    string `mapstructure:"request_timeout"`
		DropBudget        string `mapstructure:"drop_budget"`
		HeartbeatTTL      string `mapstructure:"heartbeat_ttl"`
		HeartbeatInterval string `mapstructure:"heartbeat_interval"`
		LockDelay         string `mapstructure:"lock_delay"`
		SessionTTL        string `mapstructure:"session_ttl"`
		Priority          int    `mapstructure:"priority"`
		StepDownHoldOff   string `mapstructure:"step_down_hold_off"`
		KernelFence       string `mapstructure:"kernel_fence"`
	} `mapstructure:"election"`
	VIPs  []rawVIP `mapstructure:"vips"`
	Relay struct {
		Listen            []string `mapstructure:"listen"`
		Group             string   `mapstructure:"group"`
		Interface         string   `mapstructure:"interface"`
		TTL               int      `mapstructure:"ttl"`
		Unicast           []string `mapstructure:"unicast"`
		UnicastFromConsul bool     `mapstructure:"unicast_from_consul"`
		Allow             []string `mapstructure:"allow"`
		KeyFile           string   `mapstructure:"key_file"`
		RcvBuf            int      `mapstructure:"rcvbuf"`
		Batch             int      `mapstructure:"batch"`
		GSO               bool     `mapstructure:"gso"`
		MulticastLoop     bool     `mapstructure:"multicast_loop"`
		Repair            struct {
			Enabled bool     `mapstructure:"enabled"`
			Frames  int      `mapstructure:"frames"`
			Bytes   int      `mapstructure:"bytes"`
			Allow   []string `mapstructure:"allow"`
			Rate    int      `mapstructure:"rate"`
		} `mapstructure:"repair"`
	} `mapstructure:"relay"`
	Receive struct {
		Enabled   bool   `mapstructure:"enabled"`
		Group     string `mapstructure:"group"`
		Interface string `mapstructure:"interface"`
		Listen    string `mapstructure:"listen"`
		Deliver   string `mapstructure:"deliver"`
		KeyFile   string `mapstructure:"key_file"`
		Queue     struct {
			Frames int `mapstructure:"frames"`
			Bytes  int `mapstructure:"bytes"`
		} `mapstructure:"queue"`
		Repair struct {
			Enabled    bool   `mapstructure:"enabled"`
			Reorder    string `mapstructure:"reorder"`
			Deadline   string `mapstructure:"deadline"`
			KeepFrames int    `mapstructure:"keep_frames"`
			KeepBytes  int    `mapstructure:"keep_bytes"`
		} `mapstructure:"repair"`
		Order         string   `mapstructure:"order"`
		OrderHold     string   `mapstructure:"order_hold"`
		ConfirmEpochs bool     `mapstructure:"confirm_epochs"`
		HoldFrames    int      `mapstructure:"hold_frames"`
		HoldTime      string   `mapstructure:"hold_time"`
		Sources       []string `mapstructure:"sources"`
		SourceRate    int      `mapstructure:"source_rate"`
	} `mapstructure:"receive"`
	Egress struct {
		Source          string            `mapstructure:"source"`
		Allow           []string          `mapstructure:"allow"`
		Rate            int               `mapstructure:"rate"`
		Burst           int               `mapstructure:"burst"`
		DuplicateWindow string            `mapstructure:"duplicate_window"`
		HoldFrames      int               `mapstructure:"hold_frames"`
		HoldBytes       int               `mapstructure:"hold_bytes"`
		Listen          []rawEgressListen `mapstructure:"listen"`
	} `mapstructure:"egress"`
	Checks  []rawCheck `mapstructure:"checks"`
	Hooks   []rawHook  `mapstructure:"hooks"`
	Metrics struct {
		Address string `mapstructure:"address"`
	} `mapstructure:"metrics"`
	Control struct {
		Socket string `mapstructure:"socket"`
	} `mapstructure:"control"`
	Log struct {
		Level  string `mapstructure:"level"`
		Format string `mapstructure:"format"`
	} `mapstructure:"log"`
}

type rawVIP struct {
	Address   string `mapstructure:"address"`
	Interface string `mapstructure:"interface"`
	Label     string `mapstructure:"label"`
	Probe     bool   `mapstructure:"probe"`
	Announce  struct {
		Count    int    `mapstructure:"count"`
		Interval string `mapstructure:"interval"`
		Delay    string `mapstructure:"delay"`
		Refresh  string `mapstructure:"refresh"`
	} `mapstructure:"announce"`
}

type rawEgressListen struct {
	Address     string `mapstructure:"address"`
	Destination string `mapstructure:"destination"`
	Header      bool   `mapstructure:"header"`
}

type rawCheck struct {
	Name     string   `mapstructure:"name"`
	HTTP     string   `mapstructure:"http"`
	TCP      string   `mapstructure:"tcp"`
	Args     []string `mapstructure:"args"`
	Interval string   `mapstructure:"interval"`
	Timeout  string   `mapstructure:"timeout"`
}

type rawHook struct {
	Name    string   `mapstructure:"name"`
	Command []string `mapstructure:"command"`
	Timeout string   `mapstructure:"timeout"`
}

// defaults are set for every scalar key, which also makes each of them
// known to viper, so its DRIFTGATE_* variable is honoured.
func defaults(v *viper.Viper) {
	host, _ := os.Hostname()
	for k, val := range map[string]any{
		"node":                 host,
		"consul.address":       "127.0.0.1:8500",
		"consul.token":         "",
		"consul.token_file":    "",
		"consul.datacenter":    "",
		"consul.key_prefix":    "driftgate",
		"consul.tls.ca_file":   "",
		"consul.tls.cert_file": "",
		"consul.tls.key_file":  "",
		"service.name":         "driftgate",
		"service.tags":         []string{},
		// The timing keys are empty unless set: the profile's values
		// apply, and a key that is set overrides its own.
		"election.profile":            "default",
		"election.kernel_fence":       FenceNFTables,
		"election.t_fence":            "",
		"election.t_wait":             "",
		"election.confirm_interval":   "",
		"election.request_timeout":    "",
		"election.drop_budget":        "",
		"election.heartbeat_ttl":      "",
		"election.heartbeat_interval": "",
		"election.lock_delay":         "",
		"election.session_ttl":        "",
		"election.priority":           0,
		"election.step_down_hold_off": "10s",
		"relay.listen":                []string{},
		"relay.group":                 "",
		"relay.interface":             "",
		"relay.ttl":                   1,
		"relay.unicast":               []string{},
		"relay.unicast_from_consul":   false,
		"relay.allow":                 []string{},
		"relay.key_file":              "",
		"relay.rcvbuf":                16 << 20,
		"relay.batch":                 64,
		"relay.gso":                   true,
		"relay.multicast_loop":        false,
		"relay.repair.enabled":        true,
		"relay.repair.frames":         gateway.DefaultRingFrames,
		"relay.repair.bytes":          gateway.DefaultRingBytes,
		"relay.repair.allow":          []string{},
		"relay.repair.rate":           gateway.DefaultRepairRate,
		"receive.enabled":             true,
		"receive.group":               "",
		"receive.interface":           "",
		"receive.listen":              "",
		"receive.deliver":             "",
		"receive.key_file":            "",
		"receive.queue.frames":        gateway.DefaultQueueFrames,
		"receive.queue.bytes":         gateway.DefaultQueueBytes,
		"receive.repair.enabled":      true,
		"receive.repair.reorder":      gateway.DefaultRepairReorder.String(),
		"receive.repair.deadline":     gateway.DefaultRepairDeadline.String(),
		"receive.repair.keep_frames":  gateway.DefaultKeepFrames,
		"receive.repair.keep_bytes":   gateway.DefaultKeepBytes,
		"receive.order":               "arrival",
		"receive.order_hold":          gateway.DefaultOrderHold.String(),
		"receive.confirm_epochs":      true,
		"receive.hold_frames":         gateway.DefaultHoldFrames,
		"receive.hold_time":           gateway.DefaultHoldTime.String(),
		"receive.sources":             []string{},
		"receive.source_rate":         gateway.DefaultSourceRate,
		"egress.source":               "",
		"egress.allow":                []string{},
		"egress.rate":                 0,
		"egress.burst":                0,
		"egress.duplicate_window":     "0s",
		"egress.hold_frames":          gateway.DefaultEgressHoldFrames,
		"egress.hold_bytes":           gateway.DefaultEgressHoldBytes,
		"metrics.address":             "127.0.0.1:9469",
		"control.socket":              DefaultControlSocket,
		"log.level":                   "info",
		"log.format":                  "text",
	} {
		v.SetDefault(k, val)
	}
}

// Load reads the file at path (it must exist), applies DRIFTGATE_*
// environment variables and the flags in fs that have been set (flag
// "log-level" overrides key "log.level"), and parses the result.
func Load(path string, fs *pflag.FlagSet) (*Config, error) {
	v := viper.New()
	defaults(v)
	v.SetEnvPrefix("DRIFTGATE")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	if err := v.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	if fs != nil {
		for key, flag := range map[string]string{"log.level": "log-level", "log.format": "log-format", "node": "node", "metrics.address": "metrics-address"} {
			if f := fs.Lookup(flag); f != nil && f.Changed {
				v.Set(key, f.Value.String())
			}
		}
	}
	var r raw
	if err := v.UnmarshalExact(&r); err != nil {
		return nil, fmt.Errorf("config %s: %s", path, cleanDecodeError(err))
	}
	c, err := parse(&r)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// invalidKeys matches mapstructure's report of unknown keys.
var invalidKeys = regexp.MustCompile(`'([^']*)' has invalid keys: ([^\n]*)`)

// cleanDecodeError turns mapstructure's multi-line report into one line,
// with unknown keys as full paths ("unknown key(s): relay.colour").
func cleanDecodeError(err error) string {
	s := err.Error()
	if m := invalidKeys.FindAllStringSubmatch(s, -1); m != nil {
		var keys []string
		for _, g := range m {
			parent := g[1]
			if parent == "config.raw" || parent == "" {
				parent = ""
			} else {
				parent += "."
			}
			for _, k := range strings.Split(g[2], ",") {
				keys = append(keys, parent+strings.TrimSpace(k))
			}
		}
		return "unknown key(s): " + strings.Join(keys, ", ")
	}
	s = strings.ReplaceAll(s, "decoding failed due to the following error(s):", "")
	return strings.Join(strings.Fields(s), " ")
}

// pathErr prefixes an error with the key path.
func pathErr(path string, err error) error { return fmt.Errorf("%s.%w", path, err) }

func duration(path, s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a duration; write it with a unit, e.g. \"800ms\" or \"3s\"", path, s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%s: %s must not be negative", path, s)
	}
	return d, nil
}

func addrPort(path, s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%s: %q: want IP:PORT with a non-zero port (IPv6 as [ADDR]:PORT)", path, s)
	}
	return ap, nil
}

// prefixes parses a list of CIDRs (masked: 198.18.0.1/24 is 198.18.0.0/24);
// an error names the entry, e.g. relay.allow[1].
func prefixes(path string, vals []string) (gateway.Allowlist, error) {
	var out gateway.Allowlist
	for i, s := range vals {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %q: want a CIDR such as 198.18.0.0/15", path, i, s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

var errNoVIP = errors.New("vips: none is set: add this node's floating address (vips[0].address and vips[0].interface) and relay.listen; " +
	"the packaged file ships none, so that installing it touches no interface")

// reflectKeys lists the dotted keys of raw's scalar and string-list leaves
// (not lists of tables), for documentation and tests.
func reflectKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		key := prefix + f.Tag.Get("mapstructure")
		switch {
		case f.Type.Kind() == reflect.Struct:
			out = append(out, reflectKeys(f.Type, key+".")...)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
		default:
			out = append(out, key)
		}
	}
	return out
}
