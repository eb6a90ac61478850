package netvip

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// VIP is a floating address on an interface.
type VIP struct {
	// Prefix is the address with its prefix length, e.g. 198.18.0.100/24.
	Prefix netip.Prefix
	// Iface is the interface name, e.g. eth0.
	Iface string
	// Label is the IPv4 address label shown by `ip addr`; it must start
	// with the interface name. Empty means Iface+":dg". Unused for IPv6.
	Label string
}

// String returns "ADDRESS/LEN on IFACE".
func (v VIP) String() string { return v.Prefix.String() + " on " + v.Iface }

func (v VIP) label() string {
	if v.Label != "" {
		return v.Label
	}
	return v.Iface + ":dg"
}

// Validate checks the VIP without touching the system.
func (v VIP) Validate() error {
	switch {
	case !v.Prefix.IsValid():
		return errors.New("address: want ADDRESS/PREFIXLEN, e.g. 198.18.0.100/24")
	case v.Prefix.Addr().Zone() != "":
		return fmt.Errorf("address: %s: no zone allowed", v.Prefix)
	case v.Prefix.Addr().Is4In6():
		return fmt.Errorf("address: %s: write IPv4 addresses as IPv4", v.Prefix)
	case v.Prefix.Addr().IsLoopback() || v.Prefix.Addr().IsMulticast() || v.Prefix.Addr().IsUnspecified() || v.Prefix.Addr().IsLinkLocalUnicast():
		return fmt.Errorf("address: %s is not a usable unicast address", v.Prefix)
	case v.Iface == "" || len(v.Iface) > unix.IFNAMSIZ-1:
		return fmt.Errorf("interface: %q: want a name of 1..15 characters", v.Iface)
	}
	if v.Prefix.Addr().Is4() {
		l := v.label()
		if !strings.HasPrefix(l, v.Iface) || len(l) > unix.IFNAMSIZ-1 {
			return fmt.Errorf("label: %q must start with the interface name %q and be at most 15 characters", l, v.Iface)
		}
	}
	return nil
}

// ErrNoInterface is returned when the VIP's interface does not exist.
var ErrNoInterface = errors.New("no such interface")

// Manager adds, removes and checks one VIP through netlink.
type Manager struct {
	vip    VIP
	h      *netlink.Handle
	fenced bool
}

// SetFenced says a Fence ends this VIP's lease: the address lifetime is
// then only a clean-up, at least a second even for a shorter lease, so Add
// no longer fails with ErrLeaseTooShort. Call it before the first Add.
func (m *Manager) SetFenced() { m.fenced = true }

// New validates v and opens a netlink socket in the caller's network
// namespace. The interface need not exist yet; operations fail with
// ErrNoInterface until it does.
func New(v VIP) (*Manager, error) {
	if err := v.Validate(); err != nil {
		return nil, fmt.Errorf("vip %s: %w", v.Prefix, err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink socket: %w", err)
	}
	return &Manager{vip: v, h: h}, nil
}

// Close releases the netlink socket.
func (m *Manager) Close() { m.h.Close() }

func (m *Manager) link() (netlink.Link, error) {
	l, err := m.h.LinkByName(m.vip.Iface)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("interface %s: %w", m.vip.Iface, ErrNoInterface)
		}
		return nil, fmt.Errorf("looking up interface %s: %w", m.vip.Iface, err)
	}
	return l, nil
}

// ExpirySlack is how late the kernel may remove an address after its valid
// lifetime ends: it checks lifetimes from a work item it may delay by up to
// 250 ms to batch them (ADDRCONF_TIMER_FUZZ), plus scheduling; measured
// 115–140 ms. A lease is cut short by this much.
const ExpirySlack = 300 * time.Millisecond

// ErrLeaseTooShort: the time left before the lease ends, less ExpirySlack,
// is under the kernel's one-second lifetime resolution.
var ErrLeaseTooShort = errors.New("lease too short for a kernel address lifetime (whole seconds)")

// Expires is when the kernel's valid lifetime that Add sets now for a lease
// ending at until runs out: after it the kernel removes the address (up to
// ExpirySlack later), never before. A zero until never expires (zero time).
// fenced is the Manager's SetFenced.
func Expires(until, now time.Time, fenced bool) (time.Time, error) {
	if until.IsZero() {
		return time.Time{}, nil
	}
	secs, err := lifetime(until, now, fenced)
	if err != nil {
		return time.Time{}, err
	}
	return now.Add(time.Duration(secs) * time.Second), nil
}

// lifetime turns a lease end into the address's valid lifetime in whole
// seconds, rounded down so the kernel removes the address before the lease
// ends even if the kernel is ExpirySlack late. A zero time is no lease.
// When a Fence ends the lease (fenced), a lease shorter than that gets one
// second: the address outlives the lease by less than a second, fenced.
func lifetime(until, now time.Time, fenced bool) (int, error) {
	if until.IsZero() {
		return math.MaxUint32, nil // INFINITY_LIFE_TIME
	}
	secs := until.Sub(now.Add(ExpirySlack)) / time.Second
	if secs < 1 && fenced {
		secs = 1
	}
	if secs < 1 {
		return 0, fmt.Errorf("%w: %s left", ErrLeaseTooShort, until.Sub(now).Round(time.Millisecond))
	}
	return int(min(secs, math.MaxUint32-1)), nil
}

