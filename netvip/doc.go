// Package netvip owns the floating service address (VIP) on one interface:
// adding and removing it through netlink, announcing it with gratuitous ARP
// (IPv4) or unsolicited neighbour advertisements (IPv6), probing for and
// watching out for other hosts that claim it, and watching the interface for
// carrier changes and for the VIP being removed behind the daemon's back.
//
// Every operation that opens a socket does so in an explicit call (New,
// NewAnnouncer, NewGuard, Watch), never in the background, so tests can
// open them inside a network namespace. Nothing here decides whether this
// host should hold the VIP: the agent does, and passes an "allowed" check
// that is consulted before every announcement.
//
// Privileges: address changes need CAP_NET_ADMIN; ARP, NDP and probes need
// CAP_NET_RAW. Errors say which one is missing.
package netvip
