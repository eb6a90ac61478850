// Package udpbatch reads and writes UDP datagrams in batches with
// recvmmsg(2)/sendmmsg(2), and UDP_SEGMENT (GSO) for runs of equal-size
// datagrams, without allocating per datagram. The relay and receiver in
// gateway use it, and so do the benchmark's load generator and sink.
package udpbatch
