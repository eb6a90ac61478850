package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"driftgate/gateway"
	"driftgate/internal/netlab"
	"driftgate/netvip"
)

// recorder keeps, with timestamps from one clock (this process's monotonic
// clock), every VIP add and remove on every node, every change of the
// router's neighbour entry for the VIP, every frame each node's receiver
// delivered, and the faults the suite injected.
type recorder struct {
	mu     sync.Mutex
	start  time.Time
	marks  []mark                 // timeline: VIP, router, fault and heal records
	frames map[string][]delivered // by receiving node
	vip    map[string]bool        // VIP present now, by node
	fenced map[string]bool        // the node's kernel fence drops the VIP's traffic now
	router string                 // whose MAC the router's entry has now
	macs   map[string]string      // MAC → host name
}

type mark struct {
	t    time.Time
	who  string
	what string // vip+ vip- fence+ (answers) fence- (fenced) router fault heal recovered note
	note string
}

type delivered struct {
	t     time.Time
	epoch uint64
	seq   uint64
	src   int // the feed's sequence number (the payload)
}

func newRecorder(hosts ...*netlab.Host) *recorder {
	r := &recorder{start: time.Now(), frames: map[string][]delivered{}, vip: map[string]bool{}, fenced: map[string]bool{}, macs: map[string]string{}}
	for _, h := range hosts {
		r.macs[h.MAC().String()] = h.Name
	}
	return r
}

func (r *recorder) add(who, what, note string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.marks = append(r.marks, mark{time.Now(), who, what, note})
}

// vipHolders are the nodes that have the VIP now, unfenced.
func (r *recorder) vipHolders() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var hs []string
	for n, on := range r.vip {
		if on && !r.fenced[n] {
			hs = append(hs, n)
		}
	}
	sort.Strings(hs)
	return hs
}

func (r *recorder) routerTarget() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.router
}

// monitor subscribes, in h's namespace, to one kind of netlink
// notification (what names it in the timeline) and hands each to handle
// until the test ends.
func monitor[U any](t *testing.T, r *recorder, h *netlab.Host, what string,
	subscribe func(ch chan<- U, done <-chan struct{}, ns *netns.NsHandle, onErr func(error)) error, handle func(U)) {
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan U, 4096)
	done := make(chan struct{})
	err = subscribe(ch, done, &ns, func(err error) { r.add(h.Name, "note", what+" monitor: "+err.Error()) })
	ns.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case <-done:
				return
			case u, ok := <-ch:
				if !ok {
					return
				}
				handle(u)
			}
		}
	}()
}

// watchVIP records the VIP's appearance and disappearance on h from the
// kernel's address notifications in h's namespace. A lifetime renewal is
// also an RTM_NEWADDR: only changes are recorded.
func (r *recorder) watchVIP(t *testing.T, h *netlab.Host) {
	vip := net.ParseIP(agentVIP)
	monitor(t, r, h, "address", func(ch chan<- netlink.AddrUpdate, done <-chan struct{}, ns *netns.NsHandle, onErr func(error)) error {
		return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{Namespace: ns, ListExisting: true, ReceiveBufferSize: 1 << 20, ErrorCallback: onErr})
	}, func(u netlink.AddrUpdate) {
		if !u.LinkAddress.IP.Equal(vip) {
			return
		}
		now := time.Now()
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.vip[h.Name] != u.NewAddr {
			r.vip[h.Name] = u.NewAddr
			r.marks = append(r.marks, mark{now, h.Name, map[bool]string{true: "vip+", false: "vip-"}[u.NewAddr], ""})
		}
	})
}

// watchFence records when h's kernel fence (netvip.Fence) stops and starts
// answering for the VIP: an address still on a node whose fence drops its
// traffic is not held (a frozen holder's address outlives its lease by up
// to its one-second lifetime, fenced). It polls the fence's live set every
// 2 ms; the end of a lease is dated from the element's time left as last
// read (the kernel's own expiry), not from the poll that no longer finds
// it. No table (no agent, or its clean exit) is no fence.
func (r *recorder) watchFence(t *testing.T, h *netlab.Host) {
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)), nftables.AsLasting())
	ns.Close()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(done); <-stopped; conn.CloseLasting() })
	go func() {
		defer close(stopped)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		var until time.Time // the lease's end as last read
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			now := time.Now()
			fenced, left := readFence(conn)
			if !fenced && left > 0 {
				until = now.Add(left)
			}
			r.mu.Lock()
			if fenced != r.fenced[h.Name] {
				r.fenced[h.Name] = fenced
				at, what := now, "fence+"
				if fenced {
					what = "fence-"
					if !until.IsZero() && until.Before(now) {
						at = until
					}
				}
				r.marks = append(r.marks, mark{at, h.Name, what, ""})
			}
			r.mu.Unlock()
		}
	}()
}

// readFence reads, through conn (in a node's namespace), whether the
// node's kernel fence drops the VIP's traffic now, and if not, for how much
// longer its lease lets it through (0: no fence at all).
func readFence(conn *nftables.Conn) (fenced bool, left time.Duration) {
	set, err := conn.GetSetByName(&nftables.Table{Name: netvip.FenceTable, Family: nftables.TableFamilyINet}, "live4")
	if err != nil {
		return false, 0 // no table: no fence
	}
	els, err := conn.GetSetElements(set)
	if err != nil {
		return true, 0
	}
	vip := netip.MustParseAddr(agentVIP).AsSlice()
	for _, e := range els {
		if slices.Equal(e.Key, vip) && e.Expires > 0 {
			return false, e.Expires
		}
	}
	return true, 0
}

