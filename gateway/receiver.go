package gateway

import (
	"driftgate/internal/udpbatch"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ReceiverConfig configures a Receiver: either Group (multicast, joined on
// Iface) or Listen (unicast frames).
type ReceiverConfig struct {
	Group   netip.AddrPort // multicast group to join
	Iface   string         // interface to join on; "" = kernel's choice
	Listen  netip.AddrPort // unicast address to receive frames on
	Key     []byte         // HMAC key; frames without a valid tag are rejected
	RcvBuf  int            // 0 = DefaultRcvBuf
	Batch   int            // 0 = DefaultBatch
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
	case c.Batch < 0 || c.Batch > 1024:
		return fmt.Errorf("batch: %d is out of range 1..1024 (0: %d)", c.Batch, DefaultBatch)
	case c.RcvBuf < 0:
		return fmt.Errorf("rcvbuf: %d must not be negative (0: %d)", c.RcvBuf, DefaultRcvBuf)
	}
	return nil
}

// ReceiverStats is a snapshot of a receiver's counters.
type ReceiverStats struct {
	Received      uint64            // datagrams read
	Delivered     uint64            // frames handed to the application
	Rejected      map[string]uint64 // by decode reason (see Reason)
	Truncated     uint64            // datagrams larger than the buffer
	Duplicates    uint64
	StaleEpoch    uint64 // frames from a deposed primary
	Late          uint64 // behind the de-duplication window
	Lost          uint64 // sequence numbers skipped and never seen
	Gaps          uint64
	Reordered     uint64
	Epoch         uint64 // newest epoch accepted
	EpochChanges  uint64
	Restarts      uint64 // standalone relay restarts
	DeliverErrors uint64
}

// Receiver receives frames, checks them, and delivers new ones in order of
// arrival to the local application.
type Receiver struct {
	cfg  ReceiverConfig
	log  *slog.Logger
	conn *net.UDPConn
	in   batchReader

	mu sync.Mutex // guards everything below against Stats
	st ReceiverStats
	tr tracker
	// rejected counts by reason; index is the Reason.
	rejected [numReasons]uint64

	codec   *Codec
	bufs    [][]byte
	metas   []meta
	lastLog atomic.Int64
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
	return &Receiver{cfg: cfg, log: log.With("component", "receiver"), codec: NewCodec(cfg.Key)}, nil
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
	in, err := udpbatch.New(conn, r.cfg.Batch, false)
	if err != nil {
		conn.Close()
		return fmt.Errorf("receiver: %w", err)
	}
	r.conn, r.in = conn, in
	r.bufs = make([][]byte, r.cfg.Batch)
	for i := range r.bufs {
		r.bufs[i] = make([]byte, 65535)
	}
	r.metas = make([]meta, r.cfg.Batch)
	r.log.Info("receiving", "addr", addr.String(), "iface", r.cfg.Iface, "rcvbuf_granted", granted)
	return nil
}

// Run receives until ctx is cancelled, then closes the socket and the
// deliverer and returns nil.
func (r *Receiver) Run(ctx context.Context) error {
	if err := r.Bind(ctx); err != nil {
		return err
	}
	defer r.conn.Close()
	defer r.cfg.Deliver.Close()
	stop := context.AfterFunc(ctx, func() { _ = r.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		n, err := r.in.ReadBatch(r.bufs, r.metas)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return fmt.Errorf("receiver: reading: %w", err)
		}
		r.process(n)
	}
}

// process checks and delivers datagrams 0..n-1 of the batch.
func (r *Receiver) process(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Received += uint64(n)
	var firstErr error
	for i := range n {
		m := &r.metas[i]
		if m.Trunc {
			r.st.Truncated++
			continue
		}
		raw := r.bufs[i][:m.N]
		f, err := r.codec.Decode(raw)
		if err != nil {
			r.rejected[err.(Reason)]++
			continue
		}
		switch r.tr.check(f.Epoch, f.Seq) {
		case duplicate:
			r.st.Duplicates++
			continue
		case stale:
			r.st.StaleEpoch++
			continue
		case late:
			r.st.Late++
			continue
		}
		if err := r.cfg.Deliver.Deliver(&f, raw); err != nil {
			r.st.DeliverErrors++
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		r.st.Delivered++
	}
	if err := r.cfg.Deliver.Flush(); err != nil && firstErr == nil {
		firstErr = err
	}
	if firstErr != nil {
		r.logDeliverError(firstErr)
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
	s.Lost, s.Gaps, s.Reordered = r.tr.lost, r.tr.gaps, r.tr.reordered
	s.Epoch, s.EpochChanges, s.Restarts = r.tr.epoch, r.tr.epochs, r.tr.restarts
	return s
}
