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
	members, err := c.Clients["n1"].Client().Agent().Members(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 5 {
		t.Fatalf("%d members, want 5", len(members))
	}
	if l := c.Leader(t); l == nil || !l.Server {
		t.Fatalf("leader %v", l)
	}
}
