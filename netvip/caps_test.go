package netvip

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"driftgate/internal/netlab"
)

// TestMain runs a helper when re-executed with NETVIP_HELPER set.
func TestMain(m *testing.M) {
	switch os.Getenv("NETVIP_HELPER") {
	case "":
		os.Exit(m.Run())
	case "add":
		mgr, err := New(VIP{Prefix: netip.MustParsePrefix("198.18.0.100/24"), Iface: "eth0"})
		if err == nil {
			err = mgr.Add(time.Time{})
		}
		fmt.Println(err)
	case "announce":
		_, err := NewAnnouncer(VIP{Prefix: netip.MustParsePrefix("198.18.0.11/24"), Iface: "eth0"}, AnnounceConfig{Count: 1, Interval: time.Second}, func() bool { return true })
		fmt.Println(err)
	}
	os.Exit(0)
}

// TestMissingCapabilityNamed runs Add and NewAnnouncer without
// CAP_NET_ADMIN and CAP_NET_RAW (dropped from the bounding set, so even
// root lacks them) and checks that the error names the capability.
func TestMissingCapabilityNamed(t *testing.T) {
	lab := netlab.New(t, "a")
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv not found (apt-get install util-linux)")
	}
	self, _ := os.Executable()
	for helper, want := range map[string]string{
		"add":      "adding VIP 198.18.0.100/24 on eth0: operation not permitted (needs CAP_NET_ADMIN)",
		"announce": "(needs CAP_NET_RAW)",
	} {
		cmd := exec.Command("ip", "netns", "exec", lab.Host("a").NS, "setpriv", "--bounding-set", "-net_admin,-net_raw", "--", self)
		cmd.Env = append(os.Environ(), "NETVIP_HELPER="+helper)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s without capabilities: %v, output %q; want it to contain %q", helper, err, out, want)
		}
	}
}
