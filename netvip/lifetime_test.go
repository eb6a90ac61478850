package netvip

import (
	"errors"
	"testing"
	"time"
)

// TestExpires: whole seconds, rounded down after ExpirySlack, so the kernel
// removes the address before the lease ends even when it is late.
func TestExpires(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		left    time.Duration
		want    time.Duration // after now; -1: ErrLeaseTooShort
		wantLft int
	}{
		{2700 * time.Millisecond, 2 * time.Second, 2},
		{2300 * time.Millisecond, 2 * time.Second, 2},
		{2299 * time.Millisecond, time.Second, 1},
		{1300 * time.Millisecond, time.Second, 1},
		{1299 * time.Millisecond, -1, 0},
	} {
		got, err := Expires(now.Add(tt.left), now, false)
		lft, _ := lifetime(now.Add(tt.left), now, false)
		switch {
		case tt.want < 0:
			if !errors.Is(err, ErrLeaseTooShort) {
				t.Errorf("lease of %v: %v, %v; want ErrLeaseTooShort", tt.left, got, err)
			}
		case err != nil || got.Sub(now) != tt.want || lft != tt.wantLft:
			t.Errorf("lease of %v: expires after %v (lifetime %d s), %v; want %v (%d s)", tt.left, got.Sub(now), lft, err, tt.want, tt.wantLft)
		case got.Add(ExpirySlack).After(now.Add(tt.left)):
			t.Errorf("lease of %v: the kernel could remove it after the lease ends", tt.left)
		}
	}
	if got, err := Expires(time.Time{}, now, false); err != nil || !got.IsZero() {
		t.Errorf("no lease: %v, %v; want never", got, err)
	}
	// Fenced (the nftables fence ends the lease): a short lease still gets
	// a lifetime, a second, as a clean-up; longer ones as before.
	for _, tt := range []struct {
		left time.Duration
		want int
	}{{100 * time.Millisecond, 1}, {1299 * time.Millisecond, 1}, {2300 * time.Millisecond, 2}} {
		if lft, err := lifetime(now.Add(tt.left), now, true); err != nil || lft != tt.want {
			t.Errorf("fenced, lease of %v: lifetime %d s, %v; want %d s", tt.left, lft, err, tt.want)
		}
	}
}
