// Package relaybench measures relays side by side: driftgate's relay, socat
// and a naive per-packet Go relay. It has a paced load generator and a
// counting sink (both batched, bounded in count and time), a search for the
// highest loss-free rate, and CPU accounting of the relay process from
// /proc/PID/task/*/schedstat. Everything runs on loopback inside a network
// namespace made for the run (see internal/netlab); `make bench` drives it.
package relaybench
