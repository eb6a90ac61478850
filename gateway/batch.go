package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"driftgate/internal/udpbatch"
)

// meta describes one datagram read in a batch.
type meta = udpbatch.Meta

// batchReader reads up to len(bufs) datagrams in one call. The relay and the
// receiver depend only on this and batchWriter, so their logic can be tested
// without sockets.
type batchReader interface {
	ReadBatch(bufs [][]byte, ms []meta) (int, error)
}

// batchWriter writes frames to one destination and reports how many the
// kernel refused (counted by the caller, never retried) and the first
// refusal. Transient back-pressure (EAGAIN) is waited out, not reported.
type batchWriter interface {
	WriteBatch(frames [][]byte, dst netip.AddrPort) (failed int, err error)
}

// readBatches reads batches from in into bufs and ms and hands each to
// handle until ctx ends, then returns nil. A read deadline that passed is
// the wake-up for a cancelled context (the caller sets one in the past)
// and is read past; any other error ends it, wrapped with what (e.g.
// "relay: reading from 198.18.0.100:5000"). The relay, the receiver and
// the egress read this way.
func readBatches(ctx context.Context, in batchReader, bufs [][]byte, ms []meta, what string, handle func(n int)) error {
	for {
		n, err := in.ReadBatch(bufs, ms)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		handle(n)
	}
}
