package consul

import (
	"errors"
	"testing"
	"time"

	"driftgate/netvip"
)

// TestProfiles: every profile is safe (Validate); all but fast fit the
// rule of the address-lifetime fence too (fast needs the nftables fence);
// an unknown name is refused naming the choices.
func TestProfiles(t *testing.T) {
	for _, name := range ProfileNames() {
		tm, err := Profile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := tm.Validate(); err != nil {
			t.Errorf("profile %s: %v", name, err)
		}
		if least := tm.RequestTimeout + time.Second + netvip.ExpirySlack; (tm.TFence < least) != (name == "fast") {
			t.Errorf("profile %s: t_fence %v, request_timeout + 1s + slack = %v: only fast is below it", name, tm.TFence, least)
		}
	}
	if _, err := Profile("quick"); !errors.Is(err, ErrUnknownProfile) {
		t.Fatalf("Profile(quick) = %v, want ErrUnknownProfile", err)
	}
}
