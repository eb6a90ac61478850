// Package e2e holds driftgate's multi-host tests: the real driftgate binary
// runs in network namespaces built by internal/netlab, on real veth links
// and a real bridge. The tests need root; see netlab.RequirePrivileged.
package e2e
