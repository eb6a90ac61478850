package gateway

import (
	"driftgate/internal/udpbatch"

	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// DefaultRcvBuf is the receive buffer requested for relay and receiver
// sockets: enough for about 100 ms of a 400k datagram/s burst of small
// datagrams before the kernel drops.
const DefaultRcvBuf = 16 << 20

// sockOpts are the options set on a socket before bind.
type sockOpts struct {
	freebind bool // bind an address not (yet) on this host: the VIP
	reuse    bool // SO_REUSEADDR: several receivers of one group on a host
	rcvbuf   int  // requested receive buffer; 0 = kernel default
	sndbuf   int
}

// listenUDP opens a UDP socket bound to addr. It returns the receive
// buffer the kernel granted, which may be less than asked for when the
// process lacks CAP_NET_ADMIN (SO_RCVBUFFORCE) and net.core.rmem_max is low.
func listenUDP(ctx context.Context, addr netip.AddrPort, o sockOpts) (*net.UDPConn, int, error) {
	network := "udp4"
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		network = "udp6"
	}
	var optErr error
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		err := c.Control(func(fd uintptr) {
			optErr = setSockOpts(int(fd), network == "udp6", o)
		})
		return errors.Join(err, optErr)
	}}
	pc, err := lc.ListenPacket(ctx, network, addr.String())
	if err != nil {
		return nil, 0, fmt.Errorf("binding UDP %s: %w", addr, err)
	}
	c := pc.(*net.UDPConn)
	granted := 0
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			granted, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		})
	}
	return c, granted, nil
}

func setSockOpts(fd int, v6 bool, o sockOpts) error {
	if o.freebind {
		var err error
		if v6 {
			err = unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			err = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
		if err != nil {
			return fmt.Errorf("setting FREEBIND: %w", err)
		}
	}
	if o.reuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fmt.Errorf("setting SO_REUSEADDR: %w", err)
		}
	}
	if o.rcvbuf > 0 {
		// SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN;
		// without it fall back to SO_RCVBUF, capped by rmem_max.
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, o.rcvbuf) != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, o.rcvbuf); err != nil {
				return fmt.Errorf("setting SO_RCVBUF %d: %w", o.rcvbuf, err)
			}
		}
	}
	if o.sndbuf > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, o.sndbuf) != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, o.sndbuf); err != nil {
				return fmt.Errorf("setting SO_SNDBUF %d: %w", o.sndbuf, err)
			}
		}
	}
	return nil
}

// sender is an unbound UDP socket of one address family that writes frames
// to unicast receivers and, with multicast options set, to the group.
type sender struct {
	conn *net.UDPConn
	w    *udpbatch.Conn
	gso  bool // the kernel accepted UDP_SEGMENT on this socket
}

// mcastOpts configures multicast sends.
type mcastOpts struct {
	ifi  *net.Interface // egress interface; nil = routing table decides
	ttl  int            // TTL / hop limit
	loop bool           // deliver to receivers on this host too
}

func newSender(v6 bool, batch int, wantGSO bool, m mcastOpts) (*sender, error) {
	network, laddr := "udp4", &net.UDPAddr{IP: net.IPv4zero}
	if v6 {
		network, laddr = "udp6", &net.UDPAddr{IP: net.IPv6unspecified}
	}
	c, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, fmt.Errorf("opening %s send socket: %w", network, err)
	}
	fail := func(what string, err error) (*sender, error) {
		c.Close()
		return nil, fmt.Errorf("%s on %s send socket: %w", what, network, err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return fail("getting raw socket", err)
	}
	var optErr error
	_ = rc.Control(func(fd uintptr) {
		optErr = setSockOpts(int(fd), v6, sockOpts{sndbuf: 4 << 20})
	})
	if optErr != nil {
		return fail("setting options", optErr)
	}
	if v6 {
		p := ipv6.NewPacketConn(c)
		if m.ifi != nil {
			if err := p.SetMulticastInterface(m.ifi); err != nil {
				return fail("setting multicast interface "+m.ifi.Name, err)
			}
		}
		if err := p.SetMulticastHopLimit(m.ttl); err != nil {
			return fail("setting multicast hop limit", err)
		}
		if err := p.SetMulticastLoopback(m.loop); err != nil {
			return fail("setting multicast loopback", err)
		}
	} else {
		p := ipv4.NewPacketConn(c)
		if m.ifi != nil {
			if err := p.SetMulticastInterface(m.ifi); err != nil {
				return fail("setting multicast interface "+m.ifi.Name, err)
			}
		}
		if err := p.SetMulticastTTL(m.ttl); err != nil {
			return fail("setting multicast TTL", err)
		}
		if err := p.SetMulticastLoopback(m.loop); err != nil {
			return fail("setting multicast loopback", err)
		}
	}
	// GSO needs Linux 4.18+; probe rather than trust the version.
	gso := wantGSO && udpbatch.ProbeGSO(c)
	w, err := udpbatch.New(c, batch, gso)
	if err != nil {
		return fail("preparing batch I/O", err)
	}
	return &sender{conn: c, w: w, gso: gso}, nil
}

// joinGroup joins the multicast group on ifi (nil: the kernel's choice).
func joinGroup(c *net.UDPConn, group netip.Addr, ifi *net.Interface) error {
	g := &net.UDPAddr{IP: group.AsSlice()}
	if group.Is4() {
		return ipv4.NewPacketConn(c).JoinGroup(ifi, g)
	}
	return ipv6.NewPacketConn(c).JoinGroup(ifi, g)
}

// interfaceByName returns the named interface, or nil for "".
func interfaceByName(name string) (*net.Interface, error) {
	if name == "" {
		return nil, nil
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", name, err)
	}
	return ifi, nil
}