// watchRouter records which host the router's (src's) neighbour entry for
// the VIP points at.
func (r *recorder) watchRouter(t *testing.T, router *netlab.Host) {
	vip := net.ParseIP(agentVIP)
	monitor(t, r, router, "neighbour", func(ch chan<- netlink.NeighUpdate, done <-chan struct{}, ns *netns.NsHandle, onErr func(error)) error {
		return netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{Namespace: ns, ListExisting: true, ReceiveBufferSize: 1 << 20, ErrorCallback: onErr})
	}, func(u netlink.NeighUpdate) {
		if !u.IP.Equal(vip) {
			return
		}
		target := ""
		if u.Type != unix.RTM_DELNEIGH && len(u.HardwareAddr) > 0 {
			target = r.macs[u.HardwareAddr.String()]
			if target == "" {
				target = u.HardwareAddr.String()
			}
		}
		now := time.Now()
		r.mu.Lock()
		defer r.mu.Unlock()
		if target != r.router {
			r.router = target
			r.marks = append(r.marks, mark{now, router.Name, "router", "→ " + or(target, "none")})
		}
	})
}

// frameSink opens the unix datagram socket node's receiver delivers whole
// frames to, and records them. It returns the delivery URL.
func (r *recorder) frameSink(t *testing.T, dir, node string) string {
	path := filepath.Join(dir, node+".sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil { // the agent runs as nobody
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	t.Cleanup(func() { c.Close() })
	go func() {
		codec := gateway.NewCodec(nil)
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			now := time.Now()
			f, err := codec.Decode(buf[:n])
			if err != nil {
				r.add(node, "note", "undecodable delivery: "+err.Error())
				continue
			}
			src, _ := strconv.Atoi(string(f.Payload))
			r.mu.Lock()
			r.frames[node] = append(r.frames[node], delivered{now, f.Epoch, f.Seq, src})
			r.mu.Unlock()
		}
	}()
	return "unix://" + path
}

// lastFrame is when node's receiver last delivered, and the epoch.
func (r *recorder) lastFrame(node string) (time.Time, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fs := r.frames[node]
	if len(fs) == 0 {
		return time.Time{}, 0
	}
	return fs[len(fs)-1].t, fs[len(fs)-1].epoch
}

func (r *recorder) framesOf(node string) []delivered {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.frames[node])
}

// timeline prints the marks within d of at, with times relative to the
// recording's start.
func (r *recorder) timeline(at time.Time, d time.Duration) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, m := range r.marks {
		if m.t.Before(at.Add(-d)) || m.t.After(at.Add(d)) {
			continue
		}
		fmt.Fprintf(&b, "  %10.3fs  %-4s %-9s %s\n", m.t.Sub(r.start).Seconds(), m.who, m.what, m.note)
	}
	// Each receiver's epoch changes in the window.
	for node, fs := range r.frames {
		var last uint64
		for _, f := range fs {
			if f.t.Before(at.Add(-d)) || f.t.After(at.Add(d)) || f.epoch == last {
				continue
			}
			fmt.Fprintf(&b, "  %10.3fs  %-4s frames of epoch %d from seq %d (source %d)\n", f.t.Sub(r.start).Seconds(), node, f.epoch, f.seq, f.src)
			last = f.epoch
		}
	}
	return b.String()
}

// interval is a span of VIP ownership.
type interval struct {
	node     string
	from, to time.Time
}

// ownership turns the VIP and fence marks into intervals: a node holds
// the VIP while it has the address and its fence does not drop the VIP's
// traffic. One still open ends at end.
func (r *recorder) ownership(end time.Time) []interval {
	r.mu.Lock()
	marks := slices.Clone(r.marks)
	r.mu.Unlock()
	// A fence's end is dated back to the kernel's expiry: sort by time.
	slices.SortStableFunc(marks, func(a, b mark) int { return a.t.Compare(b.t) })
	open := map[string]time.Time{}
	has, fenced := map[string]bool{}, map[string]bool{}
	var out []interval
	for _, m := range marks {
		switch m.what {
		case "vip+", "vip-":
			has[m.who] = m.what == "vip+"
		case "fence+", "fence-":
			fenced[m.who] = m.what == "fence-"
		default:
			continue
		}
		from, holding := open[m.who]
		switch now := has[m.who] && !fenced[m.who]; {
		case now && !holding:
			open[m.who] = m.t
		case !now && holding:
			out = append(out, interval{m.who, from, m.t})
			delete(open, m.who)
		}
	}
	for n, from := range open {
		out = append(out, interval{n, from, end})
	}
	return out
}

// overlaps are pairs of intervals of different nodes that share more than
// tolerance: the two netlink monitors are read by two goroutines, so each
// timestamp may be late by their scheduling delay.
func overlaps(iv []interval, tolerance time.Duration) [][2]interval {
	var out [][2]interval
	for i := range iv {
		for j := i + 1; j < len(iv); j++ {
			a, b := iv[i], iv[j]
			if a.node == b.node {
				continue
			}
			if shared := minTime(a.to, b.to).Sub(maxTime(a.from, b.from)); shared > tolerance {
				out = append(out, [2]interval{a, b})
			}
		}
	}
	return out
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// vipMoves describes the VIP changes between from and to, with times
// relative to from: "n1 off +2.71s, n2 on +5.52s".
func (r *recorder) vipMoves(from, to time.Time) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var parts []string
	for _, m := range r.marks {
		if m.t.Before(from) || m.t.After(to) || (m.what != "vip+" && m.what != "vip-") {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s +%v", m.who, map[string]string{"vip+": "on", "vip-": "off"}[m.what], m.t.Sub(from).Round(time.Millisecond)))
	}
	if len(parts) == 0 {
		return "VIP stayed"
	}
	return "VIP " + strings.Join(parts, ", ")
}
