package consul

import (
	"errors"
	"testing"
	"time"

	"driftgate/netvip"
)

// TestProfiles: every profile is safe (Validate) and fits the VIP's
// kernel lifetime rule; an unknown name is refused naming the choices.
func TestProfiles(t *testing.T) {
	for _, name := range ProfileNames() {
		tm, err := Profile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := tm.Validate(); err != nil {
			t.Errorf("profile %s: %v", name, err)
		}
		if least := tm.RequestTimeout + time.Second + netvip.ExpirySlack; tm.TFence < least {
			t.Errorf("profile %s: t_fence %v below request_timeout + 1s + slack = %v", name, tm.TFence, least)
		}
	}
	if _, err := Profile("quick"); !errors.Is(err, ErrUnknownProfile) {
		t.Fatalf("Profile(quick) = %v, want ErrUnknownProfile", err)
	}
}
