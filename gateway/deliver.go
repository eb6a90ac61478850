package gateway

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
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

// Open opens the target; stdout is where "stdout" writes.
func (d DeliverURL) Open(stdout io.Writer) (Deliverer, error) {
	switch d.kind {
	case "stdout":
		return &jsonDeliverer{w: bufio.NewWriterSize(stdout, 64<<10)}, nil
	case "udp":
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(d.udp))
		if err != nil {
			return nil, fmt.Errorf("deliver %q: %w", d.raw, err)
		}
		return newConnDeliverer(c, true)
	case "unix":
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: d.path, Net: "unixgram"})
		if err != nil {
			return nil, fmt.Errorf("deliver %q: %w", d.raw, err)
		}
		return newConnDeliverer(c, false)
	}
	return nil, errors.New("deliver: no URL (see ParseDeliverURL)")
}

// ParseDeliver parses a delivery URL (ParseDeliverURL) and opens it.
func ParseDeliver(raw string, stdout io.Writer) (Deliverer, error) {
	d, err := ParseDeliverURL(raw)
	if err != nil {
		return nil, fmt.Errorf("deliver %w", err)
	}
	return d.Open(stdout)
}

// connDeliverer writes each frame, or its payload, as one datagram to a
// connected socket. It never blocks: an application that does not keep up
// loses datagrams (counted as delivery errors) instead of stalling the feed
// for everyone after it.
type connDeliverer struct {
	c           syscall.Conn
	rc          syscall.RawConn
	payloadOnly bool
	buf         []byte // what the current write sends
	err         error
	writeFn     func(fd uintptr) bool
}

func newConnDeliverer(c net.Conn, payloadOnly bool) (*connDeliverer, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("%T has no raw socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	d := &connDeliverer{c: sc, rc: rc, payloadOnly: payloadOnly}
	d.writeFn = func(fd uintptr) bool {
		_, d.err = unix.SendmsgN(int(fd), d.buf, nil, nil, unix.MSG_DONTWAIT)
		return true // EAGAIN too: do not wait for the application
	}
	return d, nil
}

// ErrAppBusy means the application's socket buffer was full.
var ErrAppBusy = errors.New("application socket buffer full: datagram dropped")

func (d *connDeliverer) Deliver(f *Frame, raw []byte) error {
	d.buf = raw
	if d.payloadOnly {
		d.buf = f.Payload
	}
	if err := d.rc.Write(d.writeFn); err != nil {
		return err
	}
	if errors.Is(d.err, unix.EAGAIN) {
		return ErrAppBusy
	}
	return d.err
}

func (d *connDeliverer) Flush() error { return nil }
func (d *connDeliverer) Close() error { return d.c.(io.Closer).Close() }

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
