package consul

import (
	"context"
	"log/slog"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"driftgate/consul/consultest"
	"driftgate/internal/testkit"
)

// TestACLPolicy runs two nodes against a server with ACLs on (default
// deny), each with a token of exactly the policy docs/operations.md gives:
// registration, election, the lease renewals, a standby breaking the lock
// of a frozen holder, and status (with sessions) all work with it.
func TestACLPolicy(t *testing.T) {
	doc, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)## Consul ACL policy.*?```hcl\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/operations.md has no ACL policy block")
	}
	srv := consultest.StartServerWithACL(t, "root-token-for-tests")
	mgmt := srv.Client()
	anon, _ := NewClient(ClientConfig{Address: srv.HTTPAddr})
	if _, err := anon.KV().Put(&api.KVPair{Key: "driftgate/leader", Value: []byte("x")}, nil); err == nil {
		t.Fatal("ACLs are not enforced: an anonymous write went through")
	}
	pol, _, err := mgmt.ACL().PolicyCreate(&api.ACLPolicy{Name: "driftgate", Rules: string(m[1])}, nil)
	if err != nil {
		t.Fatalf("the documented policy: %v\n%s", err, m[1])
	}
	client := func() *api.Client {
		tok, _, err := mgmt.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewClient(ClientConfig{Address: srv.HTTPAddr, Token: tok.SecretID})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	vip := &vipTracker{t: t}
	tm := testTiming()
	n1 := startNode(t, client(), vip, "driftgate/leader", "n1", nodeOpts{})
	testkit.WaitFor(t, "n1 to hold with the documented policy", 10*time.Second, func() bool { return vip.current() == "n1" })
	c2 := client()
	n2 := startNode(t, c2, vip, "driftgate/leader", "n2", nodeOpts{})
	testkit.WaitFor(t, "n2 eligible", 10*time.Second, func() bool { return n2.el.Snapshot().Eligible })
	time.Sleep(2 * tm.ConfirmInterval)
	vip.freeze("n1")
	n1.freeze()
	testkit.WaitFor(t, "n2 to break the lock with the documented policy", 10*time.Second, func() bool { return vip.current() == "n2" })
	st, err := ReadStatus(t.Context(), c2, "driftgate/leader", "driftgate")
	if err != nil {
		t.Fatalf("status with the documented policy: %v", err)
	}
	if st.Holder != "n2" {
		t.Fatalf("status holder %q, want n2", st.Holder)
	}
	// The receivers' watches: the leader key's terms and the instances.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	epochs := make(chan uint64, 16)
	go WatchEpochs(ctx, c2, "driftgate/leader", time.Second, nil, nil, func(e uint64) { epochs <- e })
	select {
	case e := <-epochs:
		if e == 0 {
			t.Fatal("WatchEpochs reported epoch 0")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WatchEpochs saw no term with the documented policy")
	}
	instances := make(chan Instances, 16)
	go WatchReceivers(ctx, c2, "driftgate", time.Second, slog.New(slog.DiscardHandler), func(in Instances) error { instances <- in; return nil })
	select {
	case <-instances:
	case <-time.After(10 * time.Second):
		t.Fatal("WatchReceivers got no answer with the documented policy")
	}
	n1.mu.Lock()
	renewed := n1.renewals
	n1.mu.Unlock()
	if renewed == 0 {
		t.Fatal("n1 never renewed its lease with the documented policy")
	}
}
