package gateway

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"time"

	"driftgate/internal/udpbatch"
)

// Deliverer hands accepted frames to the local application. Deliver is
// called for each frame of a batch, Flush after the batch. raw is the whole
// frame as received. Neither may keep f.Payload or raw after returning.
type Deliverer interface {
	Deliver(f *Frame, raw []byte) error
	Flush() error
	Close() error
}

// DeliverURL is a parsed delivery target; Open opens it. The zero value is
// invalid.
type DeliverURL struct {
	kind string // "udp", "unix" or "stdout"
	udp  netip.AddrPort
	path string
	raw  string
}

// String returns the URL as given.
func (d DeliverURL) String() string { return d.raw }

// ParseDeliverURL checks a delivery URL without opening anything:
//
//	udp://HOST:PORT  the payload alone, as one datagram
//	unix:///PATH     the whole frame (header kept, so the application sees
//	                 the original sender), to a unix datagram socket
//	                 (unixgram:///PATH too)
//	stdout or -      one JSON line per frame, for debugging
//
// It is the one parser of delivery URLs: the configuration and the
// standalone receiver both call it.
func ParseDeliverURL(raw string) (DeliverURL, error) {
	if raw == "stdout" || raw == "-" {
		return DeliverURL{kind: "stdout", raw: raw}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return DeliverURL{}, fmt.Errorf("%q: %v", raw, err)
	}
	switch u.Scheme {
	case "udp":
		ap, err := netip.ParseAddrPort(u.Host)
		if err != nil || ap.Port() == 0 {
			return DeliverURL{}, fmt.Errorf("%q: want udp://IP:PORT with a non-zero port", raw)
		}
		return DeliverURL{kind: "udp", udp: ap, raw: raw}, nil
	case "unix", "unixgram":
		if u.Path == "" {
			return DeliverURL{}, fmt.Errorf("%q: want unix:///path/to/socket", raw)
		}
		return DeliverURL{kind: "unix", path: u.Path, raw: raw}, nil
	}
	return DeliverURL{}, fmt.Errorf("%q: want udp://IP:PORT, unix:///PATH or stdout", raw)
}

// OpenOptions are what a delivery target needs besides its URL.
type OpenOptions struct {
	Stdout io.Writer    // where "stdout" writes
	Queue  QueueConfig  // the socket targets' delivery queue
	Log    *slog.Logger // nil: discard
}

// Open opens the target. Socket targets (udp, unix) get a delivery queue
// and a writer goroutine, stopped by Close.
func (d DeliverURL) Open(o OpenOptions) (Deliverer, error) {
	switch d.kind {
	case "stdout":
		return &jsonDeliverer{w: bufio.NewWriterSize(o.Stdout, 64<<10)}, nil
	case "udp":
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(d.udp))
		if err != nil {
			return nil, fmt.Errorf("deliver %q: %w", d.raw, err)
		}
		return newConnDeliverer(c, true, o)
	case "unix":
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: d.path, Net: "unixgram"})
		if err != nil {
			return nil, fmt.Errorf("deliver %q: %w", d.raw, err)
		}
		return newConnDeliverer(c, false, o)
	}
	return nil, errors.New("deliver: no URL (see ParseDeliverURL)")
}

// ParseDeliver parses a delivery URL (ParseDeliverURL) and opens it.
func ParseDeliver(raw string, o OpenOptions) (Deliverer, error) {
	d, err := ParseDeliverURL(raw)
	if err != nil {
		return nil, fmt.Errorf("deliver %w", err)
	}
	return d.Open(o)
}

// DeliveryStatser is implemented by deliverers with a delivery queue.
type DeliveryStatser interface {
	DeliveryStats() DeliveryStats
}

// connDeliverer writes each frame, or its payload, as one datagram to a
// connected socket, through a bounded queue: Deliver only copies the
// datagram in, and a writer goroutine sends what waits in batches of up to
// deliverBatch with sendmmsg (runs of equal-size UDP datagrams as one GSO
// send, which the kernel splits again before the application reads them),
// waiting while the application's socket is full. So a stalled application
// delays its own datagrams instead of losing them (a unix datagram socket
// queues only net.unix.max_dgram_qlen of them, 10 by default) and never
// stalls the receiver; only beyond the queue's bound are datagrams dropped,
// counted.
type connDeliverer struct {
	c           net.Conn
	w           *udpbatch.Conn
	payloadOnly bool
	q           *queue
	log         *slog.Logger
	stop, done  chan struct{}
	bufs        [][]byte // the writer's batch, pointing into the queue
	lastLog     time.Time
}

