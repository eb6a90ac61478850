package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"driftgate/internal/testkit"
)

// fakeRegistry records what the registrar wrote, failing the first
// failRole SetRole calls.
type fakeRegistry struct {
	mu       sync.Mutex
	calls    []string
	failRole int
	reconn   chan struct{}
}

func (f *fakeRegistry) record(s string) { f.mu.Lock(); f.calls = append(f.calls, s); f.mu.Unlock() }

func (f *fakeRegistry) SetRole(_ context.Context, role string, primary bool) error {
	f.mu.Lock()
	fail := f.failRole > 0
	f.failRole--
	f.mu.Unlock()
	if fail {
		f.record("role " + role + " failed")
		return errors.New("connection refused")
	}
	f.record(fmt.Sprintf("role %s primary=%v", role, primary))
	return nil
}

func (f *fakeRegistry) SetLink(_ context.Context, up bool, note string) error {
	f.record(fmt.Sprintf("link up=%v %s", up, note))
	return nil
}

func (f *fakeRegistry) Restore(context.Context) error { f.record("restore"); return nil }
func (f *fakeRegistry) Reconnected() <-chan struct{}  { return f.reconn }

func (f *fakeRegistry) history() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// TestRegistrar: everything is written at start; failed updates are
// retried with the latest wish; after the local agent reconnects everything
// is written again, unchanged or not.
func TestRegistrar(t *testing.T) {
	reg := &fakeRegistry{failRole: 3, reconn: make(chan struct{}, 1)}
	r := newRegistrar(reg, slog.New(slog.DiscardHandler))
	r.retryEvery = time.Millisecond
	r.set(func(w *regWant) { w.role, w.primary = "primary", true })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	wait := func(n int) {
		t.Helper()
		testkit.WaitFor(t, fmt.Sprintf("%d registry calls", n), 5*time.Second, func() bool { return len(reg.history()) >= n })
	}
	// At start everything is written, changed or not: Consul may have
	// restored stale check states.
	wait(5)
	r.set(func(w *regWant) { w.linkUp, w.linkNote = false, "carrier_lost" })
	wait(6)
	reg.reconn <- struct{}{}
	wait(9)
	want := []string{
		"role primary failed", "link up=true ",
		"role primary failed", "role primary failed", "role primary primary=true",
		"link up=false carrier_lost",
		"restore", "role primary primary=true", "link up=false carrier_lost",
	}
	if d := cmp.Diff(want, reg.history()); d != "" {
		t.Fatalf("registry calls (-want +got):\n%s", d)
	}
}
