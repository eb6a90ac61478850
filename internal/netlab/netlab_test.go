package netlab

import (
	"os/exec"
	"strings"
	"testing"
)

func TestLabConnectsAndCleansUp(t *testing.T) {
	RequirePrivileged(t)
	var names []string
	t.Run("lab", func(t *testing.T) {
		lab := New(t, "x", "y")
		x, y := lab.Host("x"), lab.Host("y")
		for _, dst := range []string{y.Addr4.Addr().String(), y.Addr6.Addr().String()} {
			if out, err := x.Command(t.Context(), "ping", "-c", "1", "-W", "2", dst).CombinedOutput(); err != nil {
				t.Fatalf("ping %s from x: %v\n%s", dst, err, out)
			}
		}
		if got := y.IP("-br", "addr", "show", "dev", "eth0"); !strings.Contains(got, "198.18.0.12/24") {
			t.Fatalf("y eth0: %s", got)
		}
		names = []string{lab.BridgeNS, x.NS, y.NS}
	})
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.Contains(string(out), n) {
			t.Errorf("namespace %s still exists after the test", n)
		}
	}
}
