// Package agent is the driftgate daemon: it composes the libraries — the
// election and registration (package consul), the VIP (netvip) and the data
// path (gateway) — into one node's role loop, with its status, metrics,
// step-down, hooks, start-up clean-up and instance lock.
//
// It lives apart from the libraries it composes, as corerad's
// internal/corerad does beside internal/config and internal/system: the
// data path imports neither Consul nor Prometheus, and nothing but the
// binary imports this package, hence internal/.
//
// The role loop sees the election, the VIPs, the relay and the clock through
// small interfaces (Election, VIP, Forwarder, Clock), so its tests run in two
// tiers: simulated (fakes and a fake clock, event sequences in milliseconds)
// and real (e2e/, network namespaces and a Consul cluster).
//
// One goroutine tree: Run starts every task under one errgroup, including
// each holding term's announcers and guards, and returns when all of them
// have; no constructor starts a goroutine.
package agent
