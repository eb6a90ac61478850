package relaybench

import (
	"context"
	"net"
	"net/netip"
	"time"

	"driftgate/gateway"
)

// RunNaive is the baseline a straightforward Go program would be: one
// datagram per read and per write, through the standard library, framing
// each datagram like driftgate does. It returns when ctx is cancelled.
func RunNaive(ctx context.Context, listen, dst netip.AddrPort) error {
	in, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(listen))
	if err != nil {
		return err
	}
	defer in.Close()
	in.SetReadBuffer(16 << 20)
	out, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		return err
	}
	defer out.Close()
	context.AfterFunc(ctx, func() { in.SetReadDeadline(time.Unix(1, 0)) })
	codec := gateway.NewCodec(nil)
	buf := make([]byte, 65536)
	var seq uint64
	for {
		n, from, err := in.ReadFromUDPAddrPort(buf[gateway.HeaderLen : 65536-gateway.TagLen])
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		seq++
		h := gateway.Header{IngressPort: listen.Port(), Seq: seq, Timestamp: time.Now().UnixNano(), Source: from}
		fl := codec.EncodeInPlace(buf, &h, n)
		if _, err := out.WriteToUDPAddrPort(buf[:fl], dst); err != nil {
			return err
		}
	}
}
