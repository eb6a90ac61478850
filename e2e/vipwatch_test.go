package e2e

import (
	"net"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"driftgate/internal/netlab"
)

// vipProbe reads whether a host has the VIP through netlink sockets in its
// namespace: about a hundred microseconds, against ten milliseconds for
// running `ip`, so two hosts are read nearly at the same instant. A VIP
// its kernel fence drops the traffic of (a frozen holder's, past its
// lease) is not had.
type vipProbe struct {
	h     *netlink.Handle
	fence *nftables.Conn
	link  netlink.Link
	vip   net.IP
}

func newVIPProbe(t *testing.T, host *netlab.Host) *vipProbe {
	ns, err := netns.GetFromName(host.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	fence, err := nftables.New(nftables.WithNetNSFd(int(ns)), nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fence.CloseLasting() })
	link, err := h.LinkByName(host.Iface)
	if err != nil {
		t.Fatal(err)
	}
	return &vipProbe{h: h, fence: fence, link: link, vip: net.ParseIP(agentVIP)}
}

func (p *vipProbe) has() bool {
	addrs, err := p.h.AddrList(p.link, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.IP.Equal(p.vip) {
			fenced, _ := readFence(p.fence)
			return !fenced
		}
	}
	return false
}

// overlapSampler counts samples in which both hosts have the VIP.
type overlapSampler struct {
	stop, done    chan struct{}
	samples, dual int
}

// sampleOverlap samples every 50 ms until end. A sample counts as dual
// only when it reads a, b, a and finds the VIP all three times: a hand-over
// from a to b between two reads would otherwise look like an overlap.
func sampleOverlap(t *testing.T, a, b *netlab.Host) *overlapSampler {
	pa, pb := newVIPProbe(t, a), newVIPProbe(t, b)
	o := &overlapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { o.end() }) // registered after the lab: runs before it goes
	go func() {
		defer close(o.done)
		for {
			select {
			case <-o.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			o.samples++
			if pa.has() && pb.has() && pa.has() {
				o.dual++
			}
		}
	}()
	return o
}

func (o *overlapSampler) end() (samples, dual int) {
	select {
	case <-o.stop:
	default:
		close(o.stop)
	}
	<-o.done
	return o.samples, o.dual
}
