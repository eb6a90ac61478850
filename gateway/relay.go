package gateway

import (
	"driftgate/internal/udpbatch"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// DropReason says why the relay did not forward a datagram.
type DropReason uint8

// Relay drop reasons.
const (
	DropTruncated  DropReason = iota // larger than the relay's buffer (MSG_TRUNC)
	DropNotAllowed                   // sender outside the ingress allowlist
	DropSendError                    // the kernel refused the send to a destination
	DropNotPrimary                   // forwarding is off: this node is not the primary
	numDrops
)

var dropNames = [numDrops]string{"truncated", "not_allowed", "send_error", "not_primary"}

// String returns the reason as a metric label value.
func (d DropReason) String() string { return dropNames[d] }

// RelayStats is a snapshot of one listener's counters.
type RelayStats struct {
	Listen    netip.AddrPort
	Received  uint64 // datagrams read
	Forwarded uint64 // frames written to every destination
	Bytes     uint64 // payload bytes read
	// Dropped counts the datagrams not forwarded, by reason: with
	// Forwarded they add up to Received. A send_error is a frame that at
	// least one destination refused (with several destinations, the most
	// that any one refused).
	Dropped map[string]uint64
	// SendErrors counts refusals per destination: a frame two
	// destinations refused counts twice.
	SendErrors uint64
}

// relayCounters are updated by one listener goroutine and read by others.
type relayCounters struct {
	received, forwarded, bytes, sendErrors atomic.Uint64
	dropped                                [numDrops]atomic.Uint64
}

// Relay limits.
const (
	// DefaultBatch is how many datagrams one recvmmsg/sendmmsg handles.
	DefaultBatch = 64
	// MaxRelayPayload is the largest datagram the relay forwards: the
	// framed datagram must still fit the IPv4 UDP limit of 65507 bytes.
	MaxRelayPayload = 65507 - HeaderLen - TagLen
	// maxFrameLen is the largest frame: what every buffer that holds
	// frames (rings, queues, answers) must leave room for.
	maxFrameLen = HeaderLen + MaxRelayPayload + TagLen
)

// RelayConfig configures a Relay. Listen and at least one destination
// (Group or Unicast) are required.
type RelayConfig struct {
	Listen  []netip.AddrPort // where datagrams arrive (the VIP); bound with FREEBIND
	Group   netip.AddrPort   // multicast destination; zero = none
	Iface   string           // multicast egress interface; "" = routing table
	TTL     int              // multicast TTL / hop limit; 0 = 1
	Unicast []netip.AddrPort // unicast destinations
	Allow   Allowlist        // ingress allowlist; empty = everyone
	Key     []byte           // HMAC key; nil = no tags
	NextKey []byte           // accepted in repair requests too, during a key rotation
	Epoch   uint64           // initial epoch; 0 = standalone
	RcvBuf  int              // receive buffer; 0 = DefaultRcvBuf
	Batch   int              // datagrams per syscall; 0 = DefaultBatch
	NoGSO   bool             // never use UDP_SEGMENT
	NoGRO   bool             // never take coalesced datagrams (UDP_GRO) on the listen sockets
	Repair  RepairConfig     // the ring receivers' repair requests are answered from
	// DynamicUnicast: destinations come later through SetUnicast, so a
	// configuration without group and unicast destinations is valid.
	DynamicUnicast bool
	// MulticastLoop keeps the group's copies looping back to this host
	// when a receiver is in process (SetLocal), for other receivers on it;
	// without SetLocal they always loop back.
	MulticastLoop bool
}

// ErrNoDestination: a relay configuration with neither a group nor unicast
// receivers (nor DynamicUnicast).
var ErrNoDestination = errors.New("no destination: set a multicast group or unicast receivers")

// Validate checks the configuration; errors name the field as the
// configuration file does (listen[0], ttl). Zero values mean the defaults.
func (c *RelayConfig) Validate() error {
	if len(c.Listen) == 0 {
		return errors.New("listen: at least one address is required")
	}
	for i, l := range c.Listen {
		if !l.IsValid() || l.Port() == 0 {
			return fmt.Errorf("listen[%d]: %q: need an address and a non-zero port", i, l)
		}
	}
	if !c.Group.IsValid() && len(c.Unicast) == 0 && !c.DynamicUnicast {
		return ErrNoDestination
	}
	if c.Group.IsValid() && (!c.Group.Addr().IsMulticast() || c.Group.Port() == 0) {
		return fmt.Errorf("group: %s is not a multicast address with a port (239.255.0.0/16 is for local use)", c.Group)
	}
	for i, u := range c.Unicast {
		if !u.IsValid() || u.Port() == 0 || u.Addr().IsMulticast() || u.Addr().IsUnspecified() {
			return fmt.Errorf("unicast[%d]: %s: need a unicast address and a non-zero port", i, u)
		}
	}
	if c.TTL < 0 || c.TTL > 255 {
		return fmt.Errorf("ttl: %d is out of range 1..255 (0: 1)", c.TTL)
	}
	if c.Batch < 0 || c.Batch > 1024 {
		return fmt.Errorf("batch: %d is out of range 1..1024 (0: %d)", c.Batch, DefaultBatch)
	}
	if c.RcvBuf < 0 {
		return fmt.Errorf("rcvbuf: %d must not be negative (0: %d)", c.RcvBuf, DefaultRcvBuf)
	}
	if c.Key != nil && len(c.Key) < MinKeyLen {
		return fmt.Errorf("key: %d bytes, want at least %d", len(c.Key), MinKeyLen)
	}
	if c.NextKey != nil && (len(c.NextKey) < MinKeyLen || c.Key == nil) {
		return fmt.Errorf("next key: %d bytes, want at least %d, and a current key", len(c.NextKey), MinKeyLen)
	}
	return c.Repair.Validate()
}

// seqSpace is one (epoch, sequence) space. SetEpoch swaps in a new one, so
// a frame never carries a new epoch with an old sequence number.
type seqSpace struct {
	epoch uint64
	last  atomic.Uint64 // last sequence number handed out
	sent  atomic.Uint64 // highest sequence number sent, for announcements
}

// sentUpTo records that frames up to seq have been sent.
func (sp *seqSpace) sentUpTo(seq uint64) {
	for {
		cur := sp.sent.Load()
		if seq <= cur || sp.sent.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// Relay receives datagrams on its listen addresses and forwards each, wrapped
// in a frame, to the multicast group and every unicast destination.
type Relay struct {
	cfg     RelayConfig
	log     *slog.Logger
	space   atomic.Pointer[seqSpace]
	stopped atomic.Bool // forwarding off (SetForwarding(false))
	// deadline: forwarding ends at the lease deadline even if nobody
	// turns it off — a holder frozen past its lease must not relay, on
	// waking, what waited in its socket.
	deadline  *leaseEnd
	mu        sync.Mutex // guards listeners and dynamic
	listeners []*relayListener
	dynamic   []netip.AddrPort          // from SetUnicast, applied to listeners bound later
	peers     []netip.Addr              // from SetRepairPeers
	rep       *repairer                 // nil: repair off
	local     *Receiver                 // from SetLocal: this host's receiver, in process
	allow     atomic.Pointer[Allowlist] // the ingress allowlist (SetAllow)

	pubMu    sync.Mutex // guards pubCodec and pubBuf (Publish)
	pubCodec *Codec
	pubBuf   []byte
	pubRaw   [][]byte
	records  atomic.Uint64
}

// NewRelay checks cfg and returns a relay; it opens nothing. Call Bind to
// open the sockets early, or Run.
func NewRelay(cfg RelayConfig, log *slog.Logger) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	if cfg.TTL == 0 {
		cfg.TTL = 1
	}
	if cfg.Batch == 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.RcvBuf == 0 {
		cfg.RcvBuf = DefaultRcvBuf
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Relay{cfg: cfg, log: log.With("component", "relay"), deadline: newLeaseEnd()}
	if !cfg.Repair.Off {
		r.rep = newRelayRepairer(cfg)
		r.rep.setAllowed(cfg.Unicast, nil)
	}
	r.SetEpoch(cfg.Epoch)
	r.SetAllow(cfg.Allow)
	return r, nil
}

// SetEpoch switches to a new epoch; the next frame has sequence number 1.
// The agent calls it on each election; it is safe while Run is running.
func (r *Relay) SetEpoch(epoch uint64) {
	r.space.Store(&seqSpace{epoch: epoch})
}

// SetForwarding turns forwarding on or off; a new relay forwards. The
// agent keeps it off unless this node is the primary, so a node that has
// just lost the VIP never relays a datagram that still reaches it. Off,
// datagrams are read and dropped as not_primary.
func (r *Relay) SetForwarding(on bool) { r.stopped.Store(!on) }

// SetDeadline makes forwarding end by itself at t, the holder's lease
// deadline (the agent moves it on each renewal); the zero time removes it.
// Turned off this way, datagrams are dropped as not_primary.
func (r *Relay) SetDeadline(t time.Time) { r.deadline.set(t) }

// ErrNotForwarding: Publish on a relay that does not forward (not the
// primary, or past its lease deadline).
var ErrNotForwarding = errors.New("the relay is not forwarding (not the primary)")

// Publish sends record, a message of the agent's own, as a frame of the
// feed flagged FlagRecord (docs/frame.md, "Records"): in sequence, kept for
// repair, to every destination and the receiver in process, which hand it
// to their record handler (Receiver.SetRecords) and never to the
// application. It is safe while Run is running; ErrNotForwarding if the
// relay does not forward.
func (r *Relay) Publish(record []byte) error {
	if r.stopped.Load() || r.deadline.passed() {
		return ErrNotForwarding
	}
	if len(record) > MaxRelayPayload {
		return fmt.Errorf("publishing a record: %d bytes, more than %d", len(record), MaxRelayPayload)
	}
	r.mu.Lock()
	var l *relayListener
	if len(r.listeners) > 0 {
		l = r.listeners[0]
	}
	r.mu.Unlock()
	if l == nil {
		return errors.New("publishing a record: the relay is not bound")
	}
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	if r.pubCodec == nil {
		r.pubCodec = NewCodec(r.cfg.Key, r.cfg.NextKey)
		r.pubRaw = make([][]byte, 1)
	}
	sp := r.space.Load()
	seq := sp.last.Add(1)
	r.pubBuf = r.pubCodec.AppendFrame(r.pubBuf[:0], Header{Flags: FlagRecord, Epoch: sp.epoch, Seq: seq, Timestamp: time.Now().UnixNano()}, record)
	r.pubRaw[0] = r.pubBuf
	if r.rep != nil {
		r.rep.ring.put(sp.epoch, seq, r.pubBuf)
	}
	var errs []error
	for _, d := range *l.dests.Load() {
		if _, err := d.conn.WriteToUDPAddrPort(r.pubBuf, d.addr); err != nil {
			errs = append(errs, err)
		}
	}
	sp.sentUpTo(seq)
	r.records.Add(1)
	if r.local != nil {
		r.local.takeLocal(r.pubRaw)
	}
	if len(errs) > 0 {
		return fmt.Errorf("publishing a record: %w", errors.Join(errs...))
	}
	return nil
}

// ListenConn returns the listening socket bound to exactly addr, or nil:
// the egress sends from it when its source is a relay listen address.
// Call it after Bind.
func (r *Relay) ListenConn(addr netip.AddrPort) *net.UDPConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.listeners {
		if l.addr == addr {
			return l.conn
		}
	}
	return nil
}

// Records counts the records published (Publish).
func (r *Relay) Records() uint64 { return r.records.Load() }

// Forwarding reports whether the relay forwards.
func (r *Relay) Forwarding() bool { return !r.stopped.Load() }

// Bind opens the listening and sending sockets. Listening sockets use
// FREEBIND, so they can be bound to a VIP that is not yet on the host. It is
// idempotent.
func (r *Relay) Bind(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.listeners != nil {
		return nil
	}
	ifi, err := interfaceByName(r.cfg.Iface)
	if err != nil {
		return fmt.Errorf("relay: multicast interface: %w", err)
	}
	var ls []*relayListener
	for _, addr := range r.cfg.Listen {
		l, err := r.newListener(ctx, addr, ifi)
		if err != nil {
			for _, l := range ls {
				l.close()
			}
			return err
		}
		ls = append(ls, l)
	}
	r.listeners = ls
	if r.rep != nil {
		r.rep.ring.mu.Lock()
		r.rep.ring.a.prefault()
		r.rep.ring.mu.Unlock()
	}
	return nil
}

func (r *Relay) newListener(ctx context.Context, addr netip.AddrPort, ifi *net.Interface) (*relayListener, error) {
	conn, granted, err := listenUDP(ctx, addr, sockOpts{freebind: true, rcvbuf: r.cfg.RcvBuf})
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	l := &relayListener{
		addr:    addr,
		port:    addr.Port(),
		conn:    conn,
		codec:   NewCodec(r.cfg.Key, r.cfg.NextKey),
		allow:   &r.allow,
		space:   &r.space,
		stopped: &r.stopped,
		until:   r.deadline,
		log:     r.log.With("listen", addr.String()),
		now:     func() int64 { return time.Now().UnixNano() },
		rep:     r.rep,
		spawn:   make(chan *sender, 2),
		local:   r.local,
	}
	l.log.Info("listening", "rcvbuf_requested", r.cfg.RcvBuf, "rcvbuf_granted", granted)
	if granted < r.cfg.RcvBuf {
		l.log.Warn("kernel granted a smaller receive buffer than requested; raise net.core.rmem_max or grant CAP_NET_ADMIN", "rcvbuf_requested", r.cfg.RcvBuf, "rcvbuf_granted", granted)
	}
	in, err := udpbatch.New(conn, r.cfg.Batch, false)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("relay: %s: %w", addr, err)
	}
	l.in = in
	// Runs of one sender's datagrams (a GSO send, or what the NIC's GRO
	// coalesced) come in one piece: one copy out of the kernel for many.
	l.gro = !r.cfg.NoGRO && in.EnableGRO(conn)
	// With the host's receiver in process, the group's copies need not
	// loop back to this host (unless other receivers here want them).
	loop := r.local == nil || r.cfg.MulticastLoop
	l.mc, l.batch, l.gso = mcastOpts{ifi: ifi, ttl: r.cfg.TTL, loop: loop}, r.cfg.Batch, !r.cfg.NoGSO
	if err := l.setDests(r.allDests()); err != nil {
		l.close()
		return nil, err
	}
	l.alloc(r.cfg.Batch)
	return l, nil
}

// staticDests are the configured destinations: the group first.
func (r *Relay) staticDests() []netip.AddrPort {
	dests := append([]netip.AddrPort(nil), r.cfg.Unicast...)
	if r.cfg.Group.IsValid() {
		dests = append([]netip.AddrPort{r.cfg.Group}, dests...)
	}
	return dests
}

// SetUnicast replaces the dynamic unicast destinations (the agent's
// receivers found in Consul); the configured group and unicast
// destinations stay. It takes effect from the next batch.
func (r *Relay) SetUnicast(dyn []netip.AddrPort) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dynamic = slices.Clone(dyn)
	all := r.allDests()
	if r.rep != nil {
		r.rep.setAllowed(all, r.peers)
	}
	for _, l := range r.listeners {
		if err := l.setDests(all); err != nil {
			return err
		}
	}
	return nil
}

