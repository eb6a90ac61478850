package netvip

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// FenceTable is the name of driftgate's nftables tables (families arp and
// inet); nothing else in them is anyone else's.
const FenceTable = "driftgate"

// FenceSlack is how late the kernel may stop answering for a VIP after its
// element's timeout: it compares timeouts in jiffies (4 ms at HZ=250). A
// lease is cut short by this much.
const FenceSlack = 5 * time.Millisecond

// Fence is the lease enforced by the kernel to the millisecond. An address
// lifetime has whole seconds, so it cannot end a lease of less than about
// 1.3 s in time; the fence can. It is two nftables tables of driftgate's
// own whose rules drop, for the VIPs, the kernel's ARP replies, IP traffic
// received and IP traffic sent (IPv6 neighbour advertisements included),
// unless the VIP is in the set "live". Its element there carries a timeout,
// the time left on the lease, set again with every renewal: when the lease
// ends the kernel stops answering for the VIP by itself, even if the
// process is frozen or dead. Announcements (gratuitous ARP, unsolicited NA)
// leave through packet sockets, which the rules do not see: the agent sends
// them only while its own deadline has not passed.
//
// A Fence starts fenced (the set empty). It is safe for concurrent use.
type Fence struct {
	mu   sync.Mutex
	conn *nftables.Conn
	// One live set per table and address family; each has its VIPs.
	live []liveSet
}

type liveSet struct {
	set   *nftables.Set
	addrs []netip.Addr
}

// nfARPOut is the arp family's output hook (NF_ARP_OUT in
// linux/netfilter_arp.h), which the kernel's ARP replies pass.
const nfARPOut = 1

// ErrFence wraps a failure to install or use the fence.
var ErrFence = errors.New("nftables lease fence")

// OpenFence installs the fence for vips in the caller's network namespace
// (CAP_NET_ADMIN), replacing driftgate's tables if a previous run left
// them: every VIP is fenced until the first Extend.
func OpenFence(vips []netip.Addr) (*Fence, error) {
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("%w: opening netlink: %w", ErrFence, err)
	}
	var v4, v6 []netip.Addr
	for _, a := range vips {
		if a = a.Unmap(); a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	removeTables(conn)
	if err := conn.Flush(); err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("%w: removing a table %s left behind: %w", ErrFence, FenceTable, err)
	}
	f := &Fence{conn: conn}
	if len(v4) > 0 {
		arp := conn.AddTable(&nftables.Table{Name: FenceTable, Family: nftables.TableFamilyARP})
		vipSet, live, err := f.addSets(arp, "4", nftables.TypeIPAddr, v4)
		if err != nil {
			conn.CloseLasting()
			return nil, err
		}
		out := conn.AddChain(&nftables.Chain{Name: "out", Table: arp, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookRef(nfARPOut), Priority: nftables.ChainPriorityFilter})
		// An ARP packet for IPv4 over Ethernet whose sender address is
		// a fenced VIP: the kernel's reply to a request for it.
		conn.AddRule(&nftables.Rule{Table: arp, Chain: out, Exprs: append([]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 2, Len: 3},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x08, 0x00, 6}}, // ptype IPv4, hlen 6
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4},
		}, fenced(vipSet, live)...)})
	}
	inet := conn.AddTable(&nftables.Table{Name: FenceTable, Family: nftables.TableFamilyINet})
	in := conn.AddChain(&nftables.Chain{Name: "in", Table: inet, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityRaw})
	out := conn.AddChain(&nftables.Chain{Name: "out", Table: inet, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRaw})
	for _, fam := range []struct {
		name           string
		addrs          []netip.Addr
		typ            nftables.SetDatatype
		proto          byte
		src, dst, size uint32
	}{
		{"4", v4, nftables.TypeIPAddr, unix.NFPROTO_IPV4, 12, 16, 4},
		{"6", v6, nftables.TypeIP6Addr, unix.NFPROTO_IPV6, 8, 24, 16},
	} {
		if len(fam.addrs) == 0 {
			continue
		}
		vipSet, live, err := f.addSets(inet, fam.name, fam.typ, fam.addrs)
		if err != nil {
			conn.CloseLasting()
			return nil, err
		}
		is := []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam.proto}}}
		addr := func(off uint32) []expr.Any {
			return append(append([]expr.Any{}, is...), &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: fam.size})
		}
		conn.AddRule(&nftables.Rule{Table: inet, Chain: in, Exprs: append(addr(fam.dst), fenced(vipSet, live)...)})
		conn.AddRule(&nftables.Rule{Table: inet, Chain: out, Exprs: append(addr(fam.src), fenced(vipSet, live)...)})
		if fam.name == "6" {
			// A neighbour advertisement (the kernel's answer to a
			// solicitation) for a fenced VIP: its target address.
			conn.AddRule(&nftables.Rule{Table: inet, Chain: out, Exprs: append(append(append([]expr.Any{}, is...),
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{136}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8, Len: 16},
			), fenced(vipSet, live)...)})
		}
	}
	if err := conn.Flush(); err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("%w: installing table %s: %w", ErrFence, FenceTable, err)
	}
	return f, nil
}

