package agent

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeFence records, in its VIP's history, what the term did to the
// kernel fence, so the order of the two is seen.
type fakeFence struct{ v *fakeVIP }

func (f *fakeFence) Extend(until time.Time) error {
	f.v.mu.Lock()
	defer f.v.mu.Unlock()
	now := f.v.clock.Now()
	if !until.After(now) {
		f.v.ops = append(f.v.ops, "fence now at +"+f.v.rel(now))
		return nil
	}
	f.v.ops = append(f.v.ops, fmt.Sprintf("fence until +%s at +%s", f.v.rel(until), f.v.rel(now)))
	return nil
}

// TestTermFence: the kernel fence lets the VIP through before it is added,
// follows every renewal, and closes before the VIP is removed; a term
// announces nothing past its deadline, even before it is dropped.
func TestTermFence(t *testing.T) {
	clock := newFakeClock()
	v := &fakeVIP{clock: clock, start: clock.Now()}
	start := clock.Now()
	tm, err := bindTerm(context.Background(), 7, start.Add(700*time.Millisecond), []VIP{v}, []string{"vip"}, &fakeFence{v}, nil, clock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(100 * time.Millisecond)
	tm.renew(start.Add(900 * time.Millisecond))
	clock.Advance(700 * time.Millisecond)
	before := tm.allowed()
	clock.Advance(150 * time.Millisecond)
	after := tm.allowed()
	if err := tm.drop(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"fence until +700ms at +0s", "add until +700ms at +0s",
		"fence until +900ms at +100ms", "add until +900ms at +100ms",
		"fence now at +950ms", "remove at +950ms",
	}
	if diff := cmp.Diff(want, v.history()); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if !before || after {
		t.Fatalf("announcements allowed at +800ms: %v (want true), at +950ms: %v (want false: past the deadline)", before, after)
	}
}
