package netvip

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EventKind is what changed on the VIP's interface.
type EventKind uint8

// Event kinds.
const (
	CarrierLost   EventKind = iota + 1 // the link went down or lost carrier
	CarrierGained                      // the link is up with carrier again
	VIPRemoved                         // the VIP disappeared from the interface
	VIPAdded                           // the VIP appeared on the interface
	LinkRemoved                        // the interface was deleted
)

var eventNames = map[EventKind]string{
	CarrierLost: "carrier_lost", CarrierGained: "carrier_gained",
	VIPRemoved: "vip_removed", VIPAdded: "vip_added", LinkRemoved: "link_removed",
}

// String returns the event kind for logs and metrics.
func (k EventKind) String() string { return eventNames[k] }

// Event is one change on the VIP's interface.
type Event struct {
	Kind  EventKind
	Iface string
	VIP   netip.Prefix // for VIPRemoved/VIPAdded
}

// Watcher reports link and address changes of the VIP's interface as they
// happen (netlink multicast groups), so the agent reacts at once instead of
// polling.
type Watcher struct {
	vip   VIP
	links chan netlink.LinkUpdate
	addrs chan netlink.AddrUpdate
	done  chan struct{}
	index int
	up    bool
}

// Watch subscribes to the kernel's link and address notifications in the
// caller's network namespace. Call Run to receive them; the subscription
// ends when Run returns.
func Watch(v VIP) (*Watcher, error) {
	if err := v.Validate(); err != nil {
		return nil, fmt.Errorf("vip %s: %w", v.Prefix, err)
	}
	ifi, err := net.InterfaceByName(v.Iface)
	if err != nil {
		return nil, fmt.Errorf("watching %s: %w", v.Iface, err)
	}
	w := &Watcher{
		vip:   v,
		links: make(chan netlink.LinkUpdate, 64),
		addrs: make(chan netlink.AddrUpdate, 64),
		done:  make(chan struct{}),
		index: ifi.Index,
		up:    ifi.Flags&net.FlagRunning != 0,
	}
	// The subscriptions' sockets are opened here, in the caller's
	// namespace; their reader goroutines end when done is closed.
	if err := netlink.LinkSubscribeWithOptions(w.links, w.done, netlink.LinkSubscribeOptions{}); err != nil {
		close(w.done)
		return nil, fmt.Errorf("subscribing to link updates: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(w.addrs, w.done, netlink.AddrSubscribeOptions{}); err != nil {
		close(w.done)
		return nil, fmt.Errorf("subscribing to address updates: %w", err)
	}
	return w, nil
}

// CarrierUp reports the carrier state as last seen.
func (w *Watcher) CarrierUp() bool { return w.up }

// Run calls fn for every event until ctx is cancelled, then returns nil.
// fn runs on Run's goroutine and should be quick.
func (w *Watcher) Run(ctx context.Context, fn func(Event)) error {
	defer close(w.done)
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-w.links:
			if !ok {
				return fmt.Errorf("watching %s: link subscription closed", w.vip.Iface)
			}
			if int(u.Index) != w.index {
				continue
			}
			if u.Header.Type == unix.RTM_DELLINK {
				fn(Event{Kind: LinkRemoved, Iface: w.vip.Iface})
				continue
			}
			// Carrier is IFF_RUNNING (IFF_LOWER_UP), not just IFF_UP.
			up := u.IfInfomsg.Flags&unix.IFF_UP != 0 && u.IfInfomsg.Flags&unix.IFF_RUNNING != 0
			if up != w.up {
				w.up = up
				kind := CarrierLost
				if up {
					kind = CarrierGained
				}
				fn(Event{Kind: kind, Iface: w.vip.Iface})
			}
		case u, ok := <-w.addrs:
			if !ok {
				return fmt.Errorf("watching %s: address subscription closed", w.vip.Iface)
			}
			if u.LinkIndex != w.index {
				continue
			}
			ip, ok := netip.AddrFromSlice(u.LinkAddress.IP)
			ones, _ := u.LinkAddress.Mask.Size()
			if !ok || ip.Unmap() != w.vip.Prefix.Addr() || ones != w.vip.Prefix.Bits() {
				continue
			}
			kind := VIPRemoved
			if u.NewAddr {
				kind = VIPAdded
			}
			fn(Event{Kind: kind, Iface: w.vip.Iface, VIP: w.vip.Prefix})
		}
	}
}