// SetStaticUnicast replaces the configured unicast destinations (a
// reload); the group and the dynamic ones stay. Validated like
// RelayConfig.Unicast. It takes effect from the next batch.
func (r *Relay) SetStaticUnicast(dests []netip.AddrPort) error {
	c := RelayConfig{Listen: r.cfg.Listen, Unicast: dests, DynamicUnicast: true}
	if err := c.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	r.cfg.Unicast = slices.Clone(dests)
	dyn := r.dynamic
	r.mu.Unlock()
	return r.SetUnicast(dyn)
}

// SetAllow replaces the ingress allowlist (a reload; empty: everyone). It
// takes effect from the next batch.
func (r *Relay) SetAllow(allow Allowlist) {
	a := slices.Clone(allow)
	r.allow.Store(&a)
}

// SetLocal makes rcv, a receiver in this process, take every frame the
// relay sends by a function call, after the network copies: the same
// checks as for a frame read from a socket (epoch, confirmation, order,
// duplicates, tag), without a loopback copy, a second read and a second
// receive system call for the host that relays. The group's copies then do
// not loop back to this host (RelayConfig.MulticastLoop keeps them). Call
// it before Bind.
func (r *Relay) SetLocal(rcv *Receiver) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.local = rcv
}

// SetRepairPeers replaces the nodes, besides the unicast destinations,
// whose repair requests the relay answers: the agent gives it the
// service's registered nodes.
func (r *Relay) SetRepairPeers(peers []netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.peers = slices.Clone(peers)
	if r.rep != nil {
		r.rep.setAllowed(r.allDests(), r.peers)
	}
}