// addr is the netlink form of the VIP. Preferred lifetime 0 marks it
// deprecated, so the kernel never picks it as the source of outgoing
// traffic, which must not break when the VIP moves; the valid lifetime is
// the lease (see Add). IPv6 skips duplicate address detection: the
// election, not DAD, decides who owns it, and DAD would delay it by ~1 s.
func (m *Manager) addr(link netlink.Link, validLft int) *netlink.Addr {
	a := &netlink.Addr{
		IPNet:       &net.IPNet{IP: m.vip.Prefix.Addr().AsSlice(), Mask: net.CIDRMask(m.vip.Prefix.Bits(), m.vip.Prefix.Addr().BitLen())},
		PreferedLft: 0,
		ValidLft:    validLft,
		LinkIndex:   link.Attrs().Index,
	}
	if m.vip.Prefix.Addr().Is4() {
		a.Label = m.vip.label()
	} else {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// Add puts the VIP on the interface until the lease ends: the kernel
// removes the address by itself then, so a holder that is frozen or killed
// (and cannot drop the VIP) still loses it before a successor binds it.
// Calling Add again with a later time extends the lease. A zero until
// means no lease: the address stays until removed. Adding a VIP that is
// already there succeeds (netlink replace). An IPv6 VIP the kernel still
// marked "dadfailed" is removed and added again. ErrLeaseTooShort means
// nothing was changed.
func (m *Manager) Add(until time.Time) error {
	lft, err := lifetime(until, time.Now(), m.fenced)
	if err != nil {
		return m.opErr("adding", err)
	}
	link, err := m.link()
	if err != nil {
		return m.opErr("adding", err)
	}
	a := m.addr(link, lft)
	if err := m.h.AddrReplace(link, a); err != nil {
		return m.opErr("adding", err)
	}
	if m.vip.Prefix.Addr().Is6() {
		got, err := m.find(link)
		if err == nil && got != nil && got.Flags&unix.IFA_F_DADFAILED != 0 {
			_ = m.h.AddrDel(link, a)
			if err := m.h.AddrReplace(link, a); err != nil {
				return m.opErr("re-adding after DAD failure", err)
			}
			if got, _ := m.find(link); got != nil && got.Flags&unix.IFA_F_DADFAILED != 0 {
				return m.opErr("adding", errors.New("the kernel keeps marking it dadfailed"))
			}
		}
	}
	return nil
}

// Remove takes the VIP off the interface. Removing a VIP that is not there,
// or from an interface that is gone, succeeds.
func (m *Manager) Remove() error {
	link, err := m.link()
	if errors.Is(err, ErrNoInterface) {
		return nil
	}
	if err != nil {
		return m.opErr("removing", err)
	}
	if err := m.h.AddrDel(link, m.addr(link, 0)); err != nil {
		if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
			return nil
		}
		return m.opErr("removing", err)
	}
	return nil
}

// Present reports whether the VIP is on the interface.
func (m *Manager) Present() (bool, error) {
	link, err := m.link()
	if err != nil {
		return false, m.opErr("checking", err)
	}
	a, err := m.find(link)
	if err != nil {
		return false, m.opErr("checking", err)
	}
	return a != nil, nil
}

// kernelAddr returns the VIP as the kernel has it (label, flags,
// lifetimes), or nil when it is absent.
func (m *Manager) kernelAddr() (*netlink.Addr, error) {
	link, err := m.link()
	if err != nil {
		return nil, m.opErr("reading", err)
	}
	a, err := m.find(link)
	if err != nil {
		return nil, m.opErr("reading", err)
	}
	return a, nil
}

// Cleanup removes a VIP left behind by a run that crashed; it reports
// whether there was one. The agent calls it at start-up and the systemd
// unit at stop.
func (m *Manager) Cleanup() (bool, error) {
	present, err := m.Present()
	if errors.Is(err, ErrNoInterface) {
		return false, nil
	}
	if err != nil || !present {
		return false, err
	}
	return true, m.Remove()
}

func (m *Manager) find(link netlink.Link) (*netlink.Addr, error) {
	family := netlink.FAMILY_V4
	if m.vip.Prefix.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := m.h.AddrList(link, family)
	if err != nil {
		return nil, err
	}
	for i := range addrs {
		a := &addrs[i]
		ip, ok := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if ok && ip.Unmap() == m.vip.Prefix.Addr() && ones == m.vip.Prefix.Bits() {
			return a, nil
		}
	}
	return nil, nil
}

// opErr wraps err with the operation, address and interface, and names the
// missing capability on EPERM.
func (m *Manager) opErr(op string, err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%s VIP %s on %s: %w (needs CAP_NET_ADMIN)", op, m.vip.Prefix, m.vip.Iface, err)
	}
	return fmt.Errorf("%s VIP %s on %s: %w", op, m.vip.Prefix, m.vip.Iface, err)
}
