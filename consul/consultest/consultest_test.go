package consultest

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestStartServer(t *testing.T) {
	start := time.Now()
	a := StartServer(t)
	t.Logf("single server ready in %v", time.Since(start).Round(time.Millisecond))
	kv := a.Client().KV()
	if _, err := kv.Put(&api.KVPair{Key: "x", Value: []byte("y")}, nil); err != nil {
		t.Fatal(err)
	}
	p, _, err := kv.Get("x", nil)
	if err != nil || p == nil || string(p.Value) != "y" {
		t.Fatalf("get: %v %v", p, err)
	}
}

func TestStartCluster(t *testing.T) {
	start := time.Now()
	c := StartCluster(t, 3, "n1", "n2")
	t.Logf("3 servers + 2 clients ready in %v", time.Since(start).Round(time.Millisecond))
	// Gossip converges within a few seconds of the last join.
	deadline := time.Now().Add(20 * time.Second)
	for {
		members, err := c.Clients["n1"].Client().Agent().Members(false)
		if err != nil {
			t.Fatal(err)
		}
		if len(members) == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d members after 20s, want 5", len(members))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if l := c.Leader(t); l == nil || !l.Server {
		t.Fatalf("leader %v", l)
	}
}
