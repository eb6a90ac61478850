package consul

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"driftgate/internal/testkit"
)

// TestLeaseBreak: the holder freezes (no renewals, no drop) while Consul
// sees nothing wrong (its heartbeat goes on, its session stays valid). The
// standby sees the lease record stop and breaks the lock T_wait after the
// last renewal it saw: it binds only after the frozen holder's lease ended
// (the tracker checks), with a higher epoch. Thawed, the old holder finds
// its lease expired and drops; the new holder keeps the lock.
func TestLeaseBreak(t *testing.T) {
	c := sharedServer(t)
	vip := &vipTracker{t: t}
	tm := testTiming()
	ns := []*node{startNode(t, c, vip, "test/break", "n1", nodeOpts{}), startNode(t, c, vip, "test/break", "n2", nodeOpts{})}
	testkit.WaitFor(t, "a holder", 10*time.Second, func() bool { return vip.current() != "" })
	time.Sleep(2 * tm.ConfirmInterval) // a few renewals
	old := holderOf(vip, ns)
	other := ns[0]
	if other == old {
		other = ns[1]
	}
	oldBind, _ := old.last(Bind)
	vip.freeze(old.name)
	old.freeze()
	frozen := time.Now()
	took := testkit.WaitFor(t, "the standby to take over", 10*time.Second, func() bool { return vip.current() == other.name })
	bind, _ := other.last(Bind)
	if bind.Epoch <= oldBind.Epoch {
		t.Fatalf("epoch after the break %d, not above %d", bind.Epoch, oldBind.Epoch)
	}
	// T_wait after the last renewal seen, plus priority and a renewal
	// interval (the freeze lands between two renewals).
	limit := tm.TWait + 100*time.Millisecond + tm.ConfirmInterval + 300*time.Millisecond
	t.Logf("holder %s frozen; %s bound after %v (t_wait %v, limit %v), epoch %d → %d", old.name, other.name,
		took.Round(time.Millisecond), tm.TWait, limit, oldBind.Epoch, bind.Epoch)
	if took > limit {
		t.Fatalf("the break took %v, want ≤ %v", took, limit)
	}
	if took < tm.TWait-tm.ConfirmInterval-50*time.Millisecond {
		t.Fatalf("the standby bound %v after the freeze: before T_wait %v could have passed since the last renewal", took, tm.TWait)
	}
	vip.freeze("")
	old.unfreeze()
	testkit.WaitFor(t, "the thawed holder to drop", 5*time.Second, func() bool { return old.count(MustDrop) > 0 })
	drop, _ := old.last(MustDrop)
	if !strings.Contains(drop.Reason, "lease expired") && !strings.Contains(drop.Reason, "lost the lock") {
		t.Fatalf("thawed holder dropped because %q", drop.Reason)
	}
	time.Sleep(2 * tm.TWait)
	if vip.current() != other.name || other.count(MustDrop) != 0 {
		t.Fatalf("after the thaw: holder %q, %s dropped %d times", vip.current(), other.name, other.count(MustDrop))
	}
	t.Logf("thawed %s dropped after %v: %s", old.name, time.Since(frozen).Round(time.Millisecond), drop.Reason)
}

// TestNoBreakWhileRenewing: with a healthy holder renewing, a standby
// never breaks the lock, over many T_wait periods.
func TestNoBreakWhileRenewing(t *testing.T) {
	c := sharedServer(t)
	vip := &vipTracker{t: t}
	tm := testTiming()
	ns := []*node{startNode(t, c, vip, "test/nobreak", "n1", nodeOpts{}), startNode(t, c, vip, "test/nobreak", "n2", nodeOpts{})}
	testkit.WaitFor(t, "a holder", 10*time.Second, func() bool { return vip.current() != "" })
	time.Sleep(5 * tm.TWait)
	if binds := ns[0].count(Bind) + ns[1].count(Bind); binds != 1 {
		t.Fatalf("%d binds in 5·t_wait with a healthy holder, want 1", binds)
	}
}

