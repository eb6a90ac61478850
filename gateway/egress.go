package gateway

import (
	"driftgate/internal/udpbatch"

	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// EgressAddr is where applications hand the egress their datagrams: a
// loopback UDP address or a unix datagram socket.
type EgressAddr struct {
	UDP  netip.AddrPort
	Unix string // path
}

// ParseEgressAddr parses "IP:PORT" (a loopback address: anything else
// would let other hosts send as the service) or "unix:///PATH". It is the
// one parser of egress addresses: the configuration and `driftgate send`
// call it.
func ParseEgressAddr(raw string) (EgressAddr, error) {
	if p, ok := strings.CutPrefix(raw, "unix://"); ok {
		if !strings.HasPrefix(p, "/") {
			return EgressAddr{}, fmt.Errorf("%q: want unix:///absolute/path", raw)
		}
		if len(p) > 107 {
			return EgressAddr{}, fmt.Errorf("%q: %d bytes, a unix socket's path has at most 107", raw, len(p))
		}
		return EgressAddr{Unix: p}, nil
	}
	ap, err := netip.ParseAddrPort(raw)
	if err != nil || ap.Port() == 0 {
		return EgressAddr{}, fmt.Errorf("%q: want a loopback IP:PORT with a non-zero port, or unix:///PATH", raw)
	}
	if !ap.Addr().Unmap().IsLoopback() {
		return EgressAddr{}, fmt.Errorf("%q: not a loopback address: an egress port on another address would let other hosts send as the service", raw)
	}
	return EgressAddr{UDP: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

// String returns the address as ParseEgressAddr takes it.
func (a EgressAddr) String() string {
	if a.Unix != "" {
		return "unix://" + a.Unix
	}
	return a.UDP.String()
}

// Dial returns a socket connected to the egress port, for an application
// (driftgate send) to write datagrams to.
func (a EgressAddr) Dial() (net.Conn, error) {
	if a.Unix != "" {
		return net.Dial("unixgram", a.Unix)
	}
	return net.Dial("udp", a.UDP.String())
}

// MarshalText renders the address as String does (the effective
// configuration, /status).
func (a EgressAddr) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// IsValid reports whether the address is set.
func (a EgressAddr) IsValid() bool { return a.Unix != "" || a.UDP.IsValid() }

// EgressListener is one egress port.
type EgressListener struct {
	Listen EgressAddr
	// Header: every datagram begins with an egress header
	// (ParseEgressHeader) naming its destination and perhaps its id.
	Header bool
	// Destination is where datagrams go: all of them without Header, those
	// whose header names none with it.
	Destination netip.AddrPort
}

// EgressConfig configures an Egress.
type EgressConfig struct {
	Listeners []EgressListener
	// Source is the VIP and port datagrams leave from. It is bound with
	// FREEBIND: the kernel sends from it only while the VIP is on the host.
	Source netip.AddrPort
	// Allow is where datagrams may go; required: a local process must
	// not be able to use the service's address to send anywhere.
	Allow Allowlist
	// Rate bounds the datagrams a second to one destination address, with
	// bursts of Burst (0: Rate); 0: no limit.
	Rate, Burst int
	// Window turns duplicate suppression on (0: off): message ids that a
	// primary sent are remembered this long, and sent again by nobody.
	Window time.Duration
	// HoldFrames and HoldBytes bound what a standby holds, with
	// suppression on, until the primary says it sent it (0: defaults).
	HoldFrames, HoldBytes int
	Batch                 int // datagrams per system call; 0: DefaultBatch
	RcvBuf                int // the listeners' receive buffer; 0: DefaultRcvBuf
	NoGSO                 bool
}

// Egress defaults and limits.
const (
	DefaultEgressHoldFrames = 65536
	DefaultEgressHoldBytes  = 64 << 20
	// maxEgressIDs bounds the message ids remembered: suppression is for
	// message streams, not bulk rates.
	maxEgressIDs = 1 << 20
	// MaxEgressWindow is the longest duplicate-suppression window.
	MaxEgressWindow = 10 * time.Minute
)

// Validate checks the configuration; errors name the field as the
// configuration file does (listen[0].destination).
func (c *EgressConfig) Validate() error {
	if len(c.Listeners) == 0 {
		return errors.New("listen: at least one egress port is required")
	}
	if !c.Source.IsValid() || c.Source.Port() == 0 || c.Source.Addr().IsUnspecified() || c.Source.Addr().IsMulticast() {
		return fmt.Errorf("source: %q: want the VIP and a non-zero port", c.Source)
	}
	if len(c.Allow) == 0 {
		return errors.New("allow: at least one destination prefix is required (a local process must not use the service's address to send anywhere)")
	}
	src4 := c.Source.Addr().Unmap().Is4()
	for i, p := range c.Allow {
		if p.Addr().Is4() != src4 {
			return fmt.Errorf("allow[%d]: %s is not of the source %s's address family", i, p, c.Source.Addr())
		}
	}
	seen := map[string]bool{}
	for i, l := range c.Listeners {
		if !l.Listen.IsValid() {
			return fmt.Errorf("listen[%d].address: required", i)
		}
		if seen[l.Listen.String()] {
			return fmt.Errorf("listen[%d].address: %s is listed twice", i, l.Listen)
		}
		seen[l.Listen.String()] = true
		if !l.Header && !l.Destination.IsValid() {
			return fmt.Errorf("listen[%d]: set a destination, or header: true (each datagram names its own)", i)
		}
		if d := l.Destination; d.IsValid() {
			if d.Port() == 0 || d.Addr().IsUnspecified() {
				return fmt.Errorf("listen[%d].destination: %s: need an address and a non-zero port", i, d)
			}
			if !c.Allow.Allows(d.Addr()) {
				return fmt.Errorf("listen[%d].destination: %s is outside allow", i, d)
			}
		}
	}
	switch {
	case c.Rate < 0:
		return fmt.Errorf("rate: %d must not be negative (0: no limit)", c.Rate)
	case c.Burst < 0:
		return fmt.Errorf("burst: %d must not be negative (0: the rate)", c.Burst)
	case c.Window < 0 || c.Window > MaxEgressWindow:
		return fmt.Errorf("duplicate_window: %s is out of range 0..%s (0: off)", c.Window, MaxEgressWindow)
	case c.HoldFrames < 0 || c.HoldFrames > 1<<22:
		return fmt.Errorf("hold_frames: %d is out of range 1..%d (0: %d)", c.HoldFrames, 1<<22, DefaultEgressHoldFrames)
	case c.HoldBytes < 0:
		return fmt.Errorf("hold_bytes: %d must not be negative (0: %d)", c.HoldBytes, DefaultEgressHoldBytes)
	case c.Batch < 0 || c.Batch > 1024:
		return fmt.Errorf("batch: %d is out of range 1..1024 (0: %d)", c.Batch, DefaultBatch)
	case c.RcvBuf < 0:
		return fmt.Errorf("rcvbuf: %d must not be negative (0: %d)", c.RcvBuf, DefaultRcvBuf)
	}
	return nil
}

// EgressResult says what became of a datagram handed to the egress.
type EgressResult uint8

// Egress results; with the datagrams held now they add up to those read.
const (
	EgressSent        EgressResult = iota // sent from the source
	EgressNotPrimary                      // this node is not the primary (held ones too, once the primary sent them)
	EgressDuplicate                       // its id was sent already, by this primary or the one before
	EgressExpired                         // held, and neither sent by the primary nor by this node in time
	EgressNotAllowed                      // destination outside the allowlist
	EgressRateLimited                     // over the destination's rate
	EgressBadHeader                       // malformed egress header, or no destination
	EgressTruncated                       // larger than the buffer
	EgressSendError                       // the kernel refused it (the VIP gone, no route)
	numEgressResults
)

var egressResultNames = [numEgressResults]string{"sent", "not_primary", "duplicate", "expired", "not_allowed", "rate_limited", "bad_header", "truncated", "send_error"}

// String returns the result as a metric label value.
func (r EgressResult) String() string { return egressResultNames[r] }

// EgressStats is one egress port's counters.
type EgressStats struct {
	Listen   string
	Received uint64            // datagrams read
	Results  map[string]uint64 // by EgressResult
	Held     int64             // held now (a standby, with suppression)
}

type egressCounters struct {
	received atomic.Uint64
	results  [numEgressResults]atomic.Uint64
	held     atomic.Int64
}

func (c *egressCounters) add(r EgressResult, n int) { c.results[r].Add(uint64(n)) }

// Egress sends the applications' datagrams from the service's address
// while this node is the primary, and only then: the applications on every
// node send the same, and need not know which node is the primary.
type Egress struct {
	cfg  EgressConfig
	log  *slog.Logger
	base time.Time
	now  func() int64 // ns since base

	on       atomic.Bool // sending (SetForwarding)
	deadline *leaseEnd   // SetDeadline
	epoch    atomic.Uint64
	// gate is held for reading by every batch being sent, from the check
	// that sending is on until its ids are published; SetForwarding(false)
	// takes it for writing, so when it returns nothing more leaves.
	gate    sync.RWMutex
	publish atomic.Pointer[func([]byte) error]

	shared *net.UDPConn // a socket bound to Source already (SetSourceConn)
	send   *net.UDPConn
	gso    bool

	mu sync.Mutex // guards st
	st egressState

	inMu  sync.Mutex // guards inbox: ids the primary sent, from the feed
	inbox []uint64

	listeners []*egressListener
	kick      chan struct{}
	maint     egressWriter
	lastWarn  atomic.Int64
}

// NewEgress checks cfg and returns an egress that does not send until
// SetForwarding(true); it opens nothing.
func NewEgress(cfg EgressConfig, log *slog.Logger) (*Egress, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	cfg.Batch, cfg.RcvBuf = cmp.Or(cfg.Batch, DefaultBatch), cmp.Or(cfg.RcvBuf, DefaultRcvBuf)
	cfg.HoldFrames, cfg.HoldBytes = cmp.Or(cfg.HoldFrames, DefaultEgressHoldFrames), cmp.Or(cfg.HoldBytes, DefaultEgressHoldBytes)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Egress{cfg: cfg, log: log.With("component", "egress"), base: time.Now(), deadline: newLeaseEnd(), kick: make(chan struct{}, 1)}
	e.now = func() int64 { return int64(time.Since(e.base)) }
	e.st = newEgressState(cfg)
	return e, nil
}

// SetForwarding turns sending on (this node is the primary) or off. On,
// the datagrams held as a standby that the primary before did not send go
// first. Off, it returns once no batch is being sent any more, or after
// stopWait at the most.
func (e *Egress) SetForwarding(on bool) {
	if on {
		e.mu.Lock()
		e.st.flush = true
		e.mu.Unlock()
		e.on.Store(true)
		select {
		case e.kick <- struct{}{}:
		default:
		}
		e.log.Info("sending from the source", "source", e.cfg.Source.String(), "epoch", e.epoch.Load())
		return
	}
	if e.on.Swap(false) {
		defer e.log.Info("stopped sending", "source", e.cfg.Source.String(), "epoch", e.epoch.Load())
	}
	// Wait for the batch being sent, so that its ids' record goes out
	// before the relay stops — but not longer than stopWait: a send held
	// up by a full socket must not delay the VIP's removal (the drop
	// budget), and once the VIP is gone the kernel refuses what is left.
	done := make(chan struct{})
	go func() {
		e.gate.Lock() // once held, no batch is in flight
		close(done)
		e.gate.Unlock()
	}()
	t := time.NewTimer(stopWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		e.log.Warn("stopping: a batch is still being sent; the VIP goes anyway, and the kernel refuses what is left", "waited", stopWait)
	}
}

// stopWait bounds how long SetForwarding(false) waits for a batch in
// flight.
const stopWait = 20 * time.Millisecond

// SetDeadline makes sending end by itself at t, the lease deadline (the
// zero time removes it), as Relay.SetDeadline.
func (e *Egress) SetDeadline(t time.Time) { e.deadline.set(t) }

// SetAllow replaces the destination allowlist (a reload), from the next
// batch. The caller has validated it with the ports' destinations
// (EgressConfig.Validate).
func (e *Egress) SetAllow(allow Allowlist) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.st.allow = slices.Clone(allow)
}

// SetRate replaces the per-destination rate and burst (a reload; burst 0:
// the rate), from the next batch.
func (e *Egress) SetRate(rate, burst int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.st.setRate(rate, burst)
}

// SetEpoch records the term's epoch, for the log line that says sending
// started; the ids' records carry the relay's.
func (e *Egress) SetEpoch(epoch uint64) { e.epoch.Store(epoch) }

// sending reports whether the egress sends now: on, and the lease
// deadline not passed.
func (e *Egress) sending() bool { return e.on.Load() && !e.deadline.passed() }

// SetPublish sets how the ids sent are told to the other nodes: the
// relay's Publish, which puts a record in the feed. Without it (or with
// suppression off) nothing is published.
func (e *Egress) SetPublish(f func(record []byte) error) { e.publish.Store(&f) }

// SetSourceConn makes the egress send from c, a socket already bound to
// the source (the relay's listening socket on the VIP: replies to the
// service's address then reach the relay and every node). Call it before
// Bind.
func (e *Egress) SetSourceConn(c *net.UDPConn) { e.shared = c }

// TakeRecord is the receiver's record handler (Receiver.SetRecords): the
// ids a primary sent, which nobody sends again. It copies what it keeps
// and never blocks on the egress's batches.
func (e *Egress) TakeRecord(_ uint64, rec []byte) {
	if e.cfg.Window == 0 {
		return
	}
	e.inMu.Lock()
	defer e.inMu.Unlock()
	if len(e.inbox) >= maxEgressIDs {
		return // nobody applies them: the egress is not running
	}
	e.inbox, _ = ParseSentRecord(e.inbox, rec)
}

// Bind opens the listening sockets and the send socket; Run calls it if
// the caller did not. A failed Bind closes what it opened.
func (e *Egress) Bind(ctx context.Context) error {
	if e.send != nil {
		return nil
	}
	if e.shared != nil {
		e.send = e.shared
	} else {
		c, _, err := listenUDP(ctx, e.cfg.Source, sockOpts{freebind: true, sndbuf: 4 << 20})
		if err != nil {
			return fmt.Errorf("egress: source: %w", err)
		}
		e.send = c
	}
	e.gso = !e.cfg.NoGSO && udpbatch.ProbeGSO(e.send)
	var err error
	if e.maint, err = e.newWriter(); err != nil {
		e.close()
		e.send = nil
		return err
	}
	for _, lc := range e.cfg.Listeners {
		l, err := e.newListener(ctx, lc)
		if err != nil {
			e.close()
			e.listeners, e.send = nil, nil
			return err
		}
		e.listeners = append(e.listeners, l)
	}
	return nil
}

func (e *Egress) newWriter() (egressWriter, error) {
	w, err := udpbatch.New(e.send, e.cfg.Batch, e.gso)
	if err != nil {
		return egressWriter{}, fmt.Errorf("egress: %w", err)
	}
	return egressWriter{w: w}, nil
}

// Run sends until ctx ends, then closes the sockets and returns nil.
func (e *Egress) Run(ctx context.Context) error {
	if err := e.Bind(ctx); err != nil {
		return err
	}
	defer e.close()
	g, ctx := errgroup.WithContext(ctx)
	for _, l := range e.listeners {
		g.Go(func() error { return l.serve(ctx) })
	}
	g.Go(func() error { return e.maintain(ctx) })
	g.Go(func() error {
		<-ctx.Done()
		for _, l := range e.listeners {
			_ = l.conn.SetReadDeadline(time.Unix(1, 0))
		}
		return nil
	})
	return g.Wait()
}

// maintainTick is how often held datagrams and remembered ids are expired
// and the feed's ids applied, with no datagrams arriving.
const maintainTick = 20 * time.Millisecond

// maintain expires what is held and, when sending starts, sends it.
func (e *Egress) maintain(ctx context.Context) error {
	t := time.NewTicker(maintainTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-e.kick:
		}
		e.handle(&e.maint, func(*egressOut, bool, int64) {})
	}
}

// handle runs one batch: add is called with the state locked to fill out.
func (e *Egress) handle(w *egressWriter, add func(o *egressOut, on bool, now int64)) {
	now := e.now()
	on := e.sending()
	if on {
		e.gate.RLock()
		defer e.gate.RUnlock()
		// Checked again: SetForwarding(false) may have run in between,
		// and its return promises that nothing leaves after it.
		on = e.sending()
	}
	o := &w.out
	o.reset()
	e.mu.Lock()
	e.inMu.Lock()
	e.st.learn(e.inbox, now)
	e.inbox = e.inbox[:0]
	e.inMu.Unlock()
	e.st.expire(now)
	if on && e.st.flush {
		e.st.flushHeld(o, now)
	}
	add(o, on, now)
	refused := e.st.refused
	e.st.refused = netip.AddrPort{}
	e.mu.Unlock()
	if refused.IsValid() {
		e.warn("refused a datagram to a destination outside egress.allow", "to", refused.String())
	}
	if on {
		e.write(w, o)
	}
}

// write sends out, in runs of one destination, and publishes the ids of
// the runs the kernel took whole: an id whose datagram may not have left is
// not published, so a new primary sends it again (a duplicate is better than
// a loss).
func (e *Egress) write(w *egressWriter, o *egressOut) {
	ids := w.ids[:0]
	for i := 0; i < len(o.bufs); {
		j := i + 1
		for j < len(o.bufs) && o.dsts[j] == o.dsts[i] {
			j++
		}
		failed, err := w.w.WriteBatch(o.bufs[i:j], o.dsts[i])
		if failed > 0 {
			// Which ones failed is not known: the first `failed` of the run
			// are counted against their ports.
			for k := i; k < i+failed && k < j; k++ {
				o.from[k].add(EgressSendError, 1)
			}
			for k := i + failed; k < j; k++ {
				o.from[k].add(EgressSent, 1)
			}
			e.warn("sending from the VIP failed", "to", o.dsts[i].String(), "datagrams", failed, "err", err)
		} else {
			for k := i; k < j; k++ {
				o.from[k].add(EgressSent, 1)
				if o.hasID[k] {
					ids = append(ids, o.ids[k])
				}
			}
		}
		i = j
	}
	w.ids = ids
	if len(ids) == 0 {
		return
	}
	pub := e.publish.Load()
	if pub == nil {
		return
	}
	for len(ids) > 0 {
		n := min(len(ids), maxRecordIDs)
		w.rec = AppendSentRecord(w.rec[:0], ids[:n])
		if err := (*pub)(w.rec); err != nil {
			e.warn("publishing the ids sent", "err", err)
		}
		ids = ids[n:]
	}
}

// warn logs at most every 10 s.
func (e *Egress) warn(msg string, args ...any) {
	now := time.Now().UnixNano()
	if last := e.lastWarn.Load(); now-last < int64(10*time.Second) || !e.lastWarn.CompareAndSwap(last, now) {
		return
	}
	e.log.Warn(msg, args...)
}

// Stats returns every port's counters, in configuration order.
func (e *Egress) Stats() []EgressStats {
	out := make([]EgressStats, 0, len(e.listeners))
	for _, l := range e.listeners {
		s := EgressStats{Listen: l.addr.String(), Received: l.c.received.Load(), Held: l.c.held.Load(), Results: map[string]uint64{}}
		for r := range numEgressResults {
			s.Results[r.String()] = l.c.results[r].Load()
		}
		out = append(out, s)
	}
	return out
}

func (e *Egress) close() {
	for _, l := range e.listeners {
		l.conn.Close()
		if l.addr.Unix != "" {
			_ = os.Remove(l.addr.Unix)
		}
	}
	if e.send != nil && e.send != e.shared {
		e.send.Close()
	}
}

// egressWriter is one goroutine's batch writer on the send socket and its
// buffers.
type egressWriter struct {
	w   *udpbatch.Conn
	out egressOut
	ids []uint64
	rec []byte
}

// egressOut is a batch to send: datagram i goes to dsts[i], counted
// against from[i]'s port.
type egressOut struct {
	bufs  [][]byte
	dsts  []netip.AddrPort
	from  []*egressCounters
	ids   []uint64
	hasID []bool
}

func (o *egressOut) reset() {
	o.bufs, o.dsts, o.from, o.ids, o.hasID = o.bufs[:0], o.dsts[:0], o.from[:0], o.ids[:0], o.hasID[:0]
}

func (o *egressOut) add(b []byte, dst netip.AddrPort, from *egressCounters, id uint64, hasID bool) {
	o.bufs, o.dsts, o.from, o.ids, o.hasID = append(o.bufs, b), append(o.dsts, dst), append(o.from, from), append(o.ids, id), append(o.hasID, hasID)
}

// egressListener is one egress port and its reading loop.
type egressListener struct {
	e    *Egress
	cfg  EgressListener
	addr EgressAddr
	conn interface {
		SetReadDeadline(time.Time) error
		Close() error
	}
	in    batchReader
	bufs  [][]byte
	metas []meta
	w     egressWriter
	c     egressCounters
}

func (e *Egress) newListener(ctx context.Context, lc EgressListener) (*egressListener, error) {
	l := &egressListener{e: e, cfg: lc, addr: lc.Listen}
	var err error
	if l.w, err = e.newWriter(); err != nil {
		return nil, err
	}
	if lc.Listen.Unix != "" {
		c, err := listenUnixgram(lc.Listen.Unix, e.cfg.RcvBuf)
		if err != nil {
			return nil, fmt.Errorf("egress: %w", err)
		}
		rc, err := c.SyscallConn()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("egress: %s: %w", lc.Listen, err)
		}
		l.conn, l.in = c, udpbatch.NewRaw(rc, e.cfg.Batch, false)
	} else {
		c, _, err := listenUDP(ctx, lc.Listen.UDP, sockOpts{rcvbuf: e.cfg.RcvBuf})
		if err != nil {
			return nil, fmt.Errorf("egress: %w", err)
		}
		in, err := udpbatch.New(c, e.cfg.Batch, false)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("egress: %s: %w", lc.Listen, err)
		}
		// An application's GSO send comes in one piece (Meta.Seg).
		in.EnableGRO(c)
		l.conn, l.in = c, in
	}
	l.bufs, l.metas = make([][]byte, e.cfg.Batch), make([]meta, e.cfg.Batch)
	for i := range l.bufs {
		l.bufs[i] = make([]byte, 65535)
	}
	e.log.Info("egress port open", "listen", lc.Listen.String(), "header", lc.Header, "destination", lc.Destination.String(), "source", e.cfg.Source.String())
	return l, nil
}

