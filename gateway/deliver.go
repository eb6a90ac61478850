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
)

// Deliverer hands accepted frames to the local application. Deliver is
// called for each frame of a batch, Flush after the batch. raw is the whole
// frame as received. Neither may keep f.Payload or raw after returning.
type Deliverer interface {
	Deliver(f *Frame, raw []byte) error
	Flush() error
	Close() error
}

// ParseDeliver opens the delivery target named by a URL:
//
//	udp://HOST:PORT  the payload alone, as one datagram
//	unix:///PATH     the whole frame (header kept, so the application sees
//	                 the original sender), to a unix datagram socket
//	stdout           one JSON line per frame, for debugging
func ParseDeliver(raw string, stdout io.Writer) (Deliverer, error) {
	if raw == "stdout" || raw == "-" {
		return &jsonDeliverer{w: bufio.NewWriterSize(stdout, 64<<10)}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("deliver %q: %w", raw, err)
	}
	switch u.Scheme {
	case "udp":
		ap, err := netip.ParseAddrPort(u.Host)
		if err != nil || ap.Port() == 0 {
			return nil, fmt.Errorf("deliver %q: want udp://IP:PORT with a non-zero port", raw)
		}
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(ap))
		if err != nil {
			return nil, fmt.Errorf("deliver %q: %w", raw, err)
		}
		return &connDeliverer{c: c, payloadOnly: true}, nil
	case "unix", "unixgram":
		if u.Path == "" {
			return nil, fmt.Errorf("deliver %q: want unix:///path/to/socket", raw)
		}
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: u.Path, Net: "unixgram"})
		if err != nil {
			return nil, fmt.Errorf("deliver %q: %w", raw, err)
		}
		return &connDeliverer{c: c}, nil
	}
	return nil, fmt.Errorf("deliver %q: unknown scheme %q (want udp://, unix:// or stdout)", raw, u.Scheme)
}

// connDeliverer writes each frame, or its payload, as one datagram.
type connDeliverer struct {
	c           net.Conn
	payloadOnly bool
}

func (d *connDeliverer) Deliver(f *Frame, raw []byte) error {
	b := raw
	if d.payloadOnly {
		b = f.Payload
	}
	_, err := d.c.Write(b)
	return err
}

func (d *connDeliverer) Flush() error { return nil }
func (d *connDeliverer) Close() error { return d.c.Close() }

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

// FuncDeliverer adapts a function; tests and embedding programs use it.
type FuncDeliverer func(f *Frame, raw []byte) error

// Deliver calls the function.
func (fn FuncDeliverer) Deliver(f *Frame, raw []byte) error { return fn(f, raw) }

// Flush does nothing.
func (FuncDeliverer) Flush() error { return nil }

// Close does nothing.
func (FuncDeliverer) Close() error { return nil }

var errNoDeliverer = errors.New("receiver: no deliverer")
