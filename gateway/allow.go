package gateway

import "net/netip"

// Allowlist decides which senders the relay forwards. The zero value (no
// prefixes) allows every sender.
type Allowlist []netip.Prefix

// Allows reports whether addr is inside one of the prefixes. IPv4-mapped
// IPv6 addresses match IPv4 prefixes, as a dual-stack socket reports them.
func (a Allowlist) Allows(addr netip.Addr) bool {
	if len(a) == 0 {
		return true
	}
	addr = addr.Unmap()
	for _, p := range a {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