// TestHolderBroken: a standby (here the test, with a session of its own)
// breaks the lock as contend does; the holder's next renewal fails and it
// drops within a renewal interval and a request timeout.
func TestHolderBroken(t *testing.T) {
	c := sharedServer(t)
	vip := &vipTracker{t: t}
	tm := testTiming()
	n := startNode(t, c, vip, "test/broken", "n1", nodeOpts{})
	testkit.WaitFor(t, "a holder", 10*time.Second, func() bool { return vip.current() == "n1" })
	kv := c.KV()
	pair, _, err := kv.Get("test/broken", nil)
	if err != nil || pair == nil {
		t.Fatalf("reading the key: %v", err)
	}
	sess, _, err := c.Session().Create(&api.SessionEntry{Name: "breaker", Behavior: api.SessionBehaviorRelease, LockDelay: time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Session().Destroy(sess, nil)
	ok, resp, _, err := kv.Txn(api.KVTxnOps{
		{Verb: api.KVDeleteCAS, Key: "test/broken", Index: pair.ModifyIndex},
		{Verb: api.KVLock, Key: "test/broken", Value: []byte(`{"node":"breaker"}`), Session: sess},
	}, nil)
	if err != nil || !ok {
		t.Fatalf("break: %v %+v", err, resp)
	}
	broken := time.Now()
	took := testkit.WaitFor(t, "the holder to drop", 5*time.Second, func() bool { return n.count(MustDrop) > 0 })
	drop, _ := n.last(MustDrop)
	if !strings.Contains(drop.Reason, "lost the lock") {
		t.Fatalf("drop reason %q, want lost the lock", drop.Reason)
	}
	if limit := tm.ConfirmInterval + tm.RequestTimeout + 100*time.Millisecond; took > limit {
		t.Fatalf("the holder dropped %v after the break, want ≤ %v", took, limit)
	}
	t.Logf("broken at %s; holder dropped after %v: %s", broken.Format("15:04:05.000"), took.Round(time.Millisecond), drop.Reason)
}

// TestStatusEligible: status tells which standby would take over, and why
// one would not (its check critical: no session can be made).
func TestStatusEligible(t *testing.T) {
	c := sharedServer(t)
	const key = "test/eligible"
	vip := &vipTracker{t: t}
	l1, l2 := checkTarget(t, "127.0.0.1:0"), checkTarget(t, "127.0.0.1:0")
	n1 := startNode(t, c, vip, key, "n1", nodeOpts{checks: tcpCheck(l1)})
	testkit.WaitFor(t, "n1 to hold", 10*time.Second, func() bool { return vip.current() == "n1" })
	n2 := startNode(t, c, vip, key, "n2", nodeOpts{checks: tcpCheck(l2)})
	read := func() Status {
		st, err := ReadStatus(t.Context(), c, key, "driftgate")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	testkit.WaitFor(t, "n2 eligible", 10*time.Second, func() bool { return read().EligibleStandbys == 1 && n2.el.Snapshot().Eligible })
	for _, ns := range read().Nodes {
		if want := ns.Node == "n2"; ns.Eligible != want {
			t.Fatalf("%s eligible %v (%s), want %v", ns.Node, ns.Eligible, ns.Ineligible, want)
		}
	}
	l2.Close() // n2's check turns critical: its session goes, no new one
	if _, ok := testkit.Poll(10*time.Second, func() bool {
		st := read()
		return st.EligibleStandbys == 0 && !n2.el.Snapshot().Eligible
	}); !ok {
		t.Fatalf("n2 still eligible: status %+v; its own view %+v", read(), n2.el.Snapshot())
	}
	// The node's own view names the refusal between its retries; while a
	// retry is in flight it says "creating a session" (a single read once
	// caught that on a busy machine).
	var why, own string
	if _, ok := testkit.Poll(10*time.Second, func() bool {
		for _, ns := range read().Nodes {
			if ns.Node == "n2" {
				why = ns.Ineligible
			}
		}
		own = n2.el.Snapshot().Ineligible
		return strings.Contains(why, "critical") && strings.Contains(own, "critical")
	}); !ok {
		t.Fatalf("ineligible because %q (status) and %q (the node's own view), want the critical check named", why, own)
	}
	_ = n1
	t.Logf("n2 ineligible: status %q; its own view %q", why, own)
}

// TestLeaseBreakNewStandby: a standby that has only just started to watch
// (its lease watch may answer after its first blocking read of the key was
// sent) still breaks the lock of a holder that freezes at once.
func TestLeaseBreakNewStandby(t *testing.T) {
	c := sharedServer(t)
	vip := &vipTracker{t: t}
	tm := testTiming()
	n1 := startNode(t, c, vip, "test/newstandby", "n1", nodeOpts{})
	testkit.WaitFor(t, "n1 to hold", 10*time.Second, func() bool { return vip.current() == "n1" })
	n2 := startNode(t, c, vip, "test/newstandby", "n2", nodeOpts{})
	testkit.WaitFor(t, "n2 to contend", 10*time.Second, func() bool { return n2.el.Snapshot().Eligible })
	vip.freeze("n1")
	n1.freeze()
	took := testkit.WaitFor(t, "n2 to take over", 10*time.Second, func() bool { return vip.current() == "n2" })
	limit := tm.TWait + 100*time.Millisecond + tm.ConfirmInterval + 300*time.Millisecond
	t.Logf("n1 frozen just after n2 began to contend: n2 bound after %v (limit %v)", took.Round(time.Millisecond), limit)
	if took > limit {
		t.Fatalf("the new standby took %v to break the lock, want ≤ %v", took, limit)
	}
}

// TestFrozenDaemon: the holder's daemon freezes (no renewals, no
// heartbeat): Consul ends its session after heartbeat_ttl, and the standby
// takes over through whichever proof completes first.
func TestFrozenDaemon(t *testing.T) {
	// Consul ends the frozen holder's session (its heartbeat check)
	// at about the time the standby's lease proof completes, so the
	// break races the key changing: a refused break must be followed
	// by a fresh read of the key, not by more breaks (a livelock the
	// chaos suite found with the default profile).
	for i := range 4 {
		tm := testTiming()
		tm.HeartbeatTTL = tm.TWait + time.Duration(i-1)*50*time.Millisecond
		tm.HeartbeatInterval = tm.HeartbeatTTL / 3
		t.Run(fmt.Sprintf("heartbeat_ttl=%v", tm.HeartbeatTTL.Round(time.Millisecond)), func(t *testing.T) { frozenDaemon(t, tm, i) })
	}
}

func frozenDaemon(t *testing.T, tm Timing, i int) {
	c := sharedServer(t)
	vip := &vipTracker{t: t}
	key := fmt.Sprintf("test/frozen%d", i)
	n1 := startNode(t, c, vip, key, "n1", nodeOpts{timing: tm})
	testkit.WaitFor(t, "n1 to hold", 10*time.Second, func() bool { return vip.current() == "n1" })
	n2 := startNode(t, c, vip, key, "n2", nodeOpts{timing: tm})
	testkit.WaitFor(t, "n2 eligible", 10*time.Second, func() bool { return n2.el.Snapshot().Eligible })
	time.Sleep(3 * tm.ConfirmInterval)
	vip.freeze("n1")
	n1.freeze()
	n1.stopHB()
	took := testkit.WaitFor(t, "n2 to take over", 15*time.Second, func() bool { return vip.current() == "n2" })
	limit := max(tm.TWait, tm.HeartbeatTTL+tm.LockDelay) + 100*time.Millisecond + tm.ConfirmInterval + 500*time.Millisecond
	t.Logf("n1's daemon frozen: n2 bound after %v (limit %v)", took.Round(time.Millisecond), limit)
	if took > limit {
		t.Fatalf("took %v, want ≤ %v", took, limit)
	}
}
