package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"driftgate/gateway"
	"driftgate/internal/config"
)

// TestApply: a reload applies what changes without a step-down, reports
// the rest as needing a restart, and compares the next reload with what
// runs (not with the file the agent started with).
func TestApply(t *testing.T) {
	const base = reloadBase
	loadText := func(text string) *config.Config { return loadConfig(t, text) }
	load := func(extra string) *config.Config { return loadText(base + extra) }
	cfg := load("")
	a := newAgent(cfg, nil, nil, systemClock{})
	var err error
	if a.relay, err = gateway.NewRelay(cfg.Relay.RelayConfig, nil); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name  string
		extra string
		want  ReloadReport
	}{
		{"unchanged", "", ReloadReport{}},
		{"hooks and the log level (the caller applies it); the election needs a restart",
			"hooks:\n  - name: h\n    command: [/bin/true]\nlog:\n  level: debug\nelection:\n  profile: fast\n",
			ReloadReport{Applied: []string{"Hooks"}, Restart: []string{"Election"}}},
		{"the same file again: nothing new", "hooks:\n  - name: h\n    command: [/bin/true]\nlog:\n  level: debug\nelection:\n  profile: fast\n",
			ReloadReport{Restart: []string{"Election"}}},
	} {
		t.Run(step.name, func(t *testing.T) {
			rep, err := a.Apply(context.Background(), load(step.extra))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(step.want, rep); diff != "" {
				t.Fatalf("report (-want +got):\n%s", diff)
			}
		})
	}
	if hs := *a.hooks.hooks.Load(); len(hs) != 1 || hs[0].Name != "h" {
		t.Fatalf("hooks after the reload: %+v", hs)
	}

	// The relay's allowlist and the VIPs' announce settings; a VIP's
	// address is not for a reload.
	rep, err := a.Apply(context.Background(), loadText(strings.Replace(base, "  group: 239.255.0.1:5001\nreceive:", "  group: 239.255.0.1:5001\n  allow: [198.18.0.0/24]\nreceive:", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ReloadReport{Applied: []string{"Hooks", "Relay.Allow"}}, rep); diff != "" {
		t.Fatalf("allowlist report (-want +got):\n%s", diff)
	}
	announce := strings.Replace(base, "    interface: eth0\n", "    interface: eth0\n    announce:\n      count: 5\n", 1)
	rep, err = a.Apply(context.Background(), loadText(announce))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ReloadReport{Applied: []string{"Relay.Allow", "VIPs (announce settings, from the next term)"}}, rep); diff != "" {
		t.Fatalf("announce report (-want +got):\n%s", diff)
	}
	if a.live.VIPs[0].Announce.Count != 5 {
		t.Fatalf("the next term's announce count: %d, want 5", a.live.VIPs[0].Announce.Count)
	}
	moved := strings.Replace(announce, "198.18.0.100/24", "198.18.0.101/24", 1)
	if rep, err = a.Apply(context.Background(), loadText(moved)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ReloadReport{Restart: []string{"VIPs"}}, rep); diff != "" {
		t.Fatalf("a moved VIP (-want +got):\n%s", diff)
	}
}

// TestApplyEgress: the egress's allowlist and rates take effect on a
// reload; its ports need a restart.
func TestApplyEgress(t *testing.T) {
	const base = reloadBase + `egress:
  source: 198.18.0.100:5000
  allow: [198.18.2.0/24]
  listen:
    - address: 127.0.0.1:7100
      destination: 198.18.2.10:9000
`
	load := func(text string) *config.Config { return loadConfig(t, text) }
	cfg := load(base)
	a := newAgent(cfg, nil, nil, systemClock{})
	var err error
	if a.relay, err = gateway.NewRelay(cfg.Relay.RelayConfig, nil); err != nil {
		t.Fatal(err)
	}
	if a.egress, err = gateway.NewEgress(cfg.Egress.EgressConfig, nil); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name, text string
		want       ReloadReport
	}{
		{"allow and rate", strings.Replace(base, "  allow: [198.18.2.0/24]\n", "  allow: [198.18.2.0/24, 198.18.3.0/24]\n  rate: 100\n", 1),
			ReloadReport{Applied: []string{"Egress.Allow", "Egress.Rate"}}},
		{"a port", strings.Replace(base, "127.0.0.1:7100", "127.0.0.1:7101", 1),
			ReloadReport{Applied: []string{"Egress.Allow", "Egress.Rate"}, Restart: []string{"Egress.Listeners"}}},
	} {
		rep, err := a.Apply(context.Background(), load(step.text))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(step.want, rep); diff != "" {
			t.Errorf("%s: report (-want +got):\n%s", step.name, diff)
		}
	}
	// A file whose new allowlist leaves a port's destination out is
	// refused before anything is applied.
	bad := strings.Replace(base, "  allow: [198.18.2.0/24]\n", "  allow: [198.18.3.0/24]\n", 1)
	if _, err := config.Load(writeConfig(t, bad), nil); err == nil || !strings.Contains(err.Error(), "egress.listen[0].destination: 198.18.2.10:9000 is outside allow") {
		t.Errorf("an allowlist without a port's destination: %v", err)
	}
}

// reloadBase is the smallest valid configuration the reload tests edit.
const reloadBase = `node: n1
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

// writeConfig writes text to a configuration file of its own.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadConfig loads text as the agent would a file.
func loadConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	c, err := config.Load(writeConfig(t, text), nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