// deliverBatch is how many datagrams one delivery system call takes.
const deliverBatch = 64

// closeGrace is how long Close lets the writer hand queued datagrams to a
// slow application before it gives up on them.
const closeGrace = 500 * time.Millisecond

func newConnDeliverer(c net.Conn, payloadOnly bool, o OpenOptions) (*connDeliverer, error) {
	if err := o.Queue.Validate(); err != nil {
		c.Close()
		return nil, err
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%T has no raw socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	gso := false
	if uc, ok := c.(*net.UDPConn); ok {
		gso = udpbatch.ProbeGSO(uc)
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &connDeliverer{c: c, w: udpbatch.NewRaw(rc, deliverBatch, gso), payloadOnly: payloadOnly, q: newQueue(o.Queue), log: log,
		stop: make(chan struct{}), done: make(chan struct{}), bufs: make([][]byte, deliverBatch)}
	go d.run()
	return d, nil
}

func (d *connDeliverer) Deliver(f *Frame, raw []byte) error {
	if d.payloadOnly {
		return d.q.push(f.Payload)
	}
	return d.q.push(raw)
}

func (d *connDeliverer) run() {
	defer close(d.done)
	for {
		n := d.q.peek(d.bufs)
		if n == 0 {
			select {
			case <-d.q.ready:
				continue
			case <-d.stop:
				return
			}
		}
		failed, err := d.w.WriteBatch(d.bufs[:n], netip.AddrPort{})
		if failed > 0 && isClosed(err) {
			return // closed, or Close's grace ran out
		}
		if failed > 0 {
			d.logWriteError(err)
		}
		d.q.done(n, failed)
	}
}

// isClosed: the socket was closed or its write deadline (Close's grace)
// passed.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}

// logWriteError logs at most every 10 s (an absent application must not
// flood the journal); every failure is counted.
func (d *connDeliverer) logWriteError(err error) {
	if time.Since(d.lastLog) < 10*time.Second {
		return
	}
	d.lastLog = time.Now()
	d.log.Warn("delivering to the application failed", "to", d.c.RemoteAddr().String(), "err", err,
		"write_errors_total", d.q.stats().Dropped["write_error"])
}

// Flush wakes the writer once for the receiver's whole batch.
func (d *connDeliverer) Flush() error {
	d.q.wake()
	return nil
}

// Close gives the writer closeGrace to hand over what is queued, then
// closes the socket.
func (d *connDeliverer) Close() error {
	_ = d.c.SetWriteDeadline(time.Now().Add(closeGrace))
	close(d.stop)
	<-d.done
	return d.c.Close()
}

func (d *connDeliverer) DeliveryStats() DeliveryStats { return d.q.stats() }

// jsonDeliverer writes one JSON object per line.
type jsonDeliverer struct {
	w   *bufio.Writer
	buf []byte
}

func (d *jsonDeliverer) Deliver(f *Frame, _ []byte) error {
	b := d.buf[:0]
	b = append(b, `{"epoch":`...)
	b = strconv.AppendUint(b, f.Epoch, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, f.Seq, 10)
	b = append(b, `,"source":"`...)
	b = f.Source.AppendTo(b)
	b = append(b, `","ingress_port":`...)
	b = strconv.AppendUint(b, uint64(f.IngressPort), 10)
	b = append(b, `,"timestamp":`...)
	b = strconv.AppendInt(b, f.Timestamp, 10)
	b = append(b, `,"payload":"`...)
	b = hex.AppendEncode(b, f.Payload)
	b = append(b, "\"}\n"...)
	d.buf = b
	_, err := d.w.Write(b)
	return err
}

func (d *jsonDeliverer) Flush() error { return d.w.Flush() }
func (d *jsonDeliverer) Close() error { return d.w.Flush() }

var errNoDeliverer = errors.New("receiver: no deliverer")
