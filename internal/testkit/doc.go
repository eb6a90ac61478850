// Package testkit holds the few helpers every tier of driftgate's tests
// shares: waiting for a condition, and re-running the test binary as a
// helper process (a feed, a rogue host, a process without capabilities).
package testkit