// RepairStats returns the counters of the repair answers; ok is false
// when repair is off.
func (r *Relay) RepairStats() (RepairStats, bool) {
	if r.rep == nil {
		return RepairStats{}, false
	}
	return r.rep.stats(), true
}

// allDests is the static destinations and then the dynamic ones not among
// them. Callers hold r.mu.
func (r *Relay) allDests() []netip.AddrPort {
	all := r.staticDests()
	for _, d := range r.dynamic {
		if !slices.Contains(all, d) {
			all = append(all, d)
		}
	}
	return all
}

// Run forwards until ctx is cancelled, then closes the sockets and returns
// nil. It binds first if Bind was not called.
func (r *Relay) Run(ctx context.Context) error {
	if err := r.Bind(ctx); err != nil {
		return err
	}
	defer r.close()
	g, ctx := errgroup.WithContext(ctx)
	for _, l := range r.listeners {
		g.Go(func() error { return l.run(ctx) })
	}
	if r.rep != nil {
		g.Go(func() error { return r.announce(ctx) })
	}
	g.Go(func() error {
		<-ctx.Done()
		// Wake the readers: a deadline in the past makes a blocked read
		// return os.ErrDeadlineExceeded.
		for _, l := range r.listeners {
			_ = l.conn.SetReadDeadline(time.Unix(1, 0))
		}
		return nil
	})
	return g.Wait()
}

