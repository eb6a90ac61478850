package consul

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"driftgate/consul/consultest"

	"driftgate/internal/testkit"
)

// srvPorts asks the agent's DNS interface for name's SRV records.
func srvPorts(t *testing.T, dnsAddr, name string) []uint16 {
	t.Helper()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", dnsAddr)
	}}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, srvs, err := r.LookupSRV(ctx, "", "", name)
	if err != nil {
		if de, ok := err.(*net.DNSError); ok && de.IsNotFound {
			return nil
		}
		t.Fatalf("SRV %s: %v", name, err)
	}
	var ports []uint16
	for _, s := range srvs {
		ports = append(ports, s.Port)
	}
	return ports
}

// TestPrimaryTagAndStatus: the holder tags itself primary, so
// primary.driftgate.service.consul resolves to it through Consul DNS;
// changing the tag does not disturb the session; Status reports holder,
// epoch and every node's role and checks; deregistration removes a node.
func TestPrimaryTagAndStatus(t *testing.T) {
	agent := consultest.StartServer(t)
	c := agent.Client()
	vip := &vipTracker{t: t}
	const key = "test/dns"
	ns := []*node{startNode(t, c, vip, key, "n1", nodeOpts{}), startNode(t, c, vip, key, "n2", nodeOpts{})}
	// Each node registered port 5000; give them distinct ports to tell
	// them apart in SRV answers.
	for i, n := range ns {
		n.reg.cfg.Port = 6001 + i
		if err := n.reg.SetRole(t.Context(), "standby", false); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, "a holder", 10*time.Second, func() bool { return vip.current() != "" })
	h := holderOf(vip, ns)
	if err := h.reg.SetRole(t.Context(), "primary", true); err != nil {
		t.Fatal(err)
	}
	want := uint16(h.reg.cfg.Port)
	testkit.WaitFor(t, "DNS to name the primary", 5*time.Second, func() bool {
		p := srvPorts(t, agent.DNSAddr, "primary.driftgate.service.consul")
		return len(p) == 1 && p[0] == want
	})
	if all := srvPorts(t, agent.DNSAddr, "driftgate.service.consul"); len(all) != 2 {
		t.Fatalf("driftgate.service.consul has %d instances, want 2", len(all))
	}
	// Re-registering for the tag must not have touched the session.
	time.Sleep(1500 * time.Millisecond)
	if h.count(MustDrop) != 0 || vip.current() != h.name {
		t.Fatalf("changing the service tags disturbed the holder: %d drops, holder %q", h.count(MustDrop), vip.current())
	}

	st, err := ReadStatus(t.Context(), c, key, "driftgate")
	if err != nil {
		t.Fatal(err)
	}
	bind, _ := h.last(Bind)
	if st.Holder != h.name || st.Epoch != bind.Epoch || !st.SessionHealthy || st.Since.IsZero() || len(st.Nodes) != 2 {
		t.Fatalf("status %+v, want holder %s epoch %d and 2 nodes", st, h.name, bind.Epoch)
	}
	for _, n := range st.Nodes {
		isHolder := n.ServiceID == "driftgate-"+h.name
		if n.Primary != isHolder || (n.Role == "primary") != isHolder || n.Checks["driftgate heartbeat"] != "passing" {
			t.Fatalf("node status %+v (holder %s)", n, h.name)
		}
	}
	// Step down: untag; the other node becomes holder.
	if err := h.el.StepDown(t.Context(), h.el.Snapshot().Epoch, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := h.reg.SetRole(t.Context(), "standby", false); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "DNS to drop the old primary", 5*time.Second, func() bool {
		p := srvPorts(t, agent.DNSAddr, "primary.driftgate.service.consul")
		return len(p) == 0 || p[0] != want
	})
	if err := h.reg.Deregister(t.Context()); err != nil {
		t.Fatal(err)
	}
	st, err = ReadStatus(t.Context(), c, key, "driftgate")
	if err != nil || len(st.Nodes) != 1 {
		t.Fatalf("after deregistering: %+v, %v", st.Nodes, err)
	}
}

