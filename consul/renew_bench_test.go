package consul

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"driftgate/consul/consultest"
)

// BenchmarkLeaseRenewal measures what the visible lease costs the holder
// and Consul: one renewal (a Raft write through a client agent to a
// three-server cluster) against the consistent read it replaced, in one
// run. ns/op is the latency of one request, sequentially; the holder sends
// one per confirm_interval (default profile: 5 writes/s for the cluster).
//
//	go test -run '^$' -bench LeaseRenewal -benchtime 200x ./consul
func BenchmarkLeaseRenewal(b *testing.B) {
	cl := consultest.StartCluster(b, 3, "holder")
	c := cl.Clients["holder"].Client()
	el, err := NewElection(c, Config{Key: "bench/leader", Node: "holder", Timing: testTiming()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	sess, _, err := c.Session().Create(&api.SessionEntry{Name: sessionName("holder"), Behavior: api.SessionBehaviorRelease, LockDelay: time.Millisecond}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ok, _, err := c.KV().Acquire(&api.KVPair{Key: "bench/leader", Value: leaderValue{Node: "holder", Session: sess}.encode(), Session: sess}, nil)
	if err != nil || !ok {
		b.Fatalf("acquiring: %v %v", ok, err)
	}
	pair, _, err := c.KV().Get("bench/leader", nil)
	if err != nil {
		b.Fatal(err)
	}
	epoch := pair.ModifyIndex
	b.Run("renewal=txn", func(b *testing.B) {
		out := make(chan confirmResult, 1)
		for i := 0; b.Loop(); i++ {
			el.renew(context.Background(), sess, epoch, uint64(i), out)
			if r := <-out; r.err != nil || !r.mine {
				b.Fatalf("renewal %d: %v %s", i, r.err, r.why)
			}
		}
	})
	b.Run("anchor=consistent-read", func(b *testing.B) {
		for b.Loop() {
			p, _, err := c.KV().Get("bench/leader", &api.QueryOptions{RequireConsistent: true})
			if err != nil || p == nil || p.Session != sess {
				b.Fatalf("read: %v", err)
			}
		}
	})
}