// Announcements: after announceTick without a new frame the relay says
// which frame it sent last, and again after 5 and 25 ticks, then stays
// quiet until the feed moves on.
const announceTick = 10 * time.Millisecond

// announce sends sequence announcements while the primary's feed pauses,
// from the first listener's send sockets, to every destination.
func (r *Relay) announce(ctx context.Context) error {
	codec := NewCodec(r.cfg.Key, r.cfg.NextKey)
	t := time.NewTicker(announceTick)
	defer t.Stop()
	var (
		last    *seqSpace
		lastSeq uint64
		idle    int
		b       []byte
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		sp := r.space.Load()
		seq := sp.sent.Load()
		if sp != last || seq != lastSeq || r.stopped.Load() {
			last, lastSeq, idle = sp, seq, 0
			continue
		}
		if idle++; seq == 0 || (idle != 1 && idle != 5 && idle != 25) {
			continue
		}
		b = codec.AppendAnnounce(b[:0], Announce{Epoch: sp.epoch, Seq: seq})
		r.mu.Lock()
		l := r.listeners[0]
		r.mu.Unlock()
		for _, d := range *l.dests.Load() {
			_, _ = d.conn.WriteToUDPAddrPort(b, d.addr) // best effort: the next one follows
		}
	}
}

func (r *Relay) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.listeners {
		l.close()
	}
}