// listenUnixgram binds a unix datagram socket at path, replacing a stale
// socket there (never another kind of file), readable and writable by the
// owner and group.
func listenUnixgram(path string, rcvbuf int) (*net.UnixConn, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("binding %s: a file that is not a socket is there", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale socket %s: %w", path, err)
		}
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("binding %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		c.Close()
		return nil, fmt.Errorf("setting the mode of %s: %w", path, err)
	}
	_ = c.SetReadBuffer(rcvbuf)
	return c, nil
}

func (l *egressListener) serve(ctx context.Context) error {
	return readBatches(ctx, l.in, l.bufs, l.metas, "egress: reading from "+l.addr.String(), l.take)
}

// take decides about and sends datagrams 0..n-1 of the batch read.
func (l *egressListener) take(n int) {
	l.e.handle(&l.w, func(o *egressOut, on bool, now int64) {
		k := 0
		for i := range n {
			m := &l.metas[i]
			if m.Trunc {
				k++
				l.e.st.classify(l, nil, true, on, now, o)
				continue
			}
			// With GRO, a run of one sender's datagrams comes in one
			// buffer: each goes out as a slice of it, uncopied.
			for b, first := l.bufs[i][:m.N], true; len(b) > 0 || first; first = false {
				var d []byte
				d, b = m.Next(b)
				k++
				l.e.st.classify(l, d, false, on, now, o)
			}
		}
		l.c.received.Add(uint64(k))
	})
}