func TestCheckSpecValidate(t *testing.T) {
	tests := []struct {
		c    CheckSpec
		want string
	}{
		{CheckSpec{Name: "a", HTTP: "http://127.0.0.1/", Interval: time.Second, Timeout: time.Second}, ""},
		{CheckSpec{HTTP: "http://x", Interval: time.Second, Timeout: time.Second}, "name: required"},
		{CheckSpec{Name: "a", Interval: time.Second, Timeout: time.Second}, "exactly one of http, tcp and args"},
		{CheckSpec{Name: "a", TCP: "x:1", Args: []string{"true"}, Interval: time.Second, Timeout: time.Second}, "exactly one"},
		{CheckSpec{Name: "a", TCP: "x:1", Interval: 10 * time.Millisecond, Timeout: time.Millisecond}, "interval: 10ms is below 100ms"},
		{CheckSpec{Name: "a", TCP: "x:1", Interval: time.Second, Timeout: 2 * time.Second}, "timeout: 2s must be positive and at most the interval"},
	}
	for _, tt := range tests {
		err := tt.c.Validate()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.c, err, tt.want)
		}
	}
}

// TestRestore: checks the local agent lost are registered again; checks it
// kept keep their status.
func TestRestore(t *testing.T) {
	c := sharedServer(t)
	reg, err := Register(t.Context(), c, ServiceConfig{Name: "driftgate", ID: "driftgate-restore", Node: "restore", Port: 5000,
		HeartbeatTTL: time.Hour, LinkCheck: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Deregister(context.Background()) })
	if err := reg.SetLink(t.Context(), false, "carrier lost"); err != nil {
		t.Fatal(err)
	}
	if err := c.Agent().CheckDeregister(reg.HeartbeatID()); err != nil {
		t.Fatal(err)
	}
	if err := reg.Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	checks, err := c.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, id := range reg.CheckIDs() {
		if ch, ok := checks[id]; ok {
			got[id] = ch.Status
		}
	}
	want := map[string]string{reg.HeartbeatID(): "passing", "driftgate-restore:link": "critical"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("checks after Restore (-want +got):\n%s", diff)
	}
}

// TestUpdateChecks: a reload's new check definitions are registered in the
// status the checks have, so a session bound to them (a primary's) lives
// on; a check added or removed is refused (ErrChecksChanged), changing
// nothing.
func TestUpdateChecks(t *testing.T) {
	c := sharedServer(t)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer app.Close()
	spec := CheckSpec{Name: "app", HTTP: app.URL, Interval: 200 * time.Millisecond, Timeout: 100 * time.Millisecond}
	reg, err := Register(t.Context(), c, ServiceConfig{Name: "driftgate", ID: "driftgate-update", Node: "update", Port: 5000,
		HeartbeatTTL: time.Hour, Checks: []CheckSpec{spec}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Deregister(context.Background()) })
	const id = "driftgate-update:check:app"
	status := func() string {
		checks, err := c.Agent().Checks()
		if err != nil || checks[id] == nil {
			t.Fatalf("the agent's checks: %v, %v", checks, err)
		}
		return checks[id].Status
	}
	testkit.WaitFor(t, "the check to pass", 10*time.Second, func() bool { return status() == api.HealthPassing })
	// The servers take the session once the agent synced the passing check.
	var sess string
	testkit.WaitFor(t, "a session bound to the check", 10*time.Second, func() bool {
		sess, _, err = c.Session().Create(&api.SessionEntry{Name: "update", Checks: []string{"serfHealth", id}, LockDelay: time.Millisecond}, nil)
		return err == nil
	})
	defer c.Session().Destroy(sess, nil)

	// The new definition: another URL. Registered critical, the check
	// would end the session before its first run; kept passing, the
	// session lives and the new URL is asked.
	var hits atomic.Int64
	app2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hits.Add(1) }))
	defer app2.Close()
	spec.HTTP = app2.URL
	if err := reg.UpdateChecks(t.Context(), []CheckSpec{spec}); err != nil {
		t.Fatal(err)
	}
	if s := status(); s != api.HealthPassing {
		t.Fatalf("right after the update: %s, want passing", s)
	}
	testkit.WaitFor(t, "the new URL to be checked", 10*time.Second, func() bool { return hits.Load() >= 2 })
	if e, _, err := c.Session().Info(sess, &api.QueryOptions{RequireConsistent: true}); err != nil || e == nil {
		t.Fatalf("the session bound to the check is gone after the update (%v)", err)
	}
	other := CheckSpec{Name: "other", TCP: "127.0.0.1:1", Interval: time.Second, Timeout: time.Second}
	if err := reg.UpdateChecks(t.Context(), []CheckSpec{spec, other}); !errors.Is(err, ErrChecksChanged) {
		t.Fatalf("a check added: %v, want ErrChecksChanged", err)
	}
	if checks, _ := c.Agent().Checks(); checks["driftgate-update:check:other"] != nil {
		t.Fatal("a refused update registered the added check")
	}
}
