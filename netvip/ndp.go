package netvip

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/ndp"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// ndpConn sends and receives NDP messages on one interface. mdlayher/ndp
// encodes and parses the messages; the socket is ours because ndp.Conn
// names the interface by its name on every write, and a name-to-index
// lookup can be stale (an interface re-created with a new index) or, in a
// network namespace, resolve to another namespace's interface. Here the
// interface index is fixed at open.
type ndpConn struct {
	pc      *ipv6.PacketConn
	ifIndex int
	cm      *ipv6.ControlMessage
	buf     []byte
}

func listenNDP(ifi *net.Interface) (*ndpConn, error) {
	src, err := linkLocal(ifi)
	if err != nil {
		return nil, err
	}
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return nil, err
	}
	pc := c.IPv6PacketConn()
	fail := func(what string, err error) (*ndpConn, error) {
		c.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// RFC 4861 section 7.1.1: NDP messages have hop limit 255, so a
	// receiver knows they were not routed.
	if err := pc.SetHopLimit(ndp.HopLimit); err != nil {
		return fail("setting hop limit", err)
	}
	if err := pc.SetMulticastHopLimit(ndp.HopLimit); err != nil {
		return fail("setting multicast hop limit", err)
	}
	if err := pc.SetControlMessage(ipv6.FlagInterface, true); err != nil {
		return fail("asking for the receiving interface", err)
	}
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeNeighborSolicitation)
	f.Accept(ipv6.ICMPTypeNeighborAdvertisement)
	if err := pc.SetICMPFilter(&f); err != nil {
		return fail("setting ICMPv6 filter", err)
	}
	return &ndpConn{
		pc:      pc,
		ifIndex: ifi.Index,
		cm:      &ipv6.ControlMessage{HopLimit: ndp.HopLimit, Src: src.AsSlice(), IfIndex: ifi.Index},
		buf:     make([]byte, 1500),
	}, nil
}

// linkLocal returns the interface's link-local address, the source of NDP.
func linkLocal(ifi *net.Interface) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("reading addresses of %s: %w", ifi.Name, err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no IPv6 link-local address (is IPv6 disabled on it?)", ifi.Name)
}

func (c *ndpConn) Close() error { return c.pc.Close() }

func (c *ndpConn) SetReadDeadline(t time.Time) error { return c.pc.SetReadDeadline(t) }

// WriteTo sends m to dst out of the interface; dst carries no zone, the
// control message's interface index decides.
func (c *ndpConn) WriteTo(m ndp.Message, dst netip.Addr) error {
	b, err := ndp.MarshalMessage(m)
	if err != nil {
		return err
	}
	_, err = c.pc.WriteTo(b, c.cm, &net.IPAddr{IP: dst.AsSlice()})
	return err
}

// ReadFrom returns the next NDP message that arrived on the interface.
// Messages that do not parse are returned as errors that are not net.Error.
func (c *ndpConn) ReadFrom() (ndp.Message, error) {
	for {
		n, cm, _, err := c.pc.ReadFrom(c.buf)
		if err != nil {
			return nil, err
		}
		if cm != nil && cm.IfIndex != c.ifIndex {
			continue
		}
		return ndp.ParseMessage(c.buf[:n])
	}
}