// Stats returns a snapshot of every listener's counters, in Listen order.
func (r *Relay) Stats() []RelayStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]RelayStats, 0, len(r.listeners))
	for _, l := range r.listeners {
		out = append(out, l.stats())
	}
	return out
}

type dest struct {
	addr netip.AddrPort
	w    batchWriter  // the forwarding loop's batch writer
	conn *net.UDPConn // the same socket, for announcements from another goroutine
}

// relayListener is one listening socket and the loop that serves it.
type relayListener struct {
	addr netip.AddrPort
	port uint16
	conn *net.UDPConn
	in   batchReader
	// One sender per address family (0: IPv4, 1: IPv6), created when a
	// destination of that family first appears; multicast options matter
	// only on the group's family but are harmless on the other.
	senders [2]*sender
	mc      mcastOpts
	batch   int
	gso     bool
	// dests is replaced whole by setDests and read once per batch.
	dests   atomic.Pointer[[]dest]
	codec   *Codec
	allow   *atomic.Pointer[Allowlist] // Relay.allow
	space   *atomic.Pointer[seqSpace]
	stopped *atomic.Bool
	until   *leaseEnd // Relay.deadline; nil: none
	log     *slog.Logger
	now     func() int64
	c       relayCounters
	rep     *repairer    // nil: repair off
	spawn   chan *sender // new send sockets, to answer repair requests on
	local   *Receiver    // nil: no receiver in process

	// Preallocated batch state. frames[i] holds a whole frame; reads[i] is
	// its payload area, where the datagram is read, so the header is
	// written in front of it in place and nothing is copied.
	frames [][]byte
	reads  [][]byte
	// With GRO: reads go to groBufs, whose datagrams are then copied to
	// the frames' payload areas (they arrive back to back, with no room
	// for a header between them).
	gro      bool
	groBufs  [][]byte
	groMetas []meta
	metas    []meta
	keep     []int // indexes of datagrams to forward in this batch
	out      [][]byte
	seqs     []uint64 // out's sequence numbers, for the ring

	lastErrLog time.Time
	errsSince  int
}

