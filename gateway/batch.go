package gateway

import (
	"net/netip"

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
