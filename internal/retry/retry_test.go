package retry

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestBackoff(t *testing.T) {
	var got []time.Duration
	for n := 0; n <= 9; n++ {
		got = append(got, Backoff(n))
	}
	ms := time.Millisecond
	want := []time.Duration{100 * ms, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 5 * time.Second, 5 * time.Second, 5 * time.Second}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("Backoff(0..9) (-want +got):\n%s", d)
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep with a live context reported cancellation")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep with a cancelled context reported the full wait")
	}
	if time.Since(start) > time.Second {
		t.Fatal("Sleep did not return at once on a cancelled context")
	}
}