// setDests publishes a new destination list, opening a sender for a new
// address family. Callers serialise (Relay.mu or Bind).
func (l *relayListener) setDests(addrs []netip.AddrPort) error {
	ds := make([]dest, 0, len(addrs))
	for _, d := range addrs {
		fam := 0
		if d.Addr().Is6() && !d.Addr().Is4In6() {
			fam = 1
		}
		if l.senders[fam] == nil {
			s, err := newSender(fam == 1, l.batch, l.gso, l.mc)
			if err != nil {
				return fmt.Errorf("relay: %w", err)
			}
			l.senders[fam] = s
			l.log.Debug("send socket ready", "ipv6", fam == 1, "gso", s.gso)
			if l.rep != nil {
				l.spawn <- s // room for both families: never blocks
			}
		}
		ds = append(ds, dest{addr: netip.AddrPortFrom(d.Addr().Unmap(), d.Port()), w: l.senders[fam].w, conn: l.senders[fam].conn})
	}
	l.dests.Store(&ds)
	return nil
}

func (l *relayListener) alloc(batch int) {
	l.frames = make([][]byte, batch)
	l.reads = make([][]byte, batch)
	for i := range l.frames {
		l.frames[i] = make([]byte, maxFrameLen)
		l.reads[i] = l.frames[i][HeaderLen : HeaderLen+MaxRelayPayload]
	}
	l.metas = make([]meta, batch)
	if l.gro {
		l.groBufs, l.groMetas = make([][]byte, batch), make([]meta, batch)
		for i := range l.groBufs {
			l.groBufs[i] = make([]byte, 65535)
		}
	}
	l.keep = make([]int, 0, batch)
	l.out = make([][]byte, 0, batch)
	l.seqs = make([]uint64, 0, batch)
}

func (l *relayListener) run(ctx context.Context) error {
	if l.rep != nil {
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error {
			for {
				select {
				case s := <-l.spawn:
					g.Go(func() error { return l.rep.serve(ctx, s) })
				case <-ctx.Done():
					return nil
				}
			}
		})
		g.Go(func() error { return l.forward(ctx) })
		return g.Wait()
	}
	return l.forward(ctx)
}

// forward reads, frames and sends until ctx ends.
func (l *relayListener) forward(ctx context.Context) error {
	what := fmt.Sprintf("relay: reading from %s", l.addr)
	if l.gro {
		return readBatches(ctx, l.in, l.groBufs, l.groMetas, what, l.spread)
	}
	return readBatches(ctx, l.in, l.reads, l.metas, what, l.process)
}

// spread copies the datagrams of GRO reads 0..n-1 into the frames' payload
// areas and processes them a batch at a time.
func (l *relayListener) spread(n int) {
	k := 0
	for i := range n {
		m := &l.groMetas[i]
		if m.Trunc {
			l.metas[k] = meta{From: m.From, Trunc: true}
			if k++; k == len(l.reads) {
				l.process(k)
				k = 0
			}
			continue
		}
		for b, first := l.groBufs[i][:m.N], true; len(b) > 0 || first; first = false {
			var d []byte
			d, b = m.Next(b)
			if len(d) > len(l.reads[k]) {
				l.metas[k] = meta{From: m.From, Trunc: true} // too large to frame: dropped, not cut
			} else {
				l.metas[k] = meta{N: copy(l.reads[k], d), From: m.From} // an empty datagram too
			}
			if k++; k == len(l.reads) {
				l.process(k)
				k = 0
			}
		}
	}
	if k > 0 {
		l.process(k)
	}
}

