package netvip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
)

// Claim is another host claiming the VIP.
type Claim struct {
	VIP netip.Addr
	MAC net.HardwareAddr // the other host's link-layer address
	// How it was seen: "arp-reply", "arp-request", "na" (neighbour advertisement).
	Kind string
}

// String describes the claim for logs.
func (c Claim) String() string { return fmt.Sprintf("%s claimed by %s (%s)", c.VIP, c.MAC, c.Kind) }

// Probe asks the LAN whether another host already answers for the VIP,
// before this host claims it: for IPv4 an ARP probe (sender IP 0.0.0.0,
// RFC 5227 section 2.1.1), for IPv6 a neighbour solicitation for the VIP
// (as in duplicate address detection, RFC 4862 section 5.4). It sends
// `count` probes `wait` apart and listens `wait` after the last; it returns
// the first answering host's claim, or nil. Call it before adding the VIP.
func Probe(ctx context.Context, v VIP, count int, wait time.Duration) (*Claim, error) {
	l, err := openListener(v, "probe")
	if err != nil {
		return nil, err
	}
	defer l.close()
	deadline := time.Now().Add(time.Duration(count) * wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	found := make(chan *Claim, 1)
	readErr := make(chan error, 1)
	go func() {
		c, err := l.next(deadline)
		if err != nil {
			readErr <- err
			return
		}
		found <- c
	}()
	for i := range count {
		if err := l.probe(); err != nil {
			return nil, rawErr(fmt.Sprintf("sending probe %d for %s", i+1, v.Prefix), err)
		}
		select {
		case c := <-found:
			return c, nil
		case err := <-readErr:
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, ctx.Err()
			}
			return nil, err
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
	select {
	case c := <-found:
		return c, nil
	case err := <-readErr:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, nil
		}
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Guard watches, while this host holds the VIP, for another host claiming
// it: a gratuitous or ordinary ARP packet with the VIP as sender address
// from another MAC, or a neighbour advertisement for the VIP from another
// MAC. That is how a split brain or a misconfigured host is seen in
// minutes, not weeks.
type Guard struct {
	vip    VIP
	l      *listener
	claims atomic.Uint64
}

// NewGuard opens the listening socket (CAP_NET_RAW).
func NewGuard(v VIP) (*Guard, error) {
	l, err := openListener(v, "guard")
	if err != nil {
		return nil, err
	}
	return &Guard{vip: v, l: l}, nil
}

// Claims returns how many foreign claims were seen.
func (g *Guard) Claims() uint64 { return g.claims.Load() }

// Run reports each foreign claim to onClaim and, when re-announce is set,
// announces again (at most once a second) so traffic comes back to this
// host. It returns nil when ctx is cancelled, and closes the socket.
func (g *Guard) Run(ctx context.Context, reannounce *Announcer, onClaim func(Claim)) error {
	defer g.l.close()
	stop := context.AfterFunc(ctx, func() { g.l.setDeadline(time.Unix(1, 0)) })
	defer stop()
	var last time.Time
	for {
		c, err := g.l.next(time.Time{})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("guarding VIP %s: %w", g.vip, err)
		}
		g.claims.Add(1)
		if onClaim != nil {
			onClaim(*c)
		}
		if reannounce != nil && time.Since(last) >= time.Second {
			last = time.Now()
			if err := reannounce.Announce(); err != nil && !errors.Is(err, ErrNotAllowed) {
				return err
			}
		}
	}
}

// listener reads ARP or NDP packets and picks out claims on the VIP by a
// MAC other than ours.
type listener struct {
	vip netip.Addr
	mac net.HardwareAddr
	arp *arp.Client
	ndp *ndpConn
}

// openListener checks v and opens the ARP or NDP socket on its interface;
// what ("probe", "guard") names the user in errors.
func openListener(v VIP, what string) (*listener, error) {
	if err := v.Validate(); err != nil {
		return nil, fmt.Errorf("vip %s: %w", v.Prefix, err)
	}
	ifi, err := net.InterfaceByName(v.Iface)
	if err != nil {
		return nil, fmt.Errorf("%s for VIP %s: interface %s: %w", what, v.Prefix, v.Iface, err)
	}
	l := &listener{vip: v.Prefix.Addr(), mac: ifi.HardwareAddr}
	if l.vip.Is4() {
		l.arp, err = dialARP(ifi)
	} else {
		l.ndp, err = listenNDP(ifi)
	}
	if err != nil {
		return nil, rawErr(fmt.Sprintf("opening %s socket for VIP %s", what, v), err)
	}
	return l, nil
}

func (l *listener) close() {
	if l.arp != nil {
		l.arp.Close()
	} else {
		l.ndp.Close()
	}
}

func (l *listener) setDeadline(t time.Time) {
	if l.arp != nil {
		l.arp.SetReadDeadline(t)
	} else {
		l.ndp.SetReadDeadline(t)
	}
}

// probe sends one ARP probe or neighbour solicitation for the VIP.
func (l *listener) probe() error {
	if l.arp != nil {
		p, err := arp.NewPacket(arp.OperationRequest, l.mac, netip.IPv4Unspecified(), net.HardwareAddr{0, 0, 0, 0, 0, 0}, l.vip)
		if err != nil {
			return err
		}
		return l.arp.WriteTo(p, broadcast)
	}
	snm, err := ndp.SolicitedNodeMulticast(l.vip)
	if err != nil {
		return err
	}
	ns := &ndp.NeighborSolicitation{
		TargetAddress: l.vip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: l.mac}},
	}
	return l.ndp.WriteTo(ns, snm)
}

// next blocks until a foreign claim is read or the deadline (zero: none).
func (l *listener) next(deadline time.Time) (*Claim, error) {
	if !deadline.IsZero() {
		l.setDeadline(deadline)
	}
	for {
		if l.arp != nil {
			p, _, err := l.arp.Read()
			if err != nil {
				if isMalformed(err) {
					continue
				}
				return nil, err
			}
			if p.SenderIP == l.vip && !bytes.Equal(p.SenderHardwareAddr, l.mac) {
				kind := "arp-request"
				if p.Operation == arp.OperationReply {
					kind = "arp-reply"
				}
				return &Claim{VIP: l.vip, MAC: p.SenderHardwareAddr, Kind: kind}, nil
			}
			continue
		}
		m, err := l.ndp.ReadFrom()
		if err != nil {
			if isMalformed(err) {
				continue
			}
			return nil, err
		}
		na, ok := m.(*ndp.NeighborAdvertisement)
		if !ok || na.TargetAddress != l.vip {
			continue
		}
		for _, o := range na.Options {
			if lla, ok := o.(*ndp.LinkLayerAddress); ok && lla.Direction == ndp.Target && !bytes.Equal(lla.Addr, l.mac) {
				return &Claim{VIP: l.vip, MAC: lla.Addr, Kind: "na"}, nil
			}
		}
	}
}

// isMalformed tells a packet that did not parse (skip it) from a socket
// error (stop): the socket libraries report the latter as net.Error.
func isMalformed(err error) bool {
	var ne net.Error
	return !errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded)
}
