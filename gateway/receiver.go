package gateway

import (
	"driftgate/internal/udpbatch"

	"cmp"
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

// ReceiverConfig configures a Receiver: either Group (multicast, joined on
// Iface) or Listen (unicast frames).
type ReceiverConfig struct {
	Group   netip.AddrPort // multicast group to join
	Iface   string         // interface to join on; "" = kernel's choice
	Listen  netip.AddrPort // unicast address to receive frames on
	Key     []byte         // HMAC key; frames without a valid tag are rejected
	NextKey []byte         // accepted too (never signed with), during a key rotation
	RcvBuf  int            // 0 = DefaultRcvBuf
	Batch   int            // 0 = DefaultBatch
	Repair  ReceiverRepair // asking the relay for frames that did not arrive
	// Order: arrival (the default) or sequence, where frames after a hole
	// wait for it to be filled for at most OrderHold (0: DefaultOrderHold).
	Order     Order
	OrderHold time.Duration
	// ConfirmEpochs: frames of an epoch above the highest ConfirmEpoch gave
	// are held (at most HoldFrames, 0: DefaultHoldFrames, for HoldTime, 0:
	// DefaultHoldTime) until it is confirmed, then taken in order, or
	// dropped and counted as unconfirmed.
	ConfirmEpochs bool
	HoldFrames    int
	HoldTime      time.Duration
	// MaxEpochStep, if set, refuses a frame whose epoch is more than this
	// above the one followed (counted as EpochStep): for receivers that
	// cannot ask Consul (ConfirmEpochs does better).
	MaxEpochStep uint64
	// SourceRate bounds the datagrams a second taken from one host that
	// only a Sources prefix admits (registered nodes are not limited); 0 =
	// DefaultSourceRate. The excess is counted as SourceRateLimited.
	SourceRate int
	// Sources: frames, requests and announcements are taken only from these
	// prefixes and the nodes given to SetSources; others are dropped and
	// counted as foreign_source. Empty, until SetSources: from anywhere.
	Sources Allowlist
	Deliver Deliverer
}

// ErrGroupOrListen: a receiver configuration with both or neither of a
// group and a listen address.
var ErrGroupOrListen = errors.New("set exactly one of group and listen")

// Validate checks where and how frames are received; errors name the
// field as the configuration file does. Deliver is checked by NewReceiver.
func (c *ReceiverConfig) Validate() error {
	switch {
	case c.Group.IsValid() == c.Listen.IsValid():
		return ErrGroupOrListen
	case c.Group.IsValid() && (!c.Group.Addr().IsMulticast() || c.Group.Port() == 0):
		return fmt.Errorf("group: %s is not a multicast address with a port", c.Group)
	case c.Listen.IsValid() && c.Listen.Port() == 0:
		return fmt.Errorf("listen: %s: need a non-zero port", c.Listen)
	case c.Key != nil && len(c.Key) < MinKeyLen:
		return fmt.Errorf("key: %d bytes, want at least %d", len(c.Key), MinKeyLen)
	case c.NextKey != nil && (len(c.NextKey) < MinKeyLen || c.Key == nil):
		return fmt.Errorf("next key: %d bytes, want at least %d, and a current key", len(c.NextKey), MinKeyLen)
	case c.Batch < 0 || c.Batch > 1024:
		return fmt.Errorf("batch: %d is out of range 1..1024 (0: %d)", c.Batch, DefaultBatch)
	case c.RcvBuf < 0:
		return fmt.Errorf("rcvbuf: %d must not be negative (0: %d)", c.RcvBuf, DefaultRcvBuf)
	case c.SourceRate < 0:
		return fmt.Errorf("source_rate: %d must not be negative (0: %d datagrams/s)", c.SourceRate, DefaultSourceRate)
	case c.HoldFrames < 0 || c.HoldFrames > 1<<20:
		return fmt.Errorf("hold_frames: %d is out of range 1..%d (0: %d)", c.HoldFrames, 1<<20, DefaultHoldFrames)
	case c.HoldTime < 0 || c.HoldTime > time.Minute:
		return fmt.Errorf("hold_time: %s is out of range 0..1m (0: %s)", c.HoldTime, DefaultHoldTime)
	case c.Order > OrderSequence:
		return fmt.Errorf("order: %d: want arrival or sequence", c.Order)
	case c.OrderHold < 0 || c.OrderHold > 10*time.Second:
		return fmt.Errorf("order_hold: %s is out of range 0..10s (0: %s)", c.OrderHold, DefaultOrderHold)
	}
	return c.Repair.Validate()
}

// ReceiverStats is a snapshot of a receiver's counters.
type ReceiverStats struct {
	Received    uint64            // datagrams read
	Local       uint64            // frames taken from the relay in this process (Relay.SetLocal)
	Delivered   uint64            // frames handed to the application
	Records     uint64            // records taken (SetRecords), never delivered
	Held        uint64            // in sequence order: frames waiting behind a hole now
	Skipped     uint64            // in sequence order: holes given up after the hold time
	Rejected    map[string]uint64 // by decode reason (see Reason)
	Truncated   uint64            // datagrams larger than the buffer
	Duplicates  uint64
	StaleEpoch  uint64 // frames from a deposed primary
	Late        uint64 // behind the de-duplication window
	Gaps        uint64 // times a run of sequence numbers was skipped
	Missing     uint64 // sequence numbers skipped and not (yet) arrived
	Reordered   uint64 // arrived behind a later one, before it was asked for
	Repaired    uint64 // arrived after a repair request
	Unrecovered uint64 // given up: not arrived by the repair deadline
	Nacks       uint64 // repair requests sent
	NackFrames  uint64 // frames those requests asked for
	NackErrors  uint64 // repair requests the kernel refused
	// Announcements read (good ones) and those that failed their checks
	// (malformed, bad tag).
	Announcements, BadAnnouncements uint64
	RepairLatency                   RepairLatency
	Epoch                           uint64 // newest epoch accepted
	EpochChanges                    uint64
	Restarts                        uint64 // standalone relay restarts
	DeliverErrors                   uint64
	// Epoch confirmation (ConfirmEpochs): frames dropped because Consul
	// did not confirm their epoch in time, frames waiting for it now, the
	// longest a released frame waited, the highest epoch confirmed, and how
	// often Consul showed a lower epoch than the receiver's (rebuilt).
	Unconfirmed      uint64
	HeldUnconfirmed  int
	ConfirmWait      time.Duration
	Confirmed        uint64
	EpochRegressions uint64
	// Replayed: frames relayed more than replaySlack before this receiver
	// started, dropped (a restarted receiver would take them as new).
	Replayed uint64
	// SourceRateLimited: datagrams from a prefix-allowed host beyond
	// SourceRate, dropped unread.
	SourceRateLimited uint64
	// EpochStep: frames refused for an epoch more than MaxEpochStep ahead.
	EpochStep uint64
	// ForeignSource: datagrams from a host that is not a source (Sources,
	// SetSources), dropped unread.
	ForeignSource uint64
	// PeerRepair: this receiver's answers to the other receivers.
	PeerRepair *RepairStats `json:",omitempty"`
	// Delivery is the delivery queue's state, for targets that have one.
	Delivery *DeliveryStats `json:",omitempty"`
}

// Receiver receives frames, checks them, and delivers new ones in order of
// arrival to the local application.
type Receiver struct {
	cfg  ReceiverConfig
	log  *slog.Logger
	conn *net.UDPConn

	mu sync.Mutex // guards everything below against Stats
	st ReceiverStats
	tr tracker
	// rejected counts by reason; index is the Reason.
	rejected [numReasons]uint64

	codec         *Codec
	cur           Frame    // the frame being delivered (process, under mu)
	main          readSide // the socket frames arrive on
	gaps          gaps
	base          time.Time // the receiver's monotonic clock starts here
	startWall     int64     // and the wall clock, ns: frames relayed long before are replays
	lastReplayLog int64
	lastLog       atomic.Int64
	// stale hears, at most once a second, that frames of an epoch below
	// the one followed arrive (StaleEpochs).
	stale     chan struct{}
	lastStale int64

	// Repair: requests go out of repairConn (the unicast socket, or in
	// multicast mode a socket of its own) and repaired frames come back to
	// it; repairSide reads them when it is not the main socket.
	repairConn *net.UDPConn
	repairSide *readSide
	kick       chan struct{} // a gap opened: the repair loop looks now
	ord        *orderer      // nil: arrival order
	// Peer repair: the frames this receiver accepted, kept to answer the
	// other receivers' requests (nil with repair off), through peer, whose
	// answers go out of repairConn through answer.
	keep   *ring
	peer   *repairer
	answer answer
	nack   Nack
	opened bool // a gap opened in the current batch

	// Epoch confirmation: the highest epoch Consul has shown, the frames
	// of higher epochs waiting for it, and the longest any released frame
	// waited.
	confirmed   uint64
	pend        *pending
	confirmWait time.Duration
	sources     map[netip.Addr]bool // nil: not set (SetSources)
	srcBuckets  buckets             // per prefix-allowed source

	deliverFn func(*Frame, []byte)
	firstErr  error                          // the first delivery error of the current batch
	records   func(epoch uint64, rec []byte) // SetRecords; nil: dropped
	reqs      []request
	nackStats struct{ sent, frames, errors atomic.Uint64 }
}

// readSide is one socket's batch reader and its buffers.
type readSide struct {
	conn  *net.UDPConn
	gro   bool // the kernel hands over coalesced datagrams (UDP_GRO)
	in    batchReader
	bufs  [][]byte
	metas []meta
}

func newReadSide(conn *net.UDPConn, batch int) (*readSide, error) {
	in, err := udpbatch.New(conn, batch, false)
	if err != nil {
		return nil, err
	}
	// A relay's GSO send (up to 64 frames) arrives as one buffer instead
	// of being split into datagrams first: one trip up the stack.
	gro := in.EnableGRO(conn)
	rs := &readSide{conn: conn, in: in, gro: gro, bufs: make([][]byte, batch), metas: make([]meta, batch)}
	for i := range rs.bufs {
		rs.bufs[i] = make([]byte, 65535)
	}
	return rs, nil
}

// NewReceiver checks cfg and returns a receiver; it opens nothing.
func NewReceiver(cfg ReceiverConfig, log *slog.Logger) (*Receiver, error) {
	if cfg.Deliver == nil {
		return nil, errNoDeliverer
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("receiver: %w", err)
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
	r := &Receiver{cfg: cfg, log: log.With("component", "receiver"), codec: NewCodec(cfg.Key, cfg.NextKey),
		gaps: gaps{cfg: cfg.Repair.withDefaults()}, base: time.Now(), startWall: time.Now().UnixNano(), kick: make(chan struct{}, 1),
		stale: make(chan struct{}, 1)}
	if cfg.Order == OrderSequence {
		r.ord = newOrderer(cmp.Or(cfg.OrderHold, DefaultOrderHold))
	}
	if !cfg.Repair.Off {
		rc := cfg.Repair.withDefaults()
		r.keep = newRing(rc.KeepFrames, rc.KeepBytes)
		// Peers ask for a few frames around a takeover: the relay's
		// default rate is plenty. No group: a peer answers unicast.
		r.peer = newRepairer(r.keep, RepairConfig{}, netip.AddrPort{})
		r.nack.Ranges = make([]SeqRange, 0, MaxNackRanges)
	}
	r.deliverFn = r.deliver // bound once: a method value made per call allocates
	r.srcBuckets = buckets{}
	if cfg.ConfirmEpochs {
		r.pend = newPending(cmp.Or(cfg.HoldFrames, DefaultHoldFrames), cmp.Or(cfg.HoldTime, DefaultHoldTime))
	}
	return r, nil
}

// Bind opens the socket and joins the group. Run calls it if needed.
func (r *Receiver) Bind(ctx context.Context) error {
	if r.conn != nil {
		return nil
	}
	addr := r.cfg.Listen
	if r.cfg.Group.IsValid() {
		// Bound to the group address, the socket gets only this group's
		// datagrams; SO_REUSEADDR lets several receivers share it.
		addr = r.cfg.Group
	}
	conn, granted, err := listenUDP(ctx, addr, sockOpts{reuse: r.cfg.Group.IsValid(), rcvbuf: r.cfg.RcvBuf})
	if err != nil {
		return fmt.Errorf("receiver: %w", err)
	}
	if r.cfg.Group.IsValid() {
		ifi, err := interfaceByName(r.cfg.Iface)
		if err == nil {
			err = joinGroup(conn, r.cfg.Group.Addr(), ifi)
		}
		if err != nil {
			conn.Close()
			return fmt.Errorf("receiver: joining %s on %q: %w", r.cfg.Group.Addr(), r.cfg.Iface, err)
		}
	}
	main, err := newReadSide(conn, r.cfg.Batch)
	if err != nil {
		conn.Close()
		return fmt.Errorf("receiver: %w", err)
	}
	repairConn := conn
	if r.cfg.Group.IsValid() && !r.cfg.Repair.Off {
		// A socket bound to the group cannot send; requests and the
		// repaired frames use a unicast socket of their own.
		wild := netip.IPv4Unspecified()
		if r.cfg.Group.Addr().Is6() {
			wild = netip.IPv6Unspecified()
		}
		// Its buffer takes a whole answer at once (an 8 s outage at
		// 1000/s is 8000 frames in one burst), however small the main
		// socket's was made.
		rc, _, err := listenUDP(ctx, netip.AddrPortFrom(wild, 0), sockOpts{rcvbuf: max(r.cfg.RcvBuf, DefaultRcvBuf)})
		if err == nil {
			r.repairSide, err = newReadSide(rc, r.cfg.Batch)
			if err != nil {
				rc.Close()
			}
		}
		if err != nil {
			conn.Close()
			return fmt.Errorf("receiver: repair socket: %w", err)
		}
		repairConn = rc
	}
	r.conn, r.main, r.repairConn = conn, *main, repairConn
	if r.peer != nil {
		w, err := udpbatch.New(repairConn, repairBatch, false)
		if err != nil {
			conn.Close()
			if repairConn != conn {
				repairConn.Close()
			}
			r.conn = nil
			return fmt.Errorf("receiver: %w", err)
		}
		r.answer = newAnswer(w)
		r.keep.mu.Lock()
		r.keep.a.prefault()
		r.keep.mu.Unlock()
	}
	r.log.Info("receiving", "addr", addr.String(), "iface", r.cfg.Iface, "rcvbuf_granted", granted,
		"repair", !r.cfg.Repair.Off, "repair_socket", r.repairConn.LocalAddr().String(), "gro", main.gro)
	return nil
}

// Run receives until ctx is cancelled, then closes the sockets and the
// deliverer and returns nil.
func (r *Receiver) Run(ctx context.Context) error {
	if err := r.Bind(ctx); err != nil {
		return err
	}
	defer r.cfg.Deliver.Close()
	defer r.conn.Close()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.read(ctx, &r.main) })
	if r.repairSide != nil {
		defer r.repairSide.conn.Close()
		g.Go(func() error { return r.read(ctx, r.repairSide) })
	}
	g.Go(func() error { return r.repairLoop(ctx) })
	err := g.Wait()
	if r.ord != nil {
		// Nothing held is lost at a stop: it goes, in order.
		r.mu.Lock()
		r.ord.flush(r.deliverFn)
		r.flush()
		r.mu.Unlock()
	}
	return err
}

