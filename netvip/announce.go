package netvip

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
	"golang.org/x/sys/unix"

	"driftgate/internal/retry"
)

// AnnounceConfig says when a new holder announces the VIP.
type AnnounceConfig struct {
	// Count packets per burst (IPv4: each is a pair, ARP request + reply).
	Count int
	// Interval between the packets of a burst.
	Interval time.Duration
	// Delay before a second burst (like keepalived's garp_master_delay),
	// for switches that were still learning during the first; 0 = none.
	Delay time.Duration
	// Refresh re-announces periodically while holding, for routers with
	// long ARP caches; 0 = off.
	Refresh time.Duration
}

// DefaultAnnounceConfig returns a burst of 3 at 100 ms, another after 2 s, no refresh.
func DefaultAnnounceConfig() AnnounceConfig {
	return AnnounceConfig{Count: 3, Interval: 100 * time.Millisecond, Delay: 2 * time.Second}
}

// Validate checks the ranges; errors name the field.
func (c AnnounceConfig) Validate() error {
	switch {
	case c.Count < 1 || c.Count > 20:
		return fmt.Errorf("count: %d is out of range 1..20", c.Count)
	case c.Interval < 10*time.Millisecond || c.Interval > 10*time.Second:
		return fmt.Errorf("interval: %s is out of range 10ms..10s", c.Interval)
	case c.Delay < 0 || c.Delay > time.Minute:
		return fmt.Errorf("delay: %s is out of range 0..1m", c.Delay)
	case c.Refresh != 0 && (c.Refresh < time.Second || c.Refresh > time.Hour):
		return fmt.Errorf("refresh: %s is out of range 1s..1h (or 0 for off)", c.Refresh)
	}
	return nil
}

// broadcast is the Ethernet broadcast address, where gratuitous ARP goes.
var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// allNodes is ff02::1, where unsolicited neighbour advertisements go.
var allNodes = netip.MustParseAddr("ff02::1")

// Announcer tells the LAN that this host now has the VIP.
type Announcer struct {
	vip     VIP
	cfg     AnnounceConfig
	allowed func() bool
	ifi     *net.Interface
	arp     *arp.Client // IPv4
	ndp     *ndpConn    // IPv6

	sent    atomic.Uint64 // announcements sent (an IPv4 request+reply pair counts 2)
	skipped atomic.Uint64 // announcements not sent because allowed() said no
}

// ErrNotAllowed is returned by Announce when the allowed check says this
// host may no longer announce (it lost the election).
var ErrNotAllowed = errors.New("announcement not allowed: not the VIP holder")

// NewAnnouncer opens the raw socket for announcements on v's interface.
// allowed is called before every send; a deposed holder must never
// announce. It needs CAP_NET_RAW.
func NewAnnouncer(v VIP, cfg AnnounceConfig, allowed func() bool) (*Announcer, error) {
	if err := v.Validate(); err != nil {
		return nil, fmt.Errorf("vip %s: %w", v.Prefix, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("announce: %w", err)
	}
	if allowed == nil {
		return nil, errors.New("announce: an allowed check is required")
	}
	ifi, err := net.InterfaceByName(v.Iface)
	if err != nil {
		return nil, fmt.Errorf("announcing VIP %s: interface %s: %w", v.Prefix, v.Iface, err)
	}
	a := &Announcer{vip: v, cfg: cfg, allowed: allowed, ifi: ifi}
	if v.Prefix.Addr().Is4() {
		a.arp, err = dialARP(ifi)
	} else {
		a.ndp, err = listenNDP(ifi)
	}
	if err != nil {
		return nil, rawErr("opening announcement socket for VIP "+v.String(), err)
	}
	return a, nil
}

// dialARP opens an ARP client. arp.Dial needs some IPv4 address on the
// interface (the VIP will do), so open announcers after adding the VIP.
func dialARP(ifi *net.Interface) (*arp.Client, error) {
	return arp.Dial(ifi)
}

// rawErr names CAP_NET_RAW when a raw socket was refused.
func rawErr(what string, err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%s: %w (needs CAP_NET_RAW)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Close releases the socket.
func (a *Announcer) Close() error {
	if a.arp != nil {
		return a.arp.Close()
	}
	return a.ndp.Close()
}

// Sent returns how many announcements went out.
func (a *Announcer) Sent() uint64 { return a.sent.Load() }

// Skipped returns how many announcements were suppressed by the allowed check.
func (a *Announcer) Skipped() uint64 { return a.skipped.Load() }

// Announce sends one announcement now, if allowed: for IPv4 a gratuitous
// ARP request and a gratuitous ARP reply (sender IP = target IP = VIP, to
// broadcast; RFC 5227 section 3 — routers differ in which they honour), for
// IPv6 an unsolicited neighbour advertisement with the Override flag to
// all-nodes (RFC 4861 section 7.2.6).
func (a *Announcer) Announce() error {
	if !a.allowed() {
		a.skipped.Add(1)
		return ErrNotAllowed
	}
	vip, mac := a.vip.Prefix.Addr(), a.ifi.HardwareAddr
	if a.arp != nil {
		for _, op := range []arp.Operation{arp.OperationRequest, arp.OperationReply} {
			target := net.HardwareAddr{0, 0, 0, 0, 0, 0}
			if op == arp.OperationReply {
				target = broadcast
			}
			p, err := arp.NewPacket(op, mac, vip, target, vip)
			if err != nil {
				return fmt.Errorf("building gratuitous ARP for %s: %w", vip, err)
			}
			if err := a.arp.WriteTo(p, broadcast); err != nil {
				return rawErr(fmt.Sprintf("sending gratuitous ARP for %s on %s", vip, a.vip.Iface), err)
			}
			a.sent.Add(1)
		}
		return nil
	}
	na := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: vip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: mac}},
	}
	if err := a.ndp.WriteTo(na, allNodes); err != nil {
		return rawErr(fmt.Sprintf("sending neighbour advertisement for %s on %s", vip, a.vip.Iface), err)
	}
	a.sent.Add(1)
	return nil
}

// Run announces on becoming holder: a burst now, a second burst after
// Delay, then every Refresh until ctx is cancelled (without Refresh it
// returns after the bursts). It returns nil when done, when ctx is
// cancelled, or when the allowed check says no (a deposed holder stops
// announcing at once), and the first send error otherwise.
func (a *Announcer) Run(ctx context.Context) error {
	burst := func() error {
		for i := range a.cfg.Count {
			if i > 0 && !retry.Sleep(ctx, a.cfg.Interval) {
				return nil
			}
			if err := a.Announce(); err != nil {
				return err
			}
		}
		return nil
	}
	stop := func(err error) error {
		if errors.Is(err, ErrNotAllowed) {
			return nil
		}
		return err
	}
	if err := burst(); err != nil {
		return stop(err)
	}
	if a.cfg.Delay > 0 {
		if !retry.Sleep(ctx, a.cfg.Delay) {
			return nil
		}
		if err := burst(); err != nil {
			return stop(err)
		}
	}
	if a.cfg.Refresh == 0 {
		return nil
	}
	for retry.Sleep(ctx, a.cfg.Refresh) {
		if err := a.Announce(); err != nil {
			return stop(err)
		}
	}
	return nil
}
