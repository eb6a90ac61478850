package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"driftgate/internal/config"
)

// TestHooks: hooks run in order with the transition in the environment; a
// failing or hanging hook is counted and cut off by its timeout; enqueue
// never blocks.
func TestHooks(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hooks := []config.Hook{
		{Name: "first", Command: []string{script("a", `echo "a $DRIFTGATE_PREVIOUS_ROLE>$DRIFTGATE_ROLE $DRIFTGATE_EPOCH $DRIFTGATE_REASON $DRIFTGATE_VIPS" >> `+out)}, Timeout: time.Second},
		{Name: "fails", Command: []string{script("b", "exit 3")}, Timeout: time.Second},
		{Name: "hangs", Command: []string{script("c", "sleep 10")}, Timeout: 200 * time.Millisecond},
		{Name: "last", Command: []string{script("d", `echo "d $DRIFTGATE_ROLE" >> `+out)}, Timeout: time.Second},
	}
	h := newHookRunner(hooks, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	start := time.Now()
	h.enqueue(transitionEvent{From: RoleCandidate, To: RolePrimary, Reason: "won", Epoch: 42, Node: "n1", VIPs: []string{"198.18.0.100/24"}})
	h.enqueue(transitionEvent{From: RolePrimary, To: RoleStandby, Reason: "step-down", Epoch: 42})
	if time.Since(start) > 50*time.Millisecond {
		t.Fatal("enqueue blocked")
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.ran.Load() < 8 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	got, _ := os.ReadFile(out)
	want := "a candidate>primary 42 won 198.18.0.100/24\nd primary\na primary>standby 42 step-down \nd standby\n"
	if string(got) != want {
		t.Fatalf("hook output:\n%s\nwant:\n%s", got, want)
	}
	if h.ran.Load() != 8 || h.failed.Load() != 4 {
		t.Fatalf("ran %d failed %d, want 8 and 4 (two failing, two timed out)", h.ran.Load(), h.failed.Load())
	}
	if el := time.Since(start); el > 3*time.Second || strings.Contains(string(got), "sleep") {
		t.Fatalf("hooks took %v: the timeout did not cut the hanging hook", el)
	}
}

// TestHooksAtStop: the transitions queued when the agent stops — the ones a
// hook that reacts to losing the VIP is for — still run, each to
// completion (a hook running at that moment is not killed either); past
// the stop's budget what is left is dropped and counted.
func TestHooksAtStop(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	slow := filepath.Join(dir, "slow")
	if err := os.WriteFile(slow, []byte("#!/bin/sh\nsleep 0.3\necho \"$DRIFTGATE_PREVIOUS_ROLE>$DRIFTGATE_ROLE\" >> "+out+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := newHookRunner([]config.Hook{{Name: "slow", Command: []string{slow}, Timeout: 5 * time.Second}}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	h.enqueue(transitionEvent{From: RoleCandidate, To: RolePrimary})
	h.enqueue(transitionEvent{From: RolePrimary, To: RoleStandby})
	h.enqueue(transitionEvent{From: RoleStandby, To: RoleStopping})
	cancel() // the stop, while the first hook runs
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if want := "candidate>primary\nprimary>standby\nstandby>stopping\n"; string(got) != want {
		t.Fatalf("hooks at stop wrote:\n%s\nwant:\n%s", got, want)
	}
	if h.failed.Load() != 0 {
		t.Fatalf("%d hooks failed at the stop", h.failed.Load())
	}

	// Past the budget: the running hook is cut at the deadline, the rest
	// dropped and counted.
	os.Remove(out)
	h.enqueue(transitionEvent{From: RolePrimary, To: RoleStandby})
	h.enqueue(transitionEvent{From: RoleStandby, To: RoleStopping})
	h.drain(time.Now().Add(100 * time.Millisecond))
	if h.dropped.Load() != 1 || h.failed.Load() != 1 {
		t.Fatalf("past the budget: dropped %d failed %d, want 1 and 1", h.dropped.Load(), h.failed.Load())
	}
}