// process frames and forwards datagrams 0..n-1 of the current batch.
func (l *relayListener) process(n int) {
	if l.stopped.Load() || l.until.passed() {
		l.c.received.Add(uint64(n))
		l.c.dropped[DropNotPrimary].Add(uint64(n))
		return
	}
	l.keep = l.keep[:0]
	var bytes uint64
	allow := *l.allow.Load()
	for i := range n {
		m := &l.metas[i]
		bytes += uint64(m.N)
		switch {
		case m.Trunc:
			l.c.dropped[DropTruncated].Add(1)
		case !allow.Allows(m.From.Addr()):
			l.c.dropped[DropNotAllowed].Add(1)
		default:
			l.keep = append(l.keep, i)
		}
	}
	l.c.received.Add(uint64(n))
	l.c.bytes.Add(bytes)
	if len(l.keep) == 0 {
		return
	}
	// Reserve a run of sequence numbers for the whole batch at once.
	sp := l.space.Load()
	seq := sp.last.Add(uint64(len(l.keep))) - uint64(len(l.keep))
	h := Header{IngressPort: l.port, Epoch: sp.epoch, Timestamp: l.now()}
	l.out, l.seqs = l.out[:0], l.seqs[:0]
	for _, i := range l.keep {
		seq++
		h.Seq = seq
		h.Source = l.metas[i].From
		fl := l.codec.EncodeInPlace(l.frames[i], &h, l.metas[i].N)
		l.out = append(l.out, l.frames[i][:fl])
		l.seqs = append(l.seqs, seq)
	}
	if l.rep != nil {
		// Kept before it is sent, so a receiver that misses it can ask.
		l.rep.ring.putBatch(sp.epoch, l.seqs, l.out)
	}
	failedAny := 0
	for _, d := range *l.dests.Load() {
		failed, err := d.w.WriteBatch(l.out, d.addr)
		if failed > 0 {
			failedAny = max(failedAny, failed)
			l.c.sendErrors.Add(uint64(failed))
			l.logSendError(d.addr, failed, err)
		}
	}
	// Per datagram, send_error is the most frames any one destination
	// refused (exact with one destination, a lower bound with several), so
	// that forwarded and the drops still add up to received.
	if failedAny > 0 {
		l.c.dropped[DropSendError].Add(uint64(failedAny))
	}
	l.c.forwarded.Add(uint64(len(l.out) - failedAny))
	sp.sentUpTo(seq)
	if l.local != nil {
		// After the network: the other hosts' copies are not delayed by
		// this one's delivery.
		l.local.takeLocal(l.out)
	}
}

// logSendError logs send failures at most every 10 s: a dead destination
// must not flood the journal, but it must be seen.
func (l *relayListener) logSendError(to netip.AddrPort, failed int, err error) {
	l.errsSince += failed
	if time.Since(l.lastErrLog) < 10*time.Second {
		return
	}
	l.log.Warn("sending frames failed", "to", to.String(), "frames", l.errsSince, "err", err)
	l.lastErrLog, l.errsSince = time.Now(), 0
}

func (l *relayListener) stats() RelayStats {
	s := RelayStats{
		Listen:     l.addr,
		Received:   l.c.received.Load(),
		Forwarded:  l.c.forwarded.Load(),
		Bytes:      l.c.bytes.Load(),
		Dropped:    map[string]uint64{},
		SendErrors: l.c.sendErrors.Load(),
	}
	for d := range numDrops {
		s.Dropped[d.String()] = l.c.dropped[d].Load()
	}
	return s
}

func (l *relayListener) close() {
	if l.conn != nil {
		l.conn.Close()
	}
	for _, s := range l.senders {
		if s != nil {
			s.conn.Close()
		}
	}
}
