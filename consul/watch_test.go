package consul

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"driftgate/consul/consultest"
)

// TestBlocking: the index rules of a series of blocking queries, step by
// step.
func TestBlocking(t *testing.T) {
	var b blocking
	var got []string
	step := func(what string) { got = append(got, fmt.Sprintf("%s: idx %d fails %d", what, b.idx, b.fails)) }
	b.answered(&api.QueryMeta{LastIndex: 40})
	step("answer 40")
	b.answered(&api.QueryMeta{LastIndex: 41})
	step("answer 41")
	b.answered(&api.QueryMeta{LastIndex: 7})
	step("went backwards")
	b.answered(&api.QueryMeta{LastIndex: 0})
	step("index 0")
	n1, w1 := b.failed()
	step("failed")
	n2, w2 := b.failed()
	step("failed again")
	b.answered(&api.QueryMeta{LastIndex: 50})
	step("answer 50")
	b.reset()
	step("reset")
	want := []string{
		"answer 40: idx 40 fails 0", "answer 41: idx 41 fails 0", "went backwards: idx 0 fails 0", "index 0: idx 1 fails 0",
		"failed: idx 0 fails 1", "failed again: idx 0 fails 2", "answer 50: idx 50 fails 0", "reset: idx 0 fails 0",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("(-want +got):\n%s", d)
	}
	if n1 != 1 || n2 != 2 || w1 != 100*time.Millisecond || w2 != 200*time.Millisecond {
		t.Fatalf("failures %d, %d waits %v, %v; want 1, 2 and 100ms, 200ms", n1, n2, w1, w2)
	}
}

// TestRefused: only a client error (not 429) is final.
func TestRefused(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{api.StatusError{Code: 403, Body: "Permission denied"}, true},
		{api.StatusError{Code: 400, Body: "bad check"}, true},
		{api.StatusError{Code: 429, Body: "rate limited"}, false},
		{api.StatusError{Code: 500, Body: "rpc error"}, false},
		{errors.New("dial tcp 127.0.0.1:8500: connection refused"), false},
	} {
		err := refused(fmt.Errorf("registering: %w", tt.err))
		if got := errors.Is(err, ErrRefused); got != tt.want {
			t.Errorf("%v: refused %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestRenewBackoff: overload answers back renewals off, but never past the
// last chance before the deadline; other failures do not.
func TestRenewBackoff(t *testing.T) {
	tm := DefaultTiming()
	if n := nextOverload(0, api.StatusError{Code: 429}); n != 1 {
		t.Fatalf("429: overloads %d, want 1", n)
	}
	if n := nextOverload(2, api.StatusError{Code: 500, Body: "No cluster leader"}); n != 3 {
		t.Fatalf("500: overloads %d, want 3", n)
	}
	if n := nextOverload(3, errors.New("context deadline exceeded")); n != 0 {
		t.Fatalf("timeout: overloads %d, want 0", n)
	}
	if got := renewBackoff(0, time.Now().Add(time.Hour), tm); !got.IsZero() {
		t.Fatalf("no overload: next renewal %v, want at once", got)
	}
	far := time.Now().Add(time.Hour)
	if got := time.Until(renewBackoff(3, far, tm)); got < 350*time.Millisecond || got > 400*time.Millisecond {
		t.Fatalf("3 overloads, far deadline: next in %v, want 400ms", got)
	}
	near := time.Now().Add(2*tm.RequestTimeout + 300*time.Millisecond)
	if got := time.Until(renewBackoff(7, near, tm)); got > 300*time.Millisecond {
		t.Fatalf("near deadline: next in %v, want at most 300ms (two request timeouts before the deadline)", got)
	}
}

// TestWatchRecheck: a receive on recheck ends the blocking query in flight
// and asks again without the wait index (after a Consul rebuild the old
// index is higher than any the cluster has: the query would wait its whole
// wait time); without one, the query blocks.
func TestWatchRecheck(t *testing.T) {
	c := consultest.StartServer(t).Client()
	if _, err := c.KV().Put(&api.KVPair{Key: "w", Value: []byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	recheck := make(chan struct{})
	asked := make(chan uint64, 16)
	go watch(ctx, time.Second, recheck, func(q *api.QueryOptions) (*api.QueryMeta, bool, error) {
		asked <- q.WaitIndex
		_, meta, err := c.KV().Get("w", q)
		return meta, false, err
	}, nil)
	next := func(what string) uint64 {
		t.Helper()
		select {
		case idx := <-asked:
			return idx
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no query within 5s", what)
			return 0
		}
	}
	if idx := next("first"); idx != 0 {
		t.Fatalf("first query waits on index %d, want 0", idx)
	}
	if idx := next("second"); idx == 0 {
		t.Fatal("second query does not block (wait index 0)")
	}
	select {
	case idx := <-asked:
		t.Fatalf("a query (index %d) while nothing changed and no recheck", idx)
	case <-time.After(300 * time.Millisecond):
	}
	recheck <- struct{}{}
	if idx := next("after recheck"); idx != 0 {
		t.Fatalf("after a recheck the query waits on index %d, want 0", idx)
	}
}