// read receives on one socket until ctx is cancelled.
func (r *Receiver) read(ctx context.Context, rs *readSide) error {
	stop := context.AfterFunc(ctx, func() { _ = rs.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	return readBatches(ctx, rs.in, rs.bufs, rs.metas, "receiver: reading", func(n int) { r.process(rs, n) })
}

// process checks and delivers datagrams 0..n-1 of rs's batch.
func (r *Receiver) process(rs *readSide, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := int64(time.Since(r.base))
	r.opened = false
	for i := range n {
		m := &rs.metas[i]
		if m.Trunc {
			r.st.Received++
			r.st.Truncated++
			continue
		}
		// One datagram, or several the kernel coalesced (GRO).
		for b := rs.bufs[i][:m.N]; len(b) > 0; {
			var d []byte
			d, b = m.Next(b)
			r.st.Received++
			r.datagram(d, m.From, now)
		}
	}
	r.endBatch()
}

// endBatch flushes the deliveries and wakes the repair loop if a gap
// opened. Callers hold mu.
func (r *Receiver) endBatch() {
	r.flush()
	if r.opened {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// takeLocal takes frames from the relay in this process (Relay.SetLocal):
// each is checked as a datagram read from the network would be, but for
// its source, which is this process. The tag is verified again although
// this process made it: with receive.key_file not relay.key_file, the
// standbys reject the feed, and so must the primary's own receiver, or the
// nodes would deliver different feeds.
func (r *Receiver) takeLocal(frames [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Local += uint64(len(frames))
	now := int64(time.Since(r.base))
	r.opened = false
	for _, raw := range frames {
		r.checked(raw, netip.AddrPort{}, now)
	}
	r.endBatch()
}

// datagram handles one datagram read at now from `from`. Callers hold mu.
func (r *Receiver) datagram(raw []byte, from netip.AddrPort, now int64) {
	if !r.sourceOK(from.Addr(), now) {
		return
	}
	r.checked(raw, from, now)
}

// checked handles a datagram from an accepted source. Callers hold mu.
func (r *Receiver) checked(raw []byte, from netip.AddrPort, now int64) {
	if r.peer != nil && isNack(raw) {
		// Another receiver asks for frames it missed of a deposed
		// primary: answered from what this one kept.
		r.peer.handle(r.codec, raw, from, &r.nack, &r.answer, time.Now())
		return
	}
	if IsAnnounce(raw) {
		a, err := r.codec.DecodeAnnounce(raw)
		switch {
		case err != nil:
			r.st.BadAnnouncements++
		case r.cfg.ConfirmEpochs && a.Epoch > r.confirmed:
			r.st.Announcements++ // of a term not (yet) confirmed: nothing to ask for
		default:
			r.st.Announcements++
			if !r.tr.announce(a.Epoch, a.Seq) {
				break
			}
			r.gaps.add(a.Epoch, r.tr.gapFirst, r.tr.gapLast, from, now, &r.tr)
			r.tr.gapLast = 0
			r.opened = true
		}
		return
	}
	f, err := r.codec.Decode(raw)
	if err != nil {
		r.rejected[err.(Reason)]++
		return
	}
	if r.codec.Authenticated() && f.Timestamp != 0 && f.Timestamp < r.startWall-int64(replaySlack) {
		// Relayed well before this receiver started: it cannot be a frame
		// it missed, only one sent again (a replay: the time is the
		// relay's, under the tag — without a key it proves nothing, and
		// nothing is checked). A restarted receiver would take it as new.
		r.st.Replayed++
		if now-r.lastReplayLog > int64(10*time.Second) || r.lastReplayLog == 0 {
			r.lastReplayLog = now
			r.log.Warn("dropping frames stamped long before this receiver started: replays, or the relay's clock is far behind",
				"stamped", time.Unix(0, f.Timestamp).UTC(), "replayed_total", r.st.Replayed)
		}
		return
	}
	if r.cfg.MaxEpochStep > 0 && r.tr.started && f.Epoch > r.tr.epoch && f.Epoch-r.tr.epoch > r.cfg.MaxEpochStep {
		r.st.EpochStep++
		return
	}
	if r.cfg.ConfirmEpochs && f.Epoch > r.confirmed {
		// Not (yet) a term Consul has shown: held until it does, for a
		// while, so a stray frame with a made-up epoch fences nobody.
		if !r.pend.push(f.Epoch, from, raw, now) {
			r.st.Unconfirmed++
		}
		r.opened = true // the repair loop also drops what waits too long
		return
	}
	r.frame(f, raw, from, now)
}

// frame takes a checked frame of an accepted epoch. Callers hold mu.
func (r *Receiver) frame(f Frame, raw []byte, from netip.AddrPort, now int64) {
	if r.tr.started && f.Epoch > r.tr.epoch {
		// A new primary: the gaps of the epoch before the previous one
		// are given up now, while the tracker can still tell; the
		// previous epoch's stay open, asked of its relay (alive after a
		// clean or check-driven takeover, and holding its ring).
		r.gaps.closeEpoch(&r.tr, r.tr.prev.epoch, r.tr.prev.valid)
	}
	switch r.tr.check(f.Epoch, f.Seq) {
	case duplicate:
		r.st.Duplicates++
		return
	case stale:
		r.st.StaleEpoch++
		if r.lastStale == 0 || now-r.lastStale >= int64(time.Second) {
			r.lastStale = now
			select {
			case r.stale <- struct{}{}:
			default:
			}
		}
		return
	case late:
		r.st.Late++
		return
	case fill:
		if r.gaps.filled(f.Epoch, f.Seq, now) {
			r.st.Repaired++
		} else {
			r.st.Reordered++
		}
	}
	if r.tr.gapLast != 0 {
		r.gaps.add(f.Epoch, r.tr.gapFirst, r.tr.gapLast, from, now, &r.tr)
		r.tr.gapLast = 0
		r.opened = true
	}
	// Through a field: a local's address handed to an interface method
	// escapes, one allocation per frame.
	r.cur = f
	if r.keep != nil {
		r.keep.put(f.Epoch, f.Seq, raw)
	}
	if r.ord != nil {
		r.ord.take(&r.cur, raw, now, r.deliverFn)
	} else {
		r.deliver(&r.cur, raw)
	}
}

// ConfirmEpoch tells the receiver that Consul shows epoch as a term of the
// leader key (the agent watches it, and knows its own at once). With
// ConfirmEpochs set, frames of higher epochs wait for this: the ones held
// of this epoch are taken now, in the order they came, and those held of
// lower, never confirmed epochs are dropped. An epoch lower than the one
// the receiver follows means Consul was rebuilt (Raft indexes started
// over): the receiver follows Consul, and says so.
func (r *Receiver) ConfirmEpoch(epoch uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := int64(time.Since(r.base))
	r.opened = false
	switch {
	case epoch > r.confirmed:
		r.confirmed = epoch
	case epoch < r.confirmed && r.tr.started && epoch < r.tr.epoch:
		r.log.Error("Consul shows a lower epoch than this receiver follows: following Consul (was its cluster rebuilt?)",
			"epoch", epoch, "following", r.tr.epoch)
		r.st.EpochRegressions++
		r.confirmed = epoch
		r.gaps.closeEpoch(&r.tr, r.tr.epoch, true)
		r.gaps.closeEpoch(&r.tr, r.tr.prev.epoch, r.tr.prev.valid)
		r.tr.follow(epoch)
		if r.ord != nil {
			r.ord.flush(r.deliverFn)
			r.ord.started = false
		}
	default:
		return
	}
	if r.pend != nil { // nil without ConfirmEpochs: the agent still tells it its own terms
		r.pend.release(epoch, now, func(f Frame, raw []byte, from netip.AddrPort, at int64) {
			r.confirmWait = max(r.confirmWait, time.Duration(now-at))
			r.frame(f, raw, from, now)
		}, &r.st.Unconfirmed)
	}
	r.endBatch()
}

// StaleEpochs receives, at most once a second, while frames of an epoch
// below the one followed arrive. A deposed primary's last frames do that;
// so does a new primary after the Consul cluster was rebuilt (its Raft
// indexes, and so epochs, start low again), a term the watch that confirms
// epochs should then look for at once (consul.WatchEpochs' recheck).
func (r *Receiver) StaleEpochs() <-chan struct{} { return r.stale }

// SetConfigSources replaces ReceiverConfig.Sources, the prefixes frames
// are accepted from besides the nodes of SetSources (a reload).
func (r *Receiver) SetConfigSources(p Allowlist) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cfg.Sources = slices.Clone(p)
}

// SetSources replaces the nodes frames are accepted from besides
// ReceiverConfig.Sources (the agent gives it the service's registered
// nodes). Until it is first called, with no Sources configured, frames
// are accepted from anywhere.
func (r *Receiver) SetSources(addrs []netip.Addr) {
	m := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		m[a.Unmap()] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sources = m
}

// sourceOK reports whether frames from a are taken. Callers hold mu.
func (r *Receiver) sourceOK(a netip.Addr, now int64) bool {
	if r.sources == nil && len(r.cfg.Sources) == 0 {
		return true
	}
	a = a.Unmap()
	if r.sources[a] {
		return true // a registered node: its feed is never throttled
	}
	if len(r.cfg.Sources) == 0 || !r.cfg.Sources.Allows(a) {
		r.st.ForeignSource++
		return false
	}
	// Allowed by a prefix only: at most SourceRate datagrams a second, so
	// a flood from one such host costs bounded work.
	rate := float64(cmp.Or(r.cfg.SourceRate, DefaultSourceRate))
	if !r.srcBuckets.of(a, rate, now).take(1, rate, rate, now) {
		r.st.SourceRateLimited++
		return false
	}
	return true
}

// SetPeers replaces the other receivers' repair addresses (the agent
// gives it the service's instances from Consul, itself left out): their
// requests are answered, and after a takeover they are asked for what the
// deposed primary's relay does not answer.
func (r *Receiver) SetPeers(peers []netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gaps.peers = slices.Clone(peers)
	if r.peer != nil {
		r.peer.setAllowed(peers, nil)
	}
}

// RepairPort is the UDP port repair requests and repaired frames use at
// this receiver (0 before Bind or with repair off), for its registration.
func (r *Receiver) RepairPort() uint16 {
	if r.repairConn == nil || r.peer == nil {
		return 0
	}
	return r.repairConn.LocalAddr().(*net.UDPAddr).AddrPort().Port()
}

// SetRecords sets the handler of records (frames flagged FlagRecord, which
// the relay makes itself: Relay.Publish), called in feed order with the
// receiver locked: it must copy what it keeps, return quickly and not call
// the receiver. Without one they are dropped; they never reach the
// application. Call it before Run.
func (r *Receiver) SetRecords(f func(epoch uint64, rec []byte)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = f
}

// deliver hands one frame to the application, or a record to the record
// handler; callers hold mu and call flush after the batch.
func (r *Receiver) deliver(f *Frame, raw []byte) {
	if f.Flags&FlagRecord != 0 {
		r.st.Records++
		if r.records != nil {
			r.records(f.Epoch, f.Payload)
		}
		return
	}
	if err := r.cfg.Deliver.Deliver(f, raw); err != nil {
		r.st.DeliverErrors++
		if r.firstErr == nil {
			r.firstErr = err
		}
		return
	}
	r.st.Delivered++
}

// flush ends a batch of deliveries. Callers hold mu.
func (r *Receiver) flush() {
	if err := r.cfg.Deliver.Flush(); err != nil && r.firstErr == nil {
		r.firstErr = err
	}
	if r.firstErr != nil {
		r.logDeliverError(r.firstErr)
		r.firstErr = nil
	}
}

// repairLoop sends the repair requests the gaps call for, when they are
// due, until ctx is cancelled.
func (r *Receiver) repairLoop(ctx context.Context) error {
	codec := NewCodec(r.cfg.Key, r.cfg.NextKey)
	var buf []byte
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.kick:
		}
		r.mu.Lock()
		now := int64(time.Since(r.base))
		reqs, next := r.gaps.due(now, &r.tr, r.reqs[:0])
		r.reqs = reqs
		if r.pend != nil {
			if at := r.pend.expire(now, &r.st.Unconfirmed); at != 0 && (next == 0 || at < next) {
				next = at
			}
		}
		if r.ord != nil {
			// Frames held behind a hole past the hold time go now.
			if at := r.ord.expire(now, r.deliverFn); at != 0 && (next == 0 || at < next) {
				next = at
			}
			r.flush()
		}
		for i := range reqs {
			reqs[i].nack.Timestamp = time.Now().UnixNano()
		}
		// Encoded under the lock (reqs is reused); sent after it.
		var out [][]byte
		var to []netip.AddrPort
		var asked []uint64
		buf = buf[:0]
		for i := range reqs {
			start := len(buf)
			buf = codec.AppendNack(buf, &reqs[i].nack)
			out = append(out, buf[start:len(buf):len(buf)])
			to = append(to, reqs[i].to)
			var n uint64
			for _, sr := range reqs[i].nack.Ranges {
				n += uint64(sr.Count)
			}
			asked = append(asked, n)
		}
		r.mu.Unlock()
		for i, b := range out {
			if _, err := r.repairConn.WriteToUDPAddrPort(b, to[i]); err != nil {
				r.nackStats.errors.Add(1)
				continue
			}
			r.nackStats.sent.Add(1)
			r.nackStats.frames.Add(asked[i])
		}
		if next > 0 {
			t.Reset(max(time.Duration(next-int64(time.Since(r.base))), 0))
		}
	}
}

func (r *Receiver) logDeliverError(err error) {
	now := time.Now().UnixNano()
	if last := r.lastLog.Load(); now-last < int64(10*time.Second) {
		return
	}
	r.lastLog.Store(now)
	r.log.Warn("delivering to the application failed", "err", err, "deliver_errors_total", r.st.DeliverErrors)
}

// Stats returns a snapshot of the counters.
func (r *Receiver) Stats() ReceiverStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.st
	s.Rejected = map[string]uint64{}
	for _, reason := range Reasons() {
		s.Rejected[reason.String()] = r.rejected[reason]
	}
	s.Gaps, s.Missing = r.tr.gaps, r.tr.lost
	s.Unrecovered, s.RepairLatency = r.gaps.unrecovered, r.gaps.latency.snapshot()
	s.Nacks, s.NackFrames, s.NackErrors = r.nackStats.sent.Load(), r.nackStats.frames.Load(), r.nackStats.errors.Load()
	if r.peer != nil {
		ps := r.peer.stats()
		s.PeerRepair = &ps
	}
	s.Confirmed, s.ConfirmWait = r.confirmed, r.confirmWait
	if r.pend != nil {
		s.HeldUnconfirmed = r.pend.len()
	}
	if r.ord != nil {
		s.Skipped = r.ord.skipped
		if r.ord.high >= r.ord.next {
			s.Held = r.ord.high - r.ord.next + 1 // at most; holes included
		}
	}
	s.Epoch, s.EpochChanges, s.Restarts = r.tr.epoch, r.tr.epochs, r.tr.restarts
	if d, ok := r.cfg.Deliver.(DeliveryStatser); ok {
		ds := d.DeliveryStats()
		s.Delivery = &ds
	}
	return s
}
