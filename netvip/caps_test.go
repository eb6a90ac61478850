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
	"driftgate/internal/testkit"
)

// TestMain runs a helper when re-executed by testkit.Command: each prints
// the error it got, for the test to read.
func TestMain(m *testing.M) {
	testkit.RunRole(map[string]testkit.Role{
		"add": func([]string) error {
			mgr, err := New(VIP{Prefix: netip.MustParsePrefix("198.18.0.100/24"), Iface: "eth0"})
			if err == nil {
				err = mgr.Add(time.Time{})
			}
			fmt.Println(err)
			return nil
		},
		"announce": func([]string) error {
			_, err := NewAnnouncer(VIP{Prefix: netip.MustParsePrefix("198.18.0.11/24"), Iface: "eth0"}, AnnounceConfig{Count: 1, Interval: time.Second}, func() bool { return true })
			fmt.Println(err)
			return nil
		},
	})
	os.Exit(m.Run())
}

// TestMissingCapabilityNamed runs Add and NewAnnouncer without
// CAP_NET_ADMIN and CAP_NET_RAW (dropped from the bounding set, so even
// root lacks them) and checks that the error names the capability.
func TestMissingCapabilityNamed(t *testing.T) {
	lab := netlab.New(t, "a")
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv not found (apt-get install util-linux)")
	}
	for helper, want := range map[string]string{
		"add":      "adding VIP 198.18.0.100/24 on eth0: operation not permitted (needs CAP_NET_ADMIN)",
		"announce": "(needs CAP_NET_RAW)",
	} {
		cmd := testkit.Command([]string{"ip", "netns", "exec", lab.Host("a").NS, "setpriv", "--bounding-set", "-net_admin,-net_raw", "--"}, helper)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s without capabilities: %v, output %q; want it to contain %q", helper, err, out, want)
		}
	}
}
