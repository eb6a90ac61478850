// Package config loads the agent's configuration in two steps: viper reads
// the YAML file, DRIFTGATE_* environment variables and flags into a raw
// struct, rejecting unknown keys; Parse turns that into typed values
// (netip, time.Duration, the consul/netvip/gateway configs) and validates
// them. Errors read like a path: `vips[0].announce.count: 0 is out of
// range 1..20`. The commented reference configuration (example.yaml) is
// embedded, printed by `driftgate config example`, and parsed by a test.
package config