// addSets adds the table's set of VIPs (constant) and its live set.
func (f *Fence) addSets(t *nftables.Table, suffix string, typ nftables.SetDatatype, addrs []netip.Addr) (vips, live *nftables.Set, err error) {
	vips = &nftables.Set{Table: t, Name: "vips" + suffix, KeyType: typ, Constant: true}
	var elems []nftables.SetElement
	for _, a := range addrs {
		elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
	}
	if err := f.conn.AddSet(vips, elems); err != nil {
		return nil, nil, fmt.Errorf("%w: adding set %s: %w", ErrFence, vips.Name, err)
	}
	live = &nftables.Set{Table: t, Name: "live" + suffix, KeyType: typ, HasTimeout: true}
	if err := f.conn.AddSet(live, nil); err != nil {
		return nil, nil, fmt.Errorf("%w: adding set %s: %w", ErrFence, live.Name, err)
	}
	f.live = append(f.live, liveSet{set: live, addrs: addrs})
	return vips, live, nil
}

// fenced ends a rule whose register 1 holds an address: drop it if it is a
// VIP and not live.
func fenced(vips, live *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Lookup{SourceRegister: 1, SetName: vips.Name, SetID: vips.ID},
		&expr.Lookup{SourceRegister: 1, SetName: live.Name, SetID: live.ID, Invert: true},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// Extend lets the kernel answer for the VIPs until until less FenceSlack;
// a zero time, or one already past (or within FenceSlack), fences them now.
// Each call replaces the last in one transaction (the set flushed, the
// elements added with the new timeout): the VIPs are never fenced in
// between.
func (f *Fence) Extend(until time.Time) error {
	var left time.Duration // stays 0 for a zero time: time.Until of it, less the slack, overflows
	if !until.IsZero() {
		left = time.Until(until) - FenceSlack
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.live {
		f.conn.FlushSet(l.set)
		if left < time.Millisecond {
			continue
		}
		var elems []nftables.SetElement
		for _, a := range l.addrs {
			elems = append(elems, nftables.SetElement{Key: a.AsSlice(), Timeout: left.Truncate(time.Millisecond)})
		}
		if err := f.conn.SetAddElements(l.set, elems); err != nil {
			return fmt.Errorf("%w: extending the lease: %w", ErrFence, err)
		}
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("%w: extending the lease: %w", ErrFence, err)
	}
	return nil
}

// Close fences the VIPs and removes the tables (after the VIPs are gone:
// with no table the kernel answers for any address it has).
func (f *Fence) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	removeTables(f.conn)
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("%w: removing table %s: %w", ErrFence, FenceTable, err)
	}
	return f.conn.CloseLasting()
}

// RemoveFence deletes the tables a crashed run left behind (driftgate
// cleanup); having none is not an error.
func RemoveFence() error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("%w: opening netlink: %w", ErrFence, err)
	}
	removeTables(conn)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("%w: removing table %s: %w", ErrFence, FenceTable, err)
	}
	return nil
}

// removeTables queues the deletion of both tables. Each is added first
// (which does nothing if it exists), so the deletion cannot fail for want
// of one and abort the transaction.
func removeTables(conn *nftables.Conn) {
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyARP, nftables.TableFamilyINet} {
		t := conn.AddTable(&nftables.Table{Name: FenceTable, Family: fam})
		conn.DelTable(t)
	}
}
