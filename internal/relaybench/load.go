package relaybench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"driftgate/gateway"
	"driftgate/internal/udpbatch"
)

// Sizes says how large each datagram's payload is.
type Sizes struct {
	Min, Max int // equal for a fixed size
}

// String describes the sizes, e.g. "64B" or "64-1400B".
func (s Sizes) String() string {
	if s.Min == s.Max {
		return fmt.Sprintf("%dB", s.Min)
	}
	return fmt.Sprintf("%d-%dB", s.Min, s.Max)
}

// Generator sends datagrams from one socket at a paced rate.
type Generator struct {
	conn  *net.UDPConn
	w     *udpbatch.Conn
	bufs  [][]byte // payloads to send, cycled through
	batch [][]byte
}

// NewGenerator prepares a generator with payloads drawn from sizes. The
// socket is opened by the caller (so it can be opened in a namespace).
func NewGenerator(conn *net.UDPConn, sizes Sizes) (*Generator, error) {
	w, err := udpbatch.New(conn, 64, sizes.Min == sizes.Max && udpbatch.ProbeGSO(conn))
	if err != nil {
		return nil, err
	}
	g := &Generator{conn: conn, w: w, batch: make([][]byte, 0, 64)}
	rng := rand.New(rand.NewPCG(1, 2)) // the same mix for every relay
	for i := range 4096 {
		n := sizes.Min
		if sizes.Max > sizes.Min {
			n += rng.IntN(sizes.Max - sizes.Min + 1)
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i + j)
		}
		g.bufs = append(g.bufs, b)
	}
	return g, nil
}

// Send sends count datagrams to dst at rate per second, in bursts every
// millisecond, and stops early at maxDur. It returns how many it sent and
// how long that took; a caller compares the achieved rate with the asked one
// to tell whether the generator itself was the limit.
func (g *Generator) Send(ctx context.Context, dst netip.AddrPort, rate float64, count int, maxDur time.Duration) (int, time.Duration, error) {
	start := time.Now()
	sent, k := 0, 0
	for sent < count {
		el := time.Since(start)
		if el > maxDur || ctx.Err() != nil {
			break
		}
		due := min(int(el.Seconds()*rate)+1, count)
		for sent < due {
			g.batch = g.batch[:0]
			for len(g.batch) < cap(g.batch) && sent+len(g.batch) < due {
				g.batch = append(g.batch, g.bufs[k%len(g.bufs)])
				k++
			}
			failed, err := g.w.WriteBatch(g.batch, dst)
			if err != nil && failed == len(g.batch) {
				return sent, time.Since(start), fmt.Errorf("load generator: %w", err)
			}
			sent += len(g.batch)
		}
		if next := time.Duration(float64(sent+1) / rate * float64(time.Second)); next > time.Since(start)+100*time.Microsecond {
			time.Sleep(min(time.Millisecond, next-time.Since(start)))
		}
	}
	return sent, time.Since(start), nil
}

// Sink counts datagrams arriving on its sockets.
type Sink struct {
	conns []*net.UDPConn
	count atomic.Uint64
}

// NewSink counts on conns, which the caller opened (and joined to groups).
func NewSink(conns ...*net.UDPConn) *Sink { return &Sink{conns: conns} }

// Count returns the datagrams counted so far.
func (s *Sink) Count() uint64 { return s.count.Load() }

// Run counts until ctx is cancelled.
func (s *Sink) Run(ctx context.Context) error {
	errs := make(chan error, len(s.conns))
	for _, c := range s.conns {
		go func() { errs <- s.read(ctx, c) }()
	}
	<-ctx.Done()
	for _, c := range s.conns {
		c.SetReadDeadline(time.Unix(1, 0))
	}
	var first error
	for range s.conns {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (s *Sink) read(ctx context.Context, c *net.UDPConn) error {
	r, err := udpbatch.New(c, 64, false)
	if err != nil {
		return err
	}
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	ms := make([]udpbatch.Meta, 64)
	codec := gateway.NewCodec(nil)
	for {
		n, err := r.ReadBatch(bufs, ms)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("sink: %w", err)
		}
		frames := n
		for i := range n {
			// The relay's sequence announcements (sent when the feed
			// pauses, between trials) are not datagrams of the feed.
			if b := bufs[i][:ms[i].N]; gateway.IsAnnounce(b) {
				if _, err := codec.DecodeAnnounce(b); err == nil {
					frames--
				}
			}
		}
		s.count.Add(uint64(frames))
	}
}
