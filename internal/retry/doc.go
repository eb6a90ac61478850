// Package retry holds the one backoff schedule and the one cancellable sleep
// that driftgate's retry loops share (registration, Consul watches, the
// election), so that they cannot drift apart.
package retry
