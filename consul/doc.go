// Package consul elects driftgate's primary with a Consul session lock and
// keeps each node registered in Consul's catalog. It owns everything driftgate
// says to Consul: the client (NewClient), the leader key's value, the service
// and its meta keys (WatchReceivers reads them back), and the rules for a
// series of blocking queries (watch.go), which the election and the watches
// share.
//
// The protocol, its timing inequalities and the argument that no two nodes
// ever hold the VIP at once are in docs/election.md. In short: a holder
// confirms its lock with short consistent reads and must drop the VIP once
// T_fence has passed since the last confirmation it sent; a contender binds
// the VIP no earlier than T_wait after a consistent read showed the key free,
// and T_wait exceeds T_fence plus clock drift and the time to drop. Lock-delay
// is not relied on. The epoch (fencing token) is the Raft ModifyIndex of the
// write that acquired the lock.
//
// Every Consul request carries its own deadline. Election.Run is the only
// goroutine tree; it reports to its caller through a synchronous callback,
// so the caller has dropped the VIP when the callback returns.
package consul
